"""Unusable models and bad options: exit code 2, one ``bnfold: error:`` line, nothing written or touched.

Every case runs through click's CliRunner; a few also through a real subprocess of the installed
``bnfold`` console script (that is what users run, with the real stdout/stderr and exit code).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

import builders
from bnfold.cli import cli

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def run_script(*args) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("bnfold")
    script = str(beside) if beside.exists() else shutil.which("bnfold")
    assert script, "the bnfold console script is not installed"
    return subprocess.run([script, *map(str, args)], capture_output=True, text=True, timeout=60)


def tree_state(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden temp files included) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(folder.rglob("*"))
    }


def check_usage_error(exit_code: int, stdout: str, stderr: str, fragments) -> None:
    """Exit 2, nothing on stdout, exactly one ``bnfold: error:`` line on stderr naming every fragment."""
    assert exit_code == 2, stdout + stderr
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith("bnfold: error: "), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    assert "Traceback" not in stdout + stderr


def valid_bytes() -> bytes:
    return builders.conv_bn_model().SerializeToString()


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def invalid_utf8_bytes() -> bytes:
    """A valid model whose doc_string holds bytes that are not UTF-8 (protobuf strings must be)."""
    data = valid_bytes()
    doc = builders.conv_bn_model().doc_string.encode()
    assert data.count(doc) == 1
    return data.replace(doc, doc[:-2] + b"\xff\xfe")


# ---------------------------------------------------------------------------------------------
# unusable model files: each maker creates (or not) ``folder/model.onnx`` and returns the path
# ---------------------------------------------------------------------------------------------


def _content(make_bytes):
    def make(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(make_bytes())
        return path
    return make


def _directory(folder: Path) -> Path:
    (folder / "model.onnx").mkdir()
    return folder / "model.onnx"


def _missing_external_data(folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save(builders.conv_bn_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (folder / "weights.bin").unlink()
    return path


BAD_MODELS = {
    "empty-file": _content(lambda: b""),
    **{f"random-{size}-bytes": _content(lambda size=size: random_bytes(size, seed=size))
       for size in (1, 64, 1000, 100_000)},
    "truncated-sample": _content(lambda: (b := (MODELS_DIR / "resnet_stack.onnx").read_bytes())[: len(b) // 2]),
    "truncated-conv-bn": _content(lambda: (b := valid_bytes())[: len(b) // 2]),
    "text-file": _content(lambda: b"Conv -> BatchNormalization\nthis is not an ONNX model\n"),
    "protobuf-without-graph": _content(lambda: b"\x08\x08"),  # ir_version = 8, nothing else
    "fails-onnx-checker": _content(builders.conv_bn_bytes_invalid_for_checker),
    "missing-external-data": _missing_external_data,
    "directory": _directory,
    "missing-path": lambda folder: folder / "model.onnx",
    "missing-path-in-missing-folder": lambda folder: folder / "nowhere" / "model.onnx",
}


def test_text_field_that_is_not_utf8_passes_through_unchanged(tmp_path):
    """bnfold never reads the doc_string, so a malformed one is not its business: keep the bytes."""
    path = tmp_path / "model.onnx"
    path.write_bytes(invalid_utf8_bytes())
    result = run("optimize", path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert b"bnfold test mod\xff\xfe" in (tmp_path / "out.onnx").read_bytes()
    assert path.read_bytes() == invalid_utf8_bytes()


@pytest.mark.parametrize("flags", [[], ["--in-place"], ["--json"]], ids=["default", "in-place", "json"])
@pytest.mark.parametrize("case", BAD_MODELS)
def test_unusable_model(tmp_path, case, flags):
    path = BAD_MODELS[case](tmp_path)
    before = tree_state(tmp_path)

    result = run("optimize", path, *flags)

    check_usage_error(result.exit_code, result.stdout, result.stderr, [path])
    assert tree_state(tmp_path) == before  # no output, no temp file, the input byte-for-byte intact


@pytest.mark.parametrize("case", ["empty-file", "random-1000-bytes", "fails-onnx-checker"])
def test_unusable_model_console_script(tmp_path, case):
    path = BAD_MODELS[case](tmp_path)
    before = tree_state(tmp_path)

    proc = run_script("optimize", path)

    check_usage_error(proc.returncode, proc.stdout, proc.stderr, [path])
    assert tree_state(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
    """--debug adds the traceback; the exit code stays the documented 2 for an unusable model."""
    path = BAD_MODELS["empty-file"](tmp_path)

    proc = run_script("optimize", path, "--debug")

    assert "Traceback (most recent call last)" in proc.stderr
    assert f"{path}: empty file" in proc.stderr
    assert proc.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ---------------------------------------------------------------------------------------------
# bad options on a valid model: each case gives the arguments after MODEL and what the error names
# ---------------------------------------------------------------------------------------------


BAD_OPTIONS = {
    "input-shape-not-dims": lambda d, src: (["--input-shape", "x=abc"], ["x=abc"]),
    "input-shape-without-name": lambda d, src: (["--input-shape", "1x4x8x8"], ["1x4x8x8"]),
    "input-shape-names-no-input": lambda d, src: (["--input-shape", "nope=1x4x8x8"], ["nope"]),
    "input-shape-zero-dim": lambda d, src: (["--input-shape", "X=0x4x8x8"], ["X=0x4x8x8"]),
    "output-folder-missing": lambda d, src: (["-o", d / "nowhere" / "out.onnx"], [d / "nowhere"]),
    "output-is-a-directory": lambda d, src: (["-o", d], [d]),
    "output-is-input": lambda d, src: (["-o", src], [src, "--in-place"]),
    "output-is-input-respelled": lambda d, src: (["-o", f"{d}/./{src.name}"], ["--in-place"]),
    "in-place-with-other-output": lambda d, src: (["--in-place", "-o", d / "other.onnx"], ["--in-place"]),
    "unknown-option": lambda d, src: (["--bogus"], ["--bogus"]),
    "atol-not-a-number": lambda d, src: (["--atol", "abc"], ["--atol", "abc"]),
    "seed-not-an-integer": lambda d, src: (["--seed", "1.5"], ["--seed"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option(tmp_path, case):
    src = tmp_path / "model.onnx"
    onnx.save(builders.conv_bn_model(symbolic_batch=True), src)
    args, fragments = BAD_OPTIONS[case](tmp_path, src)
    before = tree_state(tmp_path)

    result = run("optimize", src, *args)

    check_usage_error(result.exit_code, result.stdout, result.stderr, fragments)
    assert tree_state(tmp_path) == before


def test_bad_option_console_script(tmp_path):
    src = tmp_path / "model.onnx"
    onnx.save(builders.conv_bn_model(), src)
    before = tree_state(tmp_path)

    proc = run_script("optimize", src, "--input-shape", "x=abc")

    check_usage_error(proc.returncode, proc.stdout, proc.stderr, ["x=abc"])
    assert tree_state(tmp_path) == before


def test_missing_model_argument():
    result = run("optimize")
    check_usage_error(result.exit_code, result.stdout, result.stderr, ["MODEL"])
