"""Reading models without their weights (bnfold.wire, io.ModelFile.read(lazy=True)) and writing them back.

The pipeline reads every model lazily: big main-graph initializers stay on disk as references
to their bytes in the file, folds read the weights they need, and the writer copies the rest
straight from the file. These tests hold that path to the eager one: same model out.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import conv_bn_model, two_branch_model
from click.testing import CliRunner
from conftest import assert_equivalent, op_types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import bnfold
from bnfold import wire
from bnfold.cli import cli
from bnfold.errors import BnfoldError
from bnfold.io import LAZY_BYTES, ModelFile, read_model, write_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def raw_sizes(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: len(t.raw_data) for t in model.graph.initializer}


def loaded(path) -> onnx.ModelProto:
    """``onnx.load`` with external data, without the explicit ``data_location=DEFAULT`` it leaves behind."""
    model = onnx.load(path)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")
    return model


def locations(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


# -- the wire walker ------------------------------------------------------------------------

def test_skeleton_points_big_initializers_at_their_bytes_in_the_file():
    model = conv_bn_model(c_in=8, c_out=16, kernel=3)  # W: 16*8*3*3*4 = 4608 bytes; BN params 64 bytes
    data = model.SerializeToString()
    skeleton, turned = wire.skeleton(data, "m.onnx", LAZY_BYTES)
    big = {t.name for t in model.graph.initializer if len(t.raw_data) >= LAZY_BYTES}
    assert big == {"W"} and turned == 1
    parsed = onnx.ModelProto.FromString(skeleton)
    for original, lazy in zip(model.graph.initializer, parsed.graph.initializer):
        if original.name in big:
            info = locations(lazy)
            assert lazy.data_location == onnx.TensorProto.EXTERNAL and not lazy.raw_data
            assert info["location"] == "m.onnx"
            start, length = int(info["offset"]), int(info["length"])
            assert data[start:start + length] == original.raw_data  # exactly where the bytes are
            restored = onnx.TensorProto()
            restored.CopyFrom(lazy)
            del restored.external_data[:]
            restored.ClearField("data_location")
            restored.raw_data = original.raw_data
            assert restored == original
        else:
            assert lazy == original
    # nothing else changed
    parsed.graph.ClearField("initializer")
    model.graph.ClearField("initializer")
    assert parsed == model


def test_skeleton_of_a_model_without_big_tensors_turns_nothing():
    model = conv_bn_model(c_in=2, c_out=2, kernel=1)
    data = model.SerializeToString()
    assert wire.skeleton(data, "m.onnx", LAZY_BYTES) == (data, 0)


@pytest.mark.parametrize("cut", [1, 7, 100])
def test_truncated_bytes_are_a_wire_error(cut):
    data = conv_bn_model(c_in=8, c_out=16, kernel=3).SerializeToString()
    with pytest.raises(wire.WireError):
        wire.skeleton(data[:-cut], "m.onnx", LAZY_BYTES)


def test_group_wire_types_are_a_wire_error():
    with pytest.raises(wire.WireError):
        wire.skeleton(bytes([(1 << 3) | 3]), "m.onnx", LAZY_BYTES)


# -- lazy read, fold, write ---------------------------------------------------------------------

def test_lazy_read_keeps_weights_on_disk(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=32, c_out=64, kernel=3), src)
    model = ModelFile.read(src, lazy=True)
    assert model.data_files == ()  # the model's own file is not a side file
    w = next(t for t in model.proto.graph.initializer if t.name == "W")
    assert not w.raw_data and w.data_location == onnx.TensorProto.EXTERNAL
    np.testing.assert_array_equal(model.read_tensor(w), numpy_helper.to_array(
        next(t for t in onnx.load(src).graph.initializer if t.name == "W")))


@pytest.mark.parametrize("make", [lambda: conv_bn_model(c_in=16, c_out=32, kernel=3), two_branch_model,
                                  lambda: conv_bn_model(c_in=16, c_out=32, kernel=3, params="identity"),
                                  lambda: conv_bn_model(c_in=16, c_out=32, kernel=3, dtype=np.float16)])
def test_lazy_pipeline_writes_what_the_eager_fold_makes(tmp_path, make):
    src = tmp_path / "m.onnx"
    onnx.save(make(), src)
    report = bnfold.optimize(src, tmp_path / "out.onnx")
    assert report.ok and report.written and report.result.folds
    eager = bnfold.fold(onnx.load(src)).model
    assert onnx.load(tmp_path / "out.onnx") == eager  # field for field


def test_unchanged_lazy_model_is_written_back_as_it_was(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), src)
    model = ModelFile.read(src, lazy=True)
    write_model(model.proto, tmp_path / "copy.onnx", source=model)
    assert onnx.load(tmp_path / "copy.onnx") == onnx.load(src)


def test_lazy_model_to_a_side_file(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), src)
    model = ModelFile.read(src, lazy=True)
    out = tmp_path / "out" / "copy.onnx"
    out.parent.mkdir()
    write_model(model.proto, out, external_data=True, source=model)
    raw = onnx.load(out, load_external_data=False)
    w = next(t for t in raw.graph.initializer if t.name == "W")
    assert locations(w)["location"] == "copy.onnx.data"
    onnx.checker.check_model(str(out), full_check=True)
    assert loaded(out) == onnx.load(src)


def test_fold_without_a_reader_refuses_weights_it_cannot_read(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), src)
    model = ModelFile.read(src, lazy=True).proto
    result = bnfold.fold(model)  # the proto alone: the weight is not a usable constant, never read from the cwd
    assert result.folds == []
    assert any("external file that was not loaded" in r.reason for r in result.refusals)


def test_the_older_spelling_proto_and_base_dir_folds_like_the_model_file(tmp_path):
    """``fold(proto, base_dir=folder)`` (what bench still passes) reads the weights from the folder."""
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), src)
    model, _ = read_model(src, lazy=True)
    result = bnfold.fold(model, in_place=True, base_dir=tmp_path)
    out = tmp_path / "out.onnx"
    write_model(result.model, out, base_dir=tmp_path)
    assert op_types(onnx.load(out)) == ["Conv"]
    assert onnx.load(out) == bnfold.fold(ModelFile.read(src, lazy=False)).model


def test_checker_still_runs_on_a_lazily_read_model(tmp_path):
    model = conv_bn_model(c_in=16, c_out=32, kernel=3)
    model.graph.node.append(helper.make_node("NoSuchOp", ["Y"], ["Z"], name="bogus"))
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    result = run("optimize", src, "--no-validate")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "invalid ONNX model" in result.stderr and "NoSuchOp" in result.stderr
    assert str(tmp_path) + "/bnfold-check" not in result.stderr  # the stand-in folder is not named


def side_file_model(tmp_path, length_delta: int = 0, offset: int = 0):
    """conv_bn_model with W in side file ``w.bin``; its recorded length/offset may be off."""
    model = conv_bn_model(c_in=8, c_out=16, kernel=3)
    w = next(t for t in model.graph.initializer if t.name == "W")
    (tmp_path / "w.bin").write_bytes(w.raw_data)
    size = len(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", str(offset)), ("length", str(size + length_delta))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    return src


@pytest.mark.parametrize("length_delta, offset, message", [
    (-4, 0, "its type and shape need 4608"),
    (0, 8, "past the end of 'w.bin'"),
])
def test_side_file_spans_are_checked(tmp_path, length_delta, offset, message):
    src = side_file_model(tmp_path, length_delta, offset)
    result = run("optimize", src, "--no-validate")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "m.folded.onnx").exists()
    with pytest.raises(BnfoldError, match="external data"):
        read_model(src, lazy=True)


def test_side_file_weights_are_read_lazily_and_copied(tmp_path):
    src = side_file_model(tmp_path)
    model = ModelFile.read(src, lazy=True)
    assert model.data_files == (tmp_path / "w.bin",)
    assert read_model(src, lazy=True)[1] == [tmp_path / "w.bin"]  # the pair, as batch and bench read it
    result = run("optimize", src, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert op_types(onnx.load(tmp_path / "out.onnx")) == ["Conv"]
    assert_equivalent(onnx.load(src), onnx.load(tmp_path / "out.onnx"))


# -- property: any mix of tensor sizes and dtypes survives lazy read + write ------------------

DTYPES = [np.float32, np.float16, np.int64, np.uint8, np.float64]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.integers(0, 700)), min_size=1, max_size=6),
       st.booleans())
def test_lazy_round_trip_property(tmp_path_factory, tensors, side_file):
    tmp_path = tmp_path_factory.mktemp("lazy")
    rng = np.random.default_rng(len(tensors))
    inits, nodes, outputs = [], [], []
    for i, (dtype, n) in enumerate(tensors):
        values = (rng.standard_normal(n) * 10).astype(dtype)
        inits.append(numpy_helper.from_array(values, f"t{i}"))
        nodes.append(helper.make_node("Identity", [f"t{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [n]))
    model = helper.make_model(helper.make_graph(nodes, "g", [], outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    lazy = ModelFile.read(src, lazy=True)
    assert sum(raw_sizes(lazy.proto).values()) <= sum(s for s in raw_sizes(model).values() if s < LAZY_BYTES)
    out = tmp_path / "out.onnx"
    write_model(lazy.proto, out, external_data=side_file, source=lazy)
    assert loaded(out) == model


def test_symlinked_model_in_another_folder(tmp_path):
    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), store / "real.onnx")
    (work / "link.onnx").symlink_to(store / "real.onnx")
    before = (store / "real.onnx").read_bytes()
    result = run("optimize", work / "link.onnx", "-o", work / "out.onnx")
    assert result.exit_code == 0, result.output
    assert op_types(onnx.load(work / "out.onnx")) == ["Conv"]
    assert_equivalent(onnx.load(store / "real.onnx"), onnx.load(work / "out.onnx"))
    assert (store / "real.onnx").read_bytes() == before
