"""However a parameter is stored, the folded tensors keep the weight's dtype and the values are exact.

Storage variants: a dense initializer, a ``sparse_initializer`` (indices ``[NNZ]`` or ``[NNZ, rank]``,
values in raw_data or in typed fields), a Constant node's ``value`` / ``sparse_value`` attribute,
and external data. graphsurgeon's own sparse reader ignores raw_data and returns float64
zeros: a float32 Conv came out with DOUBLE weights that onnxruntime refused to load.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from bnfold.constants import sparse_to_dense
from bnfold.errors import NoFold
from bnfold.tolerances import tolerance_for
from conftest import check_full, run_ort

C = 4
STORAGES = ["dense", "sparse-flat", "sparse-coords", "sparse-typed-fields", "constant", "constant-sparse"]


def _sparse(name: str, dense: np.ndarray, layout: str) -> onnx.SparseTensorProto:
    flat = dense.ravel()
    nonzero = np.flatnonzero(flat)
    values = numpy_helper.from_array(flat[nonzero], name)
    if layout == "coords":
        indices = numpy_helper.from_array(np.stack(np.unravel_index(nonzero, dense.shape), axis=1).astype(np.int64),
                                          f"{name}_indices")
    else:
        indices = numpy_helper.from_array(nonzero.astype(np.int64), f"{name}_indices")
    if layout == "typed-fields":  # values and indices in float_data / int64_data instead of raw_data
        values = helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(flat.dtype), [nonzero.size],
                                    flat[nonzero].tolist())
        indices = helper.make_tensor(f"{name}_indices", onnx.TensorProto.INT64, [nonzero.size], nonzero.tolist())
    return helper.make_sparse_tensor(values, indices, list(dense.shape))


def conv_bn_with_weight_stored(storage: str, dtype=np.float32) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((C, 2, 3, 3)) * 0.5).astype(dtype)
    weight[np.abs(weight) < 0.3] = 0  # sparse enough to be worth storing so
    params = {"g": rng.uniform(0.5, 1.5, C), "b": rng.standard_normal(C), "m": rng.standard_normal(C),
              "v": rng.uniform(0.5, 2.0, C)}
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in params.items()]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
             helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn")]
    sparse = []
    if storage == "dense":
        inits.append(numpy_helper.from_array(weight, "W"))
    elif storage.startswith("sparse-"):
        sparse.append(_sparse("W", weight, storage.removeprefix("sparse-")))
    elif storage == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")))
    elif storage == "constant-sparse":
        nodes.insert(0, helper.make_node("Constant", [], ["W"], sparse_value=_sparse("W", weight, "flat")))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(nodes, "storage", [helper.make_tensor_value_info("x", elem, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("z", elem, [1, C, 3, 3])], inits,
                              sparse_initializer=sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)  # the full check's type inference does not take sparse Conv inputs
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("storage", STORAGES)
def test_folded_tensors_keep_the_weight_dtype_whatever_the_storage(storage, dtype):
    model = conv_bn_with_weight_stored(storage, dtype)
    result = bnfold.fold(model)
    assert [f.rule for f in result.folds] == ["conv-bn"]
    folded = result.model
    check_full(folded)  # dense, so the full check applies
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    tensors = {t.name: t for t in folded.graph.initializer}
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert tensors[conv.input[1]].data_type == elem and tensors[conv.input[2]].data_type == elem
    assert len(folded.graph.sparse_initializer) == 0  # the sparse W nothing reads any more is gone
    assert [n.op_type for n in folded.graph.node] == ["Conv"]  # the Constant feeding W too
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(dtype)}
    expected, got = run_ort(model, feeds)["z"], run_ort(folded, feeds)["z"]
    tol = tolerance_for(expected.dtype)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), atol=tol.atol, rtol=tol.rtol)


def test_a_sparse_weight_read_by_another_node_stays_sparse():
    model = conv_bn_with_weight_stored("sparse-flat")
    model.graph.node.append(helper.make_node("Conv", ["x", "W"], ["other"], name="other_conv"))
    model.graph.output.append(helper.make_tensor_value_info("other", onnx.TensorProto.FLOAT, [1, C, 3, 3]))
    folded = bnfold.fold(model).model
    assert [s.values.name for s in folded.graph.sparse_initializer] == ["W"]
    assert folded.graph.sparse_initializer[0] == model.graph.sparse_initializer[0]
    assert next(n for n in folded.graph.node if n.name == "conv").input[1] != "W"
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    expected, got = run_ort(model, feeds), run_ort(folded, feeds)
    np.testing.assert_allclose(got["other"], expected["other"], rtol=0, atol=0)
    np.testing.assert_allclose(got["z"], expected["z"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layout", ["flat", "coords", "typed-fields"])
def test_sparse_to_dense_is_exact(layout):
    dense = np.arange(24, dtype=np.float32).reshape(2, 3, 4) % 5
    assert np.array_equal(sparse_to_dense(_sparse("t", dense, layout)), dense)
    assert sparse_to_dense(_sparse("t", dense, layout)).dtype == np.float32


def test_sparse_indices_out_of_range_are_refused():
    sparse = _sparse("t", np.ones((2, 2), np.float32), "flat")
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0, 1, 2, 9], np.int64), "t_indices"))
    with pytest.raises(NoFold, match="indices out of range"):
        sparse_to_dense(sparse)
