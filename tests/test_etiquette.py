"""bnfold as a library inside someone else's pipeline: it prints nothing (reports are returned),
raises ``BnfoldError`` subclasses with one-line messages, logs through ``logging`` under the
``bnfold`` logger, and leaves other libraries' global settings (graphsurgeon's logger) as it
found them."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import onnx
import pytest
from onnx_graphsurgeon.logger.logger import G_LOGGER

import bnfold
from bnfold.errors import BackendError, BnfoldError, ModelError, OutputError, UsageError

from builders import conv_bn_model

MODELS = Path(__file__).resolve().parent.parent / "models"


def one_line(exc: BaseException) -> bool:
    return "\n" not in str(exc) and str(exc).strip() != ""


def test_fold_optimize_and_validate_print_nothing(tmp_path, capfd):
    """Not on stdout, not on stderr, at the file-descriptor level (the validation child's
    onnxruntime warnings and graphsurgeon's print() included)."""
    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    capfd.readouterr()
    result = bnfold.fold(src)
    report = bnfold.optimize(src, tmp_path / "out.onnx")
    check = bnfold.validate(src, tmp_path / "out.onnx")
    out, err = capfd.readouterr()
    assert result.folds and report.ok and check.passed
    assert (out, err) == ("", "")


def test_a_model_graphsurgeon_warns_about_prints_nothing(capfd):
    """A graph output that no node produces and an unused input: graphsurgeon's importer and
    cleanup warn about such models on stdout when its logger is at WARNING."""
    model = conv_bn_model()
    model.graph.input.append(onnx.helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, [1]))
    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.VERBOSE  # the user's own setting: as loud as it gets
    try:
        capfd.readouterr()
        assert bnfold.fold(model).folds
        out, err = capfd.readouterr()
        assert (out, err) == ("", "")
        assert G_LOGGER.severity == G_LOGGER.VERBOSE  # given back as it was
    finally:
        G_LOGGER.severity = before


def test_graphsurgeon_severity_is_given_back_after_concurrent_folds():
    before = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.INFO
    try:
        errors: list[BaseException] = []

        def work():
            try:
                for _ in range(5):
                    assert bnfold.fold(conv_bn_model()).folds
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert G_LOGGER.severity == G_LOGGER.INFO
    finally:
        G_LOGGER.severity = before


def test_diagnostics_go_to_the_bnfold_logger(tmp_path, caplog):
    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    with caplog.at_level(logging.DEBUG, logger="bnfold"):
        report = bnfold.optimize(src, tmp_path / "out.onnx", validate_output=False)
    assert report.written
    records = [r for r in caplog.records if r.name.startswith("bnfold")]
    names = {r.name for r in records}
    assert {"bnfold.pipeline", "bnfold.folding"} <= names
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(info) == 1 and f"{len(report.result.folds)} folded" in info[0] and "validation not run" in info[0]
    assert all("\n" not in r.getMessage() for r in records)
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("bnfold").handlers)


def test_a_node_name_cannot_forge_a_log_line(tmp_path, caplog):
    model = conv_bn_model()
    model.graph.name = "main\nFAKE LINE"
    for node in model.graph.node:
        node.name += "\nforged"
    src = tmp_path / "evil\nname.onnx"
    onnx.save(model, src)
    with caplog.at_level(logging.DEBUG, logger="bnfold"):
        bnfold.optimize(src, tmp_path / "out.onnx", validate_output=False)
    assert caplog.records and all("\n" not in r.getMessage() for r in caplog.records)


def test_without_logging_configured_a_script_prints_nothing(tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    script = ("import sys, bnfold; r = bnfold.optimize(sys.argv[1], sys.argv[2]); "
              "sys.exit(0 if r.ok and r.written else 1)")
    proc = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "out.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


# ---------------------------------------------------------------------------------------------
# errors: BnfoldError subclasses, one line each
# ---------------------------------------------------------------------------------------------


def test_an_unreadable_model_is_a_model_error(tmp_path):
    for path, content in ((tmp_path / "missing.onnx", None), (tmp_path / "junk.onnx", b"\x08\x07junk"),
                          (tmp_path / "empty.onnx", b"")):
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ModelError) as info:
            bnfold.fold(path)
        assert one_line(info.value) and str(path) in str(info.value)


def test_what_is_not_a_model_is_a_usage_error():
    for thing in (42, b"bytes", ["list"]):
        with pytest.raises(UsageError) as info:
            bnfold.fold(thing)
        assert isinstance(info.value, ValueError) and isinstance(info.value, BnfoldError) and one_line(info.value)


@pytest.mark.parametrize("kwargs", [dict(atol=-1.0), dict(rtol=float("nan")), dict(validate_timeout=-5),
                                    dict(input_shapes={"nope": [1, 3, 8, 8]})],
                         ids=["atol", "rtol", "timeout", "input-name"])
def test_bad_options_are_usage_errors_before_anything_is_written(tmp_path, kwargs):
    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    with pytest.raises(UsageError) as info:
        bnfold.optimize(src, tmp_path / "out.onnx", **kwargs)
    assert one_line(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_output_that_would_overwrite_the_input_is_an_output_error(tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    data = src.read_bytes()
    for dst in (src, tmp_path / "no-such-folder" / "out.onnx", tmp_path):
        with pytest.raises(OutputError) as info:
            bnfold.optimize(src, dst)
        assert one_line(info.value)
    assert src.read_bytes() == data


def test_the_subclasses_are_bnfold_errors():
    for cls in (UsageError, ModelError, OutputError, BackendError):
        assert issubclass(cls, BnfoldError)
    assert bnfold.BnfoldError is BnfoldError


def test_cli_debug_shows_diagnostics_and_takes_its_handler_back(tmp_path):
    from click.testing import CliRunner

    from bnfold.cli import cli

    src = tmp_path / "m.onnx"
    shutil.copy(MODELS / "resnet_stack.onnx", src)
    result = CliRunner().invoke(cli, ["--debug", "optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--no-validate"])
    assert result.exit_code == 0, result.output
    assert "bnfold: debug: bnfold.folding: fold: 9 folded" in result.stderr
    root = logging.getLogger("bnfold")
    assert [type(h) for h in root.handlers] == [logging.NullHandler] and root.level == logging.NOTSET
    quiet = CliRunner().invoke(cli, ["optimize", str(src), "-o", str(tmp_path / "p.onnx"), "--no-validate"])
    assert quiet.exit_code == 0 and "debug" not in quiet.stderr


def test_cli_debug_reaches_batch_workers(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(MODELS / "resnet_stack.onnx", folder / name)
    proc = subprocess.run([sys.executable, "-m", "bnfold", "--debug", "optimize", str(folder), "-o",
                           str(tmp_path / "out"), "-j", "2", "--no-validate"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    folded = [line for line in proc.stderr.splitlines() if line.startswith("bnfold: debug: bnfold.folding: fold:")]
    assert len(folded) == 2  # one per file, from the worker that folded it
