"""Bounded work on any input: FIFOs, devices, link loops, models whose run never ends.

Only regular files are read as models, with their size known before reading (a FIFO blocks its
reader, /dev/zero never ends); folder and glob searches visit every real folder once, so a link
loop ends; a validation that does not finish within its time limit is abandoned and says so.
Every command runs as a real process with a timeout: a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders

TIMEOUT = 60


def bnfold(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("bnfold")
    script = str(beside) if beside.exists() else shutil.which("bnfold")
    return subprocess.run([script, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)


FINDING = "BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder with one foldable model ``m.onnx`` and a FIFO ``fifo.onnx``."""
    onnx.save(builders.conv_bn_model(), tmp_path / "m.onnx")
    os.mkfifo(tmp_path / "fifo.onnx")
    return tmp_path


@pytest.mark.parametrize("how", ["glob", "folder", "recursive-glob"])
def test_a_fifo_among_the_matches_is_skipped(folder, how):
    target = {"glob": folder / "*.onnx", "folder": folder, "recursive-glob": folder / "**" / "*.onnx"}[how]
    result = bnfold("check", str(target))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [f"{folder / 'm.onnx'}: {FINDING}"]
    assert result.stderr == ""


@pytest.mark.parametrize("command", [("check",), ("optimize",), ("optimize", "--no-validate")])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link", "dev-null"])
def test_a_named_path_that_is_not_a_regular_file_is_refused_at_once(folder, command, kind):
    path = {"fifo": folder / "fifo.onnx", "dev-zero-link": folder / "zero.onnx", "dev-null": Path("/dev/null")}[kind]
    if kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    what = "a FIFO" if kind == "fifo" else "a character device"
    start = time.monotonic()
    result = bnfold(*command, path)
    assert time.monotonic() - start < TIMEOUT / 2
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"bnfold: error: {path}: {what}, not a regular file: not read"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["m.onnx", "fifo.onnx"] + (
        ["zero.onnx"] if kind == "dev-zero-link" else []))


def test_link_loops_end_and_each_model_is_found_once(tmp_path):
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    onnx.save(builders.conv_bn_model(), models / "sub" / "m.onnx")
    (models / "sub" / "back").symlink_to(models)  # models/sub/back/sub/back/... for ever
    (models / "self").symlink_to(".")
    for target in (f"{models}/**/*.onnx", str(models), f"{models}/**"):
        result = bnfold("check", target)
        assert result.returncode == 1, (target, result.stderr)
        assert len(result.stdout.splitlines()) == 1, result.stdout
        assert result.stdout.startswith(str(models)) and result.stdout.endswith(FINDING + "\n")


def test_hidden_names_match_only_a_pattern_that_starts_with_a_dot(tmp_path):
    onnx.save(builders.conv_bn_model(), tmp_path / ".hidden.onnx")
    (tmp_path / ".dir").mkdir()
    onnx.save(builders.conv_bn_model(), tmp_path / ".dir" / "m.onnx")
    assert bnfold("check", f"{tmp_path}/*.onnx").returncode == 2  # nothing: hidden names are not matched
    assert bnfold("check", f"{tmp_path}/**/*.onnx").returncode == 2
    found = bnfold("check", f"{tmp_path}/.*.onnx")
    assert found.stdout.splitlines() == [f"{tmp_path / '.hidden.onnx'}: {FINDING}"]
    assert bnfold("check", f"{tmp_path}/.dir").stdout.splitlines() == [f"{tmp_path / '.dir' / 'm.onnx'}: {FINDING}"]


def test_a_folder_search_skips_hidden_names(tmp_path):
    """``bnfold check .`` in a repository must not walk into .venv (onnx's test models) or .git."""
    onnx.save(builders.conv_bn_model(), tmp_path / "m.onnx")
    for hidden in (".venv/lib", ".git"):
        (tmp_path / hidden).mkdir(parents=True)
        onnx.save(builders.conv_bn_model(), tmp_path / hidden / "x.onnx")
    onnx.save(builders.conv_bn_model(), tmp_path / ".hidden.onnx")
    result = bnfold("check", str(tmp_path))
    assert result.stdout.splitlines() == [f"{tmp_path / 'm.onnx'}: {FINDING}"]


def endless_model() -> onnx.ModelProto:
    """conv_bn_model, plus an output computed by a Loop of 10^15 iterations (onnxruntime runs it)."""
    model = builders.conv_bn_model()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", onnx.TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, [])])
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(10**15, np.int64), "trips"), numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model.graph.node.append(helper.make_node("Loop", ["trips", "go", "zero"], ["count"], name="forever", body=body))
    model.graph.output.append(helper.make_tensor_value_info("count", onnx.TensorProto.FLOAT, []))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_validation_that_never_ends_is_abandoned_at_its_time_limit(tmp_path):
    src = tmp_path / "endless.onnx"
    onnx.save(endless_model(), src)
    start = time.monotonic()
    result = bnfold("optimize", src, "--validate-timeout", "3")
    assert time.monotonic() - start < TIMEOUT / 2
    assert result.returncode == 3, result.stderr  # could not prove the fold: nothing written
    assert "validation did not finish within the time limit of 3 s (--validate-timeout sets it)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endless.onnx"]  # nothing written, nothing left


def test_the_time_limit_has_a_default():
    from click.testing import CliRunner

    from bnfold.cli import cli
    from bnfold.limits import VALIDATE_TIMEOUT
    from bnfold.validation import validate

    assert VALIDATE_TIMEOUT == 300 and validate.__kwdefaults__["timeout"] == VALIDATE_TIMEOUT
    text = CliRunner().invoke(cli, ["optimize", "--help"]).stdout
    assert "--validate-timeout SECONDS" in text and "[default: 300.0" in " ".join(text.split())


# -- outputs that cannot be: one line, exit 2, never "internal error" ------------------------------------


def test_an_empty_output_path_is_a_usage_error(folder):
    done = bnfold("optimize", folder / "m.onnx", "-o", "")
    assert (done.returncode, done.stderr.strip()) == (
        2, "bnfold: error: -o/--output: an empty path; give the output file (or, for several models, a folder)")
    import bnfold as api
    from bnfold.errors import UsageError

    with pytest.raises(UsageError, match="the output path is empty"):
        api.optimize(folder / "m.onnx", "")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_folder_nothing_can_be_written_in_is_one_line(folder):
    done = bnfold("optimize", folder / "m.onnx", "-o", "/proc/m.folded.onnx", "--no-validate")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("bnfold: error: /proc/m.folded.onnx: cannot write in /proc: "), done.stderr
    assert "internal error" not in done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["check", "{m}"], ["check", "--format", "json", "{m}"],
                                  ["optimize", "{m}", "-o", "{out}", "--no-validate"],
                                  ["optimize", "{m}", "-o", "{out}", "--no-validate", "--format", "json"],
                                  ["optimize", "{m}", "{m}", "-o", "{dir}", "--no-validate"]],
                         ids=["check", "check-json", "optimize", "optimize-json", "optimize-many"])
def test_a_full_standard_output_is_one_line(folder, args):
    """``> /dev/full``: the report cannot be printed; what was written stays, and the line says so."""
    paths = {"m": folder / "m.onnx", "out": folder / "out.onnx", "dir": folder / "outdir"}
    beside = Path(sys.executable).with_name("bnfold")
    script = str(beside) if beside.exists() else shutil.which("bnfold")
    with open("/dev/full", "w") as full:
        done = subprocess.run([script, *(a.format(**paths) for a in args)], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("bnfold: error: cannot write to standard output: No space left on device"), line
    if args[-1] == "--no-validate" and "{out}" in args:
        assert line.endswith(f"({paths['out']} was written)") and paths["out"].exists()


@pytest.mark.parametrize("command, code", [("optimize", 0), ("check", 1)])
def test_a_reader_that_closes_the_pipe_leaves_the_command_s_exit_code(tmp_path, command, code):
    """``bnfold … | head``: a report far larger than the pipe's buffer, its reader gone after 10 bytes.
    The rest goes nowhere; optimize still exits 0 (the model is written), check 1 (findings),
    where click's convention would exit 1 for both ("validation failed" for optimize)."""
    src, out = tmp_path / "chain.onnx", tmp_path / "chain.folded.onnx"
    onnx.save(builders.conv_bn_chain_model(1500), src)
    args = [src, "-o", out, "--no-validate"] if command == "optimize" else [src]
    beside = Path(sys.executable).with_name("bnfold")
    script = str(beside) if beside.exists() else shutil.which("bnfold")
    proc = subprocess.Popen([script, command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert (proc.wait(timeout=TIMEOUT), stderr) == (code, b"")
    assert out.exists() == (command == "optimize")


def test_a_closed_pipe_without_a_file_descriptor_stays_click_s_epipe(monkeypatch):
    """Where standard output has no descriptor to point at /dev/null (a caller's stream), the closed
    pipe goes on as the very BrokenPipeError, errno EPIPE, which click turns into its quiet exit."""
    import errno

    from bnfold.cli import _reporting

    class Closed:
        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self):
            raise ValueError("no descriptor")

    monkeypatch.setattr(sys, "stdout", Closed())
    with pytest.raises(BrokenPipeError) as raised:
        with _reporting():
            pass
    assert raised.value.errno == errno.EPIPE
