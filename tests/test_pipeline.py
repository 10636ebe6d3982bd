"""The Python API behind the CLI: ``bnfold.optimize`` (file to file) and ``bnfold.fold`` on a path."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest

import bnfold
import builders
from bnfold import BnfoldError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def folder_state(folder: Path) -> dict[str, str]:
    """Every entry of ``folder`` (hidden temp files included) with the sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


@pytest.fixture
def src(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(builders.two_branch_model(), path)
    return path


# ---------------------------------------------------------------------------------------------
# optimize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_str", [True, False], ids=["str", "Path"])
def test_optimize_writes_a_validated_fold(src, tmp_path, as_str):
    dst = tmp_path / "out.onnx"

    report = bnfold.optimize(str(src) if as_str else src, str(dst) if as_str else dst)

    assert isinstance(report, bnfold.Report)
    assert report.ok and report.written and report.validation.passed
    assert sorted((f.node, f.into) for f in report.result.folds) == [("b1", "c1"), ("b2", "c2")]
    assert bn_count(dst) == 0 and report.output_bytes == dst.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]
    doc = report.to_dict()
    assert json.loads(json.dumps(doc)) == doc  # the --json document is plain JSON
    assert (doc["input"], doc["output"], doc["ok"], doc["written"]) == (str(src), str(dst), True, True)
    assert [f["node"] for f in doc["folds"]] == [f.node for f in report.result.folds]
    assert doc["validation"] == report.validation.to_dict()
    assert doc["before"]["nodes"] == len(onnx.load(src).graph.node)
    assert doc["after"] == {"nodes": len(onnx.load(dst).graph.node), "parameters": report.result.after.parameters,
                            "parameter_bytes": sum(onnx.numpy_helper.to_array(t).nbytes
                                                   for t in onnx.load(dst).graph.initializer),
                            "file_bytes": dst.stat().st_size}


def test_optimize_default_output_and_no_validation(src, tmp_path):
    report = bnfold.optimize(src, validate_output=False)

    expected = tmp_path / "model.folded.onnx"
    assert report.ok and report.written and report.validation is None
    assert report.output == str(expected) and bn_count(expected) == 0


def test_optimize_in_place(src, tmp_path):
    report = bnfold.optimize(src, in_place=True)

    assert report.ok and report.written and report.output == str(src)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert bn_count(src) == 0


def unrunnable_model() -> onnx.ModelProto:
    """conv_bn_model whose output goes through an operator of a custom domain no runtime here knows."""
    model = builders.conv_bn_model()
    y = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Mystery", [y.name], ["Z"], domain="com.example"))
    model.graph.output[0].name = "Z"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    return model


@pytest.mark.parametrize("kwargs", [
    {"atol": 0.0, "rtol": 0.0},  # the correct fold's few-ulp error is beyond a zero tolerance
    {},  # validation cannot even run: an operator no runtime here has
], ids=["beyond-tolerance", "cannot-run"])
def test_failed_validation_is_reported_and_nothing_is_written(src, tmp_path, kwargs):
    if not kwargs:
        onnx.save(unrunnable_model(), src)
    before = folder_state(tmp_path)

    report = bnfold.optimize(src, tmp_path / "out.onnx", **kwargs)

    assert report.ok is False and report.written is False and report.validation.passed is False
    assert report.to_dict()["output"] is None and report.to_dict()["after"]["file_bytes"] is None
    if "atol" in kwargs:
        assert report.verdict == "failed"
        assert report.validation.error is None and report.validation.outputs[0].max_abs > 0
    else:
        assert report.verdict == "unproven"
        assert "cannot load the original model" in report.validation.error
        assert report.validation.outputs == []
    assert folder_state(tmp_path) == before


def test_an_unproven_fold_is_written_only_when_accepted(src, tmp_path):
    from bnfold.validation import ValidationOptions

    onnx.save(unrunnable_model(), src)
    refused = bnfold.optimize(src, tmp_path / "out.onnx")
    assert (refused.verdict, refused.ok, refused.written) == ("unproven", False, False)
    accepted = bnfold.optimize(src, tmp_path / "out.onnx", validation=ValidationOptions(accept_unproven=True))
    assert (accepted.verdict, accepted.ok, accepted.written, accepted.unproven_accepted) == ("unproven", True, True, True)
    assert bn_count(tmp_path / "out.onnx") == 0
    runnable = tmp_path / "runnable.onnx"
    onnx.save(builders.two_branch_model(), runnable)
    failed = bnfold.optimize(runnable, tmp_path / "never.onnx",
                             validation=ValidationOptions(atol=0.0, rtol=0.0, accept_unproven=True))
    assert (failed.verdict, failed.written) == ("failed", False)  # a failed fold is never accepted
    assert not (tmp_path / "never.onnx").exists()


def test_validation_options_and_their_keywords_are_one_or_the_other(src, tmp_path):
    from bnfold.validation import ValidationOptions

    with pytest.raises(BnfoldError, match="either as validation=ValidationOptions"):
        bnfold.optimize(src, tmp_path / "out.onnx", atol=1e-3, validation=ValidationOptions())
    with pytest.raises(BnfoldError, match="--reference exact: expected one of original, float64"):
        bnfold.optimize(src, tmp_path / "out.onnx", validation=ValidationOptions(reference="exact"))


def test_failed_validation_in_place_keeps_the_input(src, tmp_path):
    before = folder_state(tmp_path)

    report = bnfold.optimize(src, in_place=True, atol=0.0, rtol=0.0)

    assert not report.ok and not report.written
    assert folder_state(tmp_path) == before


def test_seed_and_tolerances_are_passed_to_validation(src, tmp_path):
    report = bnfold.optimize(src, tmp_path / "out.onnx", seed=5, atol=0.5, rtol=0.25)

    v = report.validation
    assert v.seed == 5 and (v.outputs[0].atol, v.outputs[0].rtol) == (0.5, 0.25)


@pytest.mark.parametrize("failing", ["write_model", "validate"])
def test_interrupted_optimize_leaves_no_trace(src, tmp_path, monkeypatch, failing):
    """Whatever fails mid-way (disk full while writing, Ctrl-C during validation), no partial
    output or temp file remains and an existing output is untouched."""
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"an earlier result")
    before = folder_state(tmp_path)

    def write_half_then_fail(model, path, **options):
        Path(path).write_bytes(model.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    replacement = write_half_then_fail if failing == "write_model" else interrupt
    monkeypatch.setattr("bnfold.pipeline.write_model" if failing == "write_model" else "bnfold.validation.validate",
                        replacement)

    with pytest.raises(OSError if failing == "write_model" else KeyboardInterrupt):
        bnfold.optimize(src, dst)

    assert folder_state(tmp_path) == before


@pytest.mark.parametrize("make_args, fragment", [
    (lambda src, d: dict(dst=d / "other.onnx", in_place=True), "--in-place"),
    (lambda src, d: dict(dst=src), "--in-place"),
    (lambda src, d: dict(dst=d / "nowhere" / "out.onnx"), "does not exist"),
    (lambda src, d: dict(dst=d), "directory"),
], ids=["in-place-and-other-output", "output-is-input", "output-folder-missing", "output-is-directory"])
def test_contradictory_destinations_raise(src, tmp_path, make_args, fragment):
    before = folder_state(tmp_path)

    with pytest.raises(BnfoldError, match=fragment):
        bnfold.optimize(src, **make_args(src, tmp_path))

    assert folder_state(tmp_path) == before


def test_optimize_unreadable_model_raises_naming_it(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(builders.conv_bn_bytes_invalid_for_checker())

    with pytest.raises(BnfoldError, match="bad.onnx"):
        bnfold.optimize(bad)

    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


# ---------------------------------------------------------------------------------------------
# fold on a path, idempotence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_str", [True, False], ids=["str", "Path"])
def test_fold_accepts_a_path(src, as_str):
    result = bnfold.fold(str(src) if as_str else src)

    assert sorted(f.node for f in result.folds) == ["b1", "b2"]
    assert result.changed and result.after.nodes == result.before.nodes - 2
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)


def test_fold_of_an_unreadable_path_raises(tmp_path):
    with pytest.raises(BnfoldError, match="no such file"):
        bnfold.fold(tmp_path / "missing.onnx")


def test_optimizing_a_folded_model_again_folds_nothing(tmp_path):
    src = Path(shutil.copy(MODELS_DIR / "resnet_stack.onnx", tmp_path))
    first = bnfold.optimize(src, tmp_path / "once.onnx")
    assert first.ok and len(first.result.folds) == 9

    second = bnfold.optimize(tmp_path / "once.onnx", tmp_path / "twice.onnx")

    assert second.ok and second.written
    assert second.result.folds == [] and second.result.refusals == [] and not second.result.changed
    assert second.validation is None  # nothing changed, nothing to validate
    assert second.result.after == second.result.before == first.result.after
    assert onnx.load(tmp_path / "twice.onnx").graph == onnx.load(tmp_path / "once.onnx").graph
    assert bnfold.fold(tmp_path / "twice.onnx").folds == []
