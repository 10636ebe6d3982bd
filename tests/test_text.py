"""Names from the model or the file system cannot forge output, drive the terminal or break a report.

A node named ``"x\\n/tmp/y.onnx: BatchNormalization ..."`` must not add a finding line for a file
that does not exist; ``\\x1b[31m`` must not reach the terminal; ``[/]`` (rich markup) must not
abort the optimize report after the file was written. Text output escapes control characters
(``bnfold.text``) and prints markup as it is; JSON keeps every name exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import builders
from bnfold.cli import cli
from bnfold.text import printable

FORGED = "bn\n/tmp/forged.onnx: BatchNormalization 'x' can fold into Conv 'y' [conv-bn]"
NAMES = {"newline": FORGED, "escape": "bn\x1b[31mred\x1b[0m", "markup": "[/]bn[bold]", "bidi": "bn\u202eevil",
         "carriage-return": "bn\rover"}


def run(*args, cwd=None):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def model_with_bn_named(name: str) -> onnx.ModelProto:
    model = builders.conv_bn_model()
    next(n for n in model.graph.node if n.op_type == "BatchNormalization").name = name
    return model


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_check_text_prints_one_line_per_finding_with_the_name_escaped(tmp_path, name):
    path = tmp_path / "m.onnx"
    onnx.save(model_with_bn_named(name), path)
    result = run("check", path)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{path}: BatchNormalization '{printable(name)}' can fold into Conv 'conv' [conv-bn]"]
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout and "\r" not in result.stdout


def test_check_github_escapes_too(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model_with_bn_named(NAMES["newline"] + "\x1b"), path)
    result = run("check", "--format", "github", path)
    [line] = result.stdout.splitlines()
    assert line.startswith(f"::warning file={path},title=bnfold::BatchNormalization 'bn%0A/tmp/forged.onnx")
    assert line.endswith("\\x1b' can fold into Conv 'conv' [conv-bn]")


def test_a_file_name_with_a_newline_is_escaped_in_text_and_kept_in_json(tmp_path):
    path = tmp_path / "a\nb.onnx"
    onnx.save(builders.conv_bn_model(), path)
    text = run("check", path)
    assert text.stdout.splitlines() == [f"{printable(str(path))}: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"]
    doc = json.loads(run("check", "--format", "json", path).stdout)
    assert doc["files"][0]["path"] == str(path)


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_optimize_report_shows_hostile_names_and_finishes(tmp_path, name):
    src = tmp_path / "m.onnx"
    onnx.save(model_with_bn_named(name), src)
    result = run("optimize", src)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (tmp_path / "m.folded.onnx").exists()
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert printable(name).split("\\n")[0][:2] in result.stdout
    doc = json.loads(run("optimize", src, "-o", tmp_path / "again.onnx", "--json").stdout)
    assert [f["node"] for f in doc["folds"]] == [name]  # JSON: the exact name


def test_batch_summary_with_markup_in_a_file_name(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save(builders.conv_bn_model(), folder / "[red]x[bold].onnx")
    result = run("optimize", folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    [row] = [line for line in result.stdout.splitlines() if "[red]x[bold].onnx" in line]  # one line, as it is
    assert "written →" in row
    assert (tmp_path / "out" / "[red]x[bold].onnx").exists()


def test_an_error_line_is_one_line_whatever_the_file_name(tmp_path):
    path = tmp_path / "bad\x1b[2J\nname.onnx"
    path.write_bytes(b"not a model")
    result = run("optimize", path)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("bnfold: error: ") and "\x1b" not in line and "\\x1b[2J" in line


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"), ("a\nb", "a\\nb"), ("a\tb", "a\\tb"), ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
    ("\u2028\u2029\u202e\u2066", "\\u2028\\u2029\\u202e\\u2066"), ("ünïcode ok", "ünïcode ok"),
])
def test_printable(text, expected):
    assert printable(text) == expected


def test_a_bad_ignore_flag_and_a_debug_file_name_after_the_separator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = run("check", "--ignore", "[9-0]", ".")
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == ["bnfold: error: --ignore: '[9-0]' is not a valid glob (bad character range "
                                       "9-0 in '[9-0]')"]
    shutil.copy(Path(__file__).parents[1] / "models" / "resnet_stack.onnx", tmp_path / "--debug")
    named = run("check", "--", "--debug")  # a file named --debug: no traceback mode, just a finding
    assert named.exit_code == 1 and named.stdout.startswith("--debug: BatchNormalization")


def test_an_emoji_code_in_a_name_prints_as_written(tmp_path):
    """rich turns ``:thumbs_up:`` into an emoji unless told not to: a name prints as it is."""
    src = tmp_path / "m.onnx"
    onnx.save(model_with_bn_named("a:thumbs_up:b"), src)
    result = run("optimize", src, "--no-validate")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "a:thumbs_up:b" in result.stdout and "\U0001f44d" not in result.stdout
