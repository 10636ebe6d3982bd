"""The ``bnfold check`` command: linter-style findings, file collection, formats, exit codes, ``--fix``.

Every run goes through click's CliRunner; only ``--fix`` validates (and so spawns onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import builders
import onnx
import pytest
from click.testing import CliRunner, Result

import bnfold.pipeline
from bnfold.cli import cli
from bnfold.validation import ValidationResult

FINDING = "BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"
RELU_REASON = "its input 'relu_out' comes from Relu 'relu', not a linear op (Conv, ConvTranspose, Gemm, MatMul)"


def run(*args) -> Result:
    return CliRunner().invoke(cli, ["check", *map(str, args)], prog_name="bnfold")


def lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.fixture
def foldable(tmp_path) -> Path:
    path = tmp_path / "foldable.onnx"
    onnx.save(builders.conv_bn_model(), path)
    return path


@pytest.fixture
def clean(tmp_path) -> Path:
    """A Conv alone: the conv+bn model already folded."""
    path = tmp_path / "clean.onnx"
    onnx.save(bnfold.fold(builders.conv_bn_model()).model, path)
    return path


@pytest.fixture
def relu_bn(tmp_path) -> Path:
    path = tmp_path / "relu_bn.onnx"
    onnx.save(builders.bn_after_relu_model(), path)
    return path


@pytest.fixture
def unreadable(tmp_path) -> Path:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- findings and exit codes -------------------------------------------------------------------


def test_clean_model_exits_0_and_prints_nothing(clean):
    result = run(clean)
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""


def test_unfolded_bn_is_one_finding_line_and_exit_1(foldable):
    result = run(foldable)
    assert result.exit_code == 1
    assert lines(result.stdout) == [f"{foldable}: {FINDING}"]
    assert result.stderr == ""


def test_check_does_not_touch_the_file(foldable):
    before = sha256(foldable)
    run(foldable)
    assert sha256(foldable) == before


def test_bn_with_nothing_to_fold_into_is_not_a_finding(relu_bn):
    result = run(relu_bn)
    assert result.exit_code == 0
    assert result.stdout == ""


def test_verbose_lists_refusals_with_the_reason(relu_bn):
    result = run("--verbose", relu_bn)
    assert result.exit_code == 0
    assert lines(result.stdout) == [f"{relu_bn}: BatchNormalization 'bn' stays: {RELU_REASON} [conv-bn]"]


# -- collecting files --------------------------------------------------------------------------


def test_folder_is_searched_recursively_for_onnx_files(tmp_path):
    deep = tmp_path / "models" / "a" / "b"
    deep.mkdir(parents=True)
    onnx.save(builders.conv_bn_model(), deep / "m.onnx")
    onnx.save(builders.conv_bn_model(), tmp_path / "models" / "top.onnx")
    (deep / "notes.txt").write_text("not a model")
    result = run(tmp_path / "models")
    assert result.exit_code == 1
    assert lines(result.stdout) == [
        f"{deep / 'm.onnx'}: {FINDING}",
        f"{tmp_path / 'models' / 'top.onnx'}: {FINDING}",
    ]


def test_glob_is_expanded_by_the_program(tmp_path, foldable, clean, relu_bn):
    result = run(tmp_path / "*.onnx")
    assert result.exit_code == 1
    assert lines(result.stdout) == [f"{foldable}: {FINDING}"]


def test_a_file_named_twice_is_checked_once(foldable, tmp_path):
    result = run(foldable, tmp_path / "*.onnx", tmp_path)
    assert lines(result.stdout) == [f"{foldable}: {FINDING}"]


def test_missing_path_exits_2(tmp_path, foldable):
    result = run(tmp_path / "nope.onnx", foldable)
    assert result.exit_code == 2
    assert lines(result.stderr) == [f"bnfold: error: {tmp_path / 'nope.onnx'}: no such file or directory"]
    assert lines(result.stdout) == [f"{foldable}: {FINDING}"]


@pytest.mark.parametrize("pattern", ["*.tflite", "empty_folder"])
def test_a_path_that_matches_nothing_exits_2(tmp_path, pattern):
    (tmp_path / "empty_folder").mkdir()
    result = run(tmp_path / pattern)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(lines(result.stderr)) == 1 and result.stderr.startswith(f"bnfold: error: {tmp_path / pattern}: ")


def test_unreadable_file_exits_2_and_the_others_are_still_checked(foldable, unreadable, relu_bn):
    result = run("-v", foldable, unreadable, relu_bn)
    assert result.exit_code == 2
    assert lines(result.stdout) == [
        f"{foldable}: {FINDING}",
        f"{relu_bn}: BatchNormalization 'bn' stays: {RELU_REASON} [conv-bn]",
    ]
    [error] = lines(result.stderr)
    assert error.startswith(f"bnfold: error: {unreadable}: not an ONNX model")


def test_no_path_is_a_usage_error():
    result = run()
    assert result.exit_code == 2
    assert "bnfold: error: Missing argument 'PATH...'" in result.stderr


# -- formats -----------------------------------------------------------------------------------


def test_json_document(foldable, clean, unreadable):
    result = run("--format", "json", foldable, clean, unreadable)
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["summary"] == {"files": 2, "findings": 1, "errors": 1, "interrupted": None}
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path[str(foldable)] == {
        "path": str(foldable),
        "findings": [{"rule": "conv-bn", "node": "bn", "op": "BatchNormalization",
                      "into": "conv", "into_op": "Conv", "graph": "main"}],
        "error": None,
        "fixed": False,
        "unproven": False,
        "interrupted": None,
    }
    assert by_path[str(clean)]["findings"] == [] and by_path[str(clean)]["error"] is None
    assert by_path[str(unreadable)]["error"].startswith(f"{unreadable}: not an ONNX model")
    assert all("refusals" not in f for f in doc["files"])


def test_json_lists_refusals_only_with_verbose(relu_bn):
    result = run("--format", "json", "--verbose", relu_bn)
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)["files"]
    assert entry["findings"] == []
    assert entry["refusals"] == [{"rule": "conv-bn", "node": "bn", "op": "BatchNormalization",
                                  "reason": RELU_REASON, "stage": "match", "graph": "main"}]


def test_github_annotations(foldable, unreadable):
    result = run("--format", "github", foldable, unreadable)
    assert result.exit_code == 2
    warning, error = lines(result.stdout)
    assert warning == f"::warning file={foldable},title=bnfold::{FINDING}"
    assert error.startswith(f"::error file={unreadable},title=bnfold::{unreadable}: not an ONNX model")


def test_github_escapes_the_file_property(tmp_path):
    path = tmp_path / "a,b:c.onnx"
    onnx.save(builders.conv_bn_model(), path)
    result = run("--format", "github", path)
    escaped = str(path).replace(",", "%2C").replace(":", "%3A")
    assert lines(result.stdout) == [f"::warning file={escaped},title=bnfold::{FINDING}"]


# -- --fix -------------------------------------------------------------------------------------


def test_fix_folds_in_place_and_a_second_check_is_clean(foldable):
    result = run("--fix", foldable)
    assert result.exit_code == 0, result.stderr
    assert lines(result.stdout) == [f"{foldable}: folded 1 (BatchNormalization 'bn' into Conv 'conv')"]
    model = onnx.load(foldable)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    again = run(foldable)
    assert again.exit_code == 0 and again.stdout == ""


def test_fix_leaves_clean_files_unwritten(clean):
    before = clean.stat().st_mtime_ns, sha256(clean)
    result = run("--fix", clean)
    assert result.exit_code == 0 and result.stdout == ""
    assert (clean.stat().st_mtime_ns, sha256(clean)) == before


def test_fix_that_fails_validation_leaves_the_file_and_exits_1(foldable, monkeypatch):
    monkeypatch.setattr("bnfold.validation.validate", lambda *a, **k: ValidationResult("failed", reason="forced"))
    before = sha256(foldable)
    result = run("--fix", "--format", "json", foldable)
    assert result.exit_code == 1
    [entry] = json.loads(result.stdout)["files"]
    assert entry["fixed"] is False
    assert entry["error"] == f"{foldable}: validation failed (forced); file left untouched"
    assert lines(result.stderr) == [f"bnfold: error: {entry['error']}"]
    assert sha256(foldable) == before
    assert [p.name for p in foldable.parent.iterdir()] == [foldable.name]


# -- settings: [tool.bnfold] and --disable / --ignore / --atol ---------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The current folder is a project folder; tests write its pyproject.toml."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings(project: Path, text: str) -> None:
    (project / "pyproject.toml").write_text(f"[tool.bnfold]\n{text}\n")


def test_disabled_rule_in_settings_does_not_run(project, foldable):
    settings(project, 'disable = ["conv-bn"]')
    result = run(foldable)
    assert result.exit_code == 0 and result.stdout == ""
    verbose = lines(run("--verbose", foldable).stdout)  # the BN that stays is still listed
    assert verbose and all(line.startswith(f"{foldable}: BatchNormalization 'bn' stays: ") for line in verbose)


def test_disable_flag(project, foldable):
    result = run("--disable", "conv-bn", "--disable", "bn-linear", foldable)
    assert result.exit_code == 0 and result.stdout == ""


def test_disabled_rule_is_not_applied_by_fix(project, foldable):
    settings(project, 'disable = ["conv-bn"]')
    before = sha256(foldable)
    result = run("--fix", foldable)
    assert result.exit_code == 0 and result.stdout == ""
    assert sha256(foldable) == before


def test_fix_with_a_disabled_rule_still_folds_with_the_others(project, tmp_path):
    """gemm-bn off: conv-bn still folds, through the fix path that takes a choice of rules."""
    path = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_model(), path)
    result = run("--disable", "gemm-bn", "--fix", path)
    assert result.exit_code == 0, result.stderr
    assert lines(result.stdout) == [f"{path}: folded 1 (BatchNormalization 'bn' into Conv 'conv')"]
    assert [n.op_type for n in onnx.load(path).graph.node] == ["Conv"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no staging folder left behind


def test_fix_with_rules_that_fails_validation_leaves_the_file(project, foldable, monkeypatch):
    monkeypatch.setattr("bnfold.validation.validate", lambda *a, **k: ValidationResult("failed", reason="forced"))
    before = sha256(foldable)
    result = run("--disable", "gemm-bn", "--fix", foldable)
    assert result.exit_code == 1
    assert lines(result.stderr) == [f"bnfold: error: {foldable}: validation failed (forced); file left untouched"]
    assert sha256(foldable) == before
    assert [p.name for p in foldable.parent.iterdir()] == [foldable.name]


def test_unknown_rule_flag_exits_2_naming_it(project, foldable):
    result = run("--disable", "conv-bm", foldable)
    assert result.exit_code == 2 and result.stdout == ""
    [error] = lines(result.stderr)
    assert error.startswith("bnfold: error: --disable: unknown rule 'conv-bm' (rules: conv-bn, ")


def test_unknown_setting_exits_2_naming_the_key(project, foldable):
    settings(project, "tolerance = 1")
    result = run(foldable)
    assert result.exit_code == 2 and result.stdout == ""
    expected = f"{project / 'pyproject.toml'}: [tool.bnfold]: unknown key 'tolerance' (known: atol, rtol, reference, accept_unproven, disable, ignore)"
    assert lines(result.stderr) == [f"bnfold: error: {expected}"]


def test_settings_are_found_from_a_subfolder(project, foldable):
    settings(project, 'disable = ["conv-bn"]')
    (project / "sub").mkdir()
    os.chdir(project / "sub")
    assert run(foldable).exit_code == 0


def test_ignore_in_settings_is_relative_to_the_pyproject_folder(project):
    settings(project, 'ignore = ["legacy/**", "*.quant.onnx"]')
    for name in ["legacy/a/m.onnx", "models/m.quant.onnx", "models/m.onnx"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(builders.conv_bn_model(), project / name)
    os.chdir(project / "models")
    result = run(project, project / "legacy" / "a" / "m.onnx")  # named files are ignored too
    assert result.exit_code == 1
    assert lines(result.stdout) == [f"{project / 'models' / 'm.onnx'}: {FINDING}"]


def test_ignore_flag_is_relative_to_the_current_folder(project, foldable, clean):
    result = run("--ignore", "foldable.onnx", "--ignore", "nothing/**", "foldable.onnx", "clean.onnx")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_a_path_whose_files_are_all_ignored_is_not_an_error(project, foldable):
    result = run("--ignore", "*.onnx", project)
    assert result.exit_code == 0 and result.stderr == ""


def test_tolerances_from_settings_and_flags_reach_the_fix(project, foldable, monkeypatch):
    seen = []

    def fake_validate(*args, atol=None, rtol=None, **kwargs):
        seen.append((atol, rtol))
        return ValidationResult("passed")

    monkeypatch.setattr("bnfold.validation.validate", fake_validate)
    settings(project, "atol = 0.5\nrtol = 0.25")
    assert run("--fix", foldable).exit_code == 0
    onnx.save(builders.conv_bn_model(), foldable)
    assert run("--fix", "--rtol", "0.125", foldable).exit_code == 0
    assert seen == [(0.5, 0.25), (0.5, 0.125)]
