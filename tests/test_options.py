"""One options object (``bnfold.options.OptimizeOptions``) from the command line to the pipeline,
``--debug`` on the group or a command, and ``bnfold optimize`` reading ``[tool.bnfold]``."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import builders
import bnfold
from bnfold.cli import cli
from bnfold.errors import BnfoldError
from bnfold.options import OptimizeOptions
from bnfold.validation import ValidationOptions


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", **kwargs)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), path)
    return path


def test_options_object_and_keywords_give_the_same_report(src, tmp_path):
    by_keywords = bnfold.optimize(src, tmp_path / "a.onnx", atol=1e-4, rtol=1e-3, seed=3)
    options = OptimizeOptions(validation=ValidationOptions(atol=1e-4, rtol=1e-3, seed=3))
    by_options = bnfold.optimize(src, tmp_path / "b.onnx", options=options)
    a, b = by_keywords.to_dict(), by_options.to_dict()
    for doc in (a, b):
        doc.pop("output"), doc.pop("seconds")
        doc["after"].pop("file_bytes")
    assert a == b and a["validation"]["seed"] == 3
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_options_and_keywords_together_are_refused_before_any_work(src, tmp_path):
    with pytest.raises(BnfoldError, match="either as options="):
        bnfold.optimize(src, tmp_path / "a.onnx", options=OptimizeOptions(), in_place=True)
    with pytest.raises(BnfoldError, match="either as options="):
        bnfold.optimize(src, tmp_path / "a.onnx", options=OptimizeOptions(), atol=1e-3)
    with pytest.raises(BnfoldError):  # checked before any work: a negative tolerance
        bnfold.optimize(src, tmp_path / "a.onnx", options=OptimizeOptions(validation=ValidationOptions(atol=-1.0)))
    assert not (tmp_path / "a.onnx").exists()


def test_rules_in_the_options_object_choose_what_runs(src, tmp_path):
    from bnfold.rules import DEFAULT_RULES

    without_conv_bn = tuple(r for r in DEFAULT_RULES if r.name != "conv-bn")
    report = bnfold.optimize(src, tmp_path / "a.onnx", options=OptimizeOptions(rules=without_conv_bn))
    assert all(f.rule != "conv-bn" for f in report.result.folds)


@pytest.mark.parametrize("where", ["group", "command"])
def test_debug_on_the_group_or_the_command_shows_the_traceback(tmp_path, where):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    args = ["--debug", "optimize", bad] if where == "group" else ["optimize", bad, "--debug"]
    result = run(*args)
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.rstrip().splitlines()[-1].startswith("bnfold: error:")
    plain = run("optimize", bad)
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1


def test_debug_after_double_dash_is_a_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("optimize", "--", "--debug")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr == "bnfold: error: --debug: no such file\n"


def test_optimize_reads_tool_bnfold_like_check(src, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.bnfold]\natol = 0.25\nrtol = 0.0\ndisable = ["conv-bn"]\n')
    monkeypatch.chdir(tmp_path)
    doc = json.loads(run("optimize", src, "-o", tmp_path / "a.onnx", "--json").stdout)
    assert doc["folds"] == []  # conv-bn disabled; nothing else folds this model
    [refusal] = doc["refusals"]
    assert refusal["node"] == "bn" and refusal["rule"] != "conv-bn"
    doc = json.loads(run("optimize", src, "-o", tmp_path / "b.onnx", "--json", "--disable", "bn-linear").stdout)
    assert doc["folds"] == []
    # the tolerances apply when something folds: an elementwise verdict with the settings' atol
    (tmp_path / "pyproject.toml").write_text("[tool.bnfold]\natol = 0.25\nrtol = 0.0\n")
    doc = json.loads(run("optimize", src, "-o", tmp_path / "c.onnx", "--json").stdout)
    assert doc["validation"]["outputs"][0]["stage"] == "elementwise"
    assert run("optimize", src, "-o", tmp_path / "d.onnx", "--disable", "no-such-rule").exit_code == 2


def test_optimize_ignore_leaves_files_out_of_a_folder_run(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.onnx", "b.onnx"):
        onnx.save(builders.conv_bn_model(), models / name)
    (tmp_path / "pyproject.toml").write_text('[tool.bnfold]\nignore = ["b.onnx"]\n')
    monkeypatch.chdir(tmp_path)
    result = run("optimize", "models", "--no-validate", "--json")
    assert result.exit_code == 0, result.output
    assert [f["input"] for f in json.loads(result.stdout)["files"]] == ["models/a.onnx"]
    assert sorted(p.name for p in models.iterdir()) == ["a.folded.onnx", "a.onnx", "b.onnx"]
