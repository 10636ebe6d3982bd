"""Models whose tensors live in side files (ONNX external data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import conv_bn_model
from click.testing import CliRunner
from conftest import assert_equivalent, op_types, random_feeds, run_ort

import bnfold
from bnfold.cli import cli
from bnfold.tolerances import tolerance_for


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)


@pytest.fixture
def external_model(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    save_external(conv_bn_model(c_in=8, c_out=16), path, "model.weights")
    return path


def test_external_data_in_external_data_out(external_model, tmp_path):
    before = folder_state(tmp_path)
    result = run("optimize", external_model, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = tmp_path / "model.folded.onnx"
    data = tmp_path / "model.folded.onnx.data"
    assert out.exists() and data.exists()
    # the input and its side file are untouched; the output's weights live in its own side file
    assert {k: v for k, v in folder_state(tmp_path).items() if k in before} == before
    raw = onnx.load(out, load_external_data=False)
    locations = {e.value for t in raw.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.folded.onnx.data"}
    onnx.checker.check_model(str(out), full_check=True)
    folded = onnx.load(out)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(onnx.load(external_model), folded)


def test_external_data_flag_on_a_plain_model(tmp_path):
    src = tmp_path / "plain.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32), src)
    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--external-data")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    assert_equivalent(onnx.load(src), onnx.load(tmp_path / "out.onnx"))


def test_in_place_with_external_data(external_model, tmp_path):
    original = onnx.load(external_model)
    result = run("optimize", external_model, "--in-place")
    assert result.exit_code == 0, result.stdout + result.stderr
    folded = onnx.load(external_model)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(original, folded)


@pytest.mark.parametrize("location", ["../outside.weights", "/tmp/bnfold-absolute.weights", "link/out.weights"])
def test_location_outside_the_models_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (inner / "link").symlink_to(tmp_path / "elsewhere")
    model = conv_bn_model()
    path = inner / "model.onnx"
    save_external(model, tmp_path / "staging.onnx", "data.bin")  # real data, then point at it
    raw = onnx.load(tmp_path / "staging.onnx", load_external_data=False)
    for tensor in raw.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(raw, path)
    target = Path(location) if location.startswith("/") else inner / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((tmp_path / "data.bin").read_bytes())
    before = folder_state(tmp_path)

    result = run("optimize", path)

    assert result.exit_code == 2
    assert result.stderr.startswith("bnfold: error: ") and len(result.stderr.splitlines()) == 1
    assert "outside the model's folder" in result.stderr
    assert folder_state(tmp_path) == before
    if location.startswith("/"):
        target.unlink()


def test_failed_validation_leaves_no_side_file(external_model, tmp_path):
    before = folder_state(tmp_path)
    result = run("optimize", external_model, "--atol", "0", "--rtol", "0")
    assert result.exit_code == 1
    assert folder_state(tmp_path) == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# spans without a length (issue 9, class 6): read exactly as onnxruntime reads them
# ---------------------------------------------------------------------------------------------
# onnxruntime reads a tensor's data from ``offset`` (default 0), exactly its byte size from type
# and shape when ``length`` is absent, and refuses a ``length`` that differs. onnx.load reads
# from the offset to the end of the file instead; validation, bench and bench/reference.py must
# not, or every tensor but the last of a shared side file comes out too big.


def drop_span_keys(path: Path) -> None:
    """Rewrite the model at ``path`` without ``length`` keys (and without ``offset`` where it is 0)."""
    raw = onnx.load(path, load_external_data=False)
    for tensor in raw.graph.initializer:
        kept = [(e.key, e.value) for e in tensor.external_data
                if e.key != "length" and (e.key, e.value) != ("offset", "0")]
        del tensor.external_data[:]
        for key, value in kept:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(raw, path)


def externalize_everything(model: onnx.ModelProto, path: Path, location: str, gap: int = 40) -> None:
    """``model`` at ``path`` with every initializer and Constant value in the side file ``location``,
    ``gap`` bytes of junk after each (so no span may run on), offsets only, no length."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tensors = [*model.graph.initializer,
               *(a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)]
    blob = bytearray()
    for tensor in tensors:
        data = onnx.numpy_helper.to_array(tensor).tobytes()
        for field in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(len(blob)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        blob += data + b"\x7f" * gap
    (path.parent / location).write_bytes(bytes(blob))
    onnx.save(model, path)


def ort_outputs_of_file(path: Path, feeds) -> list:
    """onnxruntime on the file itself: it reads the external data its own way."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def no_lengths(tmp_path) -> tuple[onnx.ModelProto, Path]:
    """conv_bn_model's six tensors in one side file, offsets given (none for the first), no lengths."""
    model = conv_bn_model(c_in=8, c_out=16)
    path = tmp_path / "model.onnx"
    save_external(onnx.ModelProto.FromString(model.SerializeToString()), path, "model.weights")
    drop_span_keys(path)
    raw = onnx.load(path, load_external_data=False)
    assert all({e.key for e in t.external_data} <= {"location", "offset"} for t in raw.graph.initializer)
    assert sum(any(e.key == "offset" for e in t.external_data) for t in raw.graph.initializer) == 5
    return model, path


def test_shared_side_file_without_lengths_folds_validates_and_is_written(no_lengths, tmp_path):
    model, path = no_lengths
    feeds = random_feeds(model)
    expected = run_ort(model, feeds)["Y"]
    np.testing.assert_array_equal(ort_outputs_of_file(path, feeds)[0], expected)  # onnxruntime reads it right

    result = run("optimize", path, "-o", tmp_path / "out.onnx", "--json")

    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["written"] and doc["validation"]["passed"] and doc["validation"]["error"] is None
    folded = onnx.load(tmp_path / "out.onnx")
    assert op_types(folded) == ["Conv"]
    assert_equivalent(model, folded)


def test_constant_values_in_a_shared_side_file_without_lengths(tmp_path):
    model = conv_bn_model(c_in=8, c_out=16, params="constant")
    path = tmp_path / "model.onnx"
    externalize_everything(model, path, "all.bin")

    result = run("optimize", path, "-o", tmp_path / "out.onnx", "--json")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["validation"]["passed"]
    folded = onnx.load(tmp_path / "out.onnx")
    assert op_types(folded) == ["Conv"]
    assert_equivalent(model, folded)


def test_validate_reads_spans_as_onnxruntime_does(no_lengths):
    _, path = no_lengths

    check = bnfold.validate(path, path)

    assert check.passed and check.error is None, check.error


def test_bench_copy_of_a_model_without_lengths(tmp_path):
    """bench copies a model with empty optional BN outputs (onnxruntime crashes on them) to strip them."""
    model = conv_bn_model(c_in=8, c_out=16, opset=9, bn_extra_outputs="empty")
    path = tmp_path / "model.onnx"
    save_external(model, path, "model.weights")
    drop_span_keys(path)
    before = folder_state(tmp_path)

    result = run("bench", path, "--runs", "5", "--warmup", "1", "--time-budget", "0.5", "--json")

    assert result.exit_code == 0, result.stdout + result.stderr
    assert [s["pairs"] for s in json.loads(result.stdout)["settings"]] == [5, 5]
    assert folder_state(tmp_path) == before


def test_reference_script_reads_spans_as_onnxruntime_does(no_lengths):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_reference", Path(__file__).parent.parent / "bench" / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    model, path = no_lengths

    feeds, exact = reference.cached_exact(str(path), None)

    tol = tolerance_for("float32")
    np.testing.assert_allclose(run_ort(model, feeds)["Y"], exact[0], atol=tol.atol, rtol=tol.rtol)


@pytest.mark.parametrize("delta", [-4, 4], ids=["short", "long"])
def test_wrong_explicit_length_in_a_shared_side_file_is_unusable(tmp_path, delta):
    path = tmp_path / "model.onnx"
    save_external(conv_bn_model(c_in=8, c_out=16), path, "model.weights")
    raw = onnx.load(path, load_external_data=False)
    bias = next(t for t in raw.graph.initializer if t.name == "B")  # 16 floats, second in the file
    next(e for e in bias.external_data if e.key == "length").value = str(64 + delta)
    onnx.save(raw, path)
    before = folder_state(tmp_path)
    message = f"{path}: tensor 'B' has {64 + delta} bytes of external data; its type and shape need 64"

    result = run("optimize", path)

    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr == f"bnfold: error: {message}\n"
    assert folder_state(tmp_path) == before
    with pytest.raises(bnfold.BnfoldError) as raised:
        bnfold.validate(path, path)
    assert str(raised.value) == message


# ---------------------------------------------------------------------------------------------
# malformed spans (issue 14, class 8): decimal digits only, as the ONNX spec and onnxruntime read them
# ---------------------------------------------------------------------------------------------


def set_span_key(path: Path, key: str, value: str) -> None:
    """Set ``key`` (offset or length) of the first external tensor of the model at ``path`` to ``value``."""
    raw = onnx.load(path, load_external_data=False)
    tensor = next(t for t in raw.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    entries = {e.key: e for e in tensor.external_data}
    if key in entries:
        entries[key].value = value
    else:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(raw, path)


@pytest.mark.parametrize("key, value", [
    ("length", "-1"), ("length", "-4"), ("offset", "-4"), ("offset", "1_0"), ("offset", "+0"), ("offset", " 0"),
    ("length", "0x10"), ("offset", "\u0663"), ("length", ""),
], ids=["length-minus-1", "length-negative", "offset-negative", "offset-underscore", "offset-plus",
        "offset-space", "length-hex", "offset-arabic-digit", "length-empty"])
def test_a_malformed_span_is_an_unusable_model(external_model, tmp_path, key, value):
    set_span_key(external_model, key, value)
    before = folder_state(tmp_path)
    for args in (("optimize", external_model), ("check", external_model)):
        result = run(*args)
        assert result.exit_code == 2, result.stdout + result.stderr
        assert result.stderr.splitlines() == [
            f"bnfold: error: {external_model}: tensor 'W' has a malformed external data {key} {value!r} "
            "(expected a non-negative decimal number)"], result.stderr
        assert folder_state(tmp_path) == before


def test_explicit_spans_in_plain_digits_still_fold(external_model, tmp_path):
    """The neighbour: offset "0" and the exact length, written out, are what a span should be."""
    set_span_key(external_model, "offset", "0")
    result = run("optimize", external_model)
    assert result.exit_code == 0, result.stdout + result.stderr
