"""Folds never change a tensor's rank, shape or dtype under its old name.

Rules under test:
- a broadcast that shaped the output is kept, or the fold is refused: ``[K] @ [K, N]`` is ``[N]``,
  and a ``Mul`` by ``[1, N]`` made it ``[1, N]``; folding that Mul into the weight would give
  ``[N]``. A MatMul bias Add stays in the graph with a bias of the same shape, so a bias that
  raised the rank keeps doing so;
- a tensor whose shape or dtype changes gets a fresh name (a Gemm C of shape ``[1]`` becomes
  ``[N]``): an IR-3 graph input or a ``value_info`` entry may still declare the old one;
- ``value_info`` entries of tensors that changed or vanished are dropped, the others kept.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from conftest import assert_equivalent, check_full, initializer_names, input_names

K, N = 3, 4
F = onnx.TensorProto.FLOAT


def _const(name, shape, rng, positive=False):
    values = rng.uniform(0.5, 1.5, shape) if positive else rng.standard_normal(shape)
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _bn_params(rng, prefix="bn"):
    return [_const(f"{prefix}_scale", [N], rng, True), _const(f"{prefix}_bias", [N], rng),
            _const(f"{prefix}_mean", [N], rng), _const(f"{prefix}_var", [N], rng, True)]


def _model(nodes, inputs, outputs, inits, *, ir_version=8, opset=13, value_info=()):
    if ir_version < 4:  # every initializer is also a graph input
        inputs = inputs + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "shapes", inputs, outputs, inits, value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    check_full(model)
    return model


def _out_shape(model) -> list:
    return [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]


def matmul_1d_model(op: str, operand_shape, bias_shape=None) -> onnx.ModelProto:
    """``x[K] @ W[K, N]`` [+ bias] then ``op`` by a constant of ``operand_shape``."""
    rng = np.random.default_rng(0)
    inits = [_const("W", [K, N], rng), _const("c", operand_shape, rng, positive=True)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm")]
    y = "p"
    if bias_shape is not None:
        inits.append(_const("b", bias_shape, rng))
        nodes.append(helper.make_node("Add", ["p", "b"], ["pb"], name="bias"))
        y = "pb"
    nodes.append(helper.make_node(op, [y, "c"], ["z"], name="affine"))
    rank = max(1, len(operand_shape), len(bias_shape or []))
    out = [1] * (rank - 1) + [N]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [K])], [helper.make_tensor_value_info("z", F, out)],
                  inits)


# -- a broadcast that raised the rank ------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Mul", "Sub", "Div"])
def test_a_rank_raising_operand_after_a_1d_matmul_is_refused(op):
    model = matmul_1d_model(op, [1, N])
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    [refusal] = result.refusals
    assert refusal.node == "affine"
    assert "has more dimensions than the output (rank 1)" in refusal.reason


@pytest.mark.parametrize("shape", [[N], [1], []], ids=["N", "one", "scalar"])
def test_an_operand_that_keeps_the_rank_after_a_1d_matmul_folds(shape):
    model = matmul_1d_model("Mul", shape)
    result = bnfold.fold(model)
    assert [f.node for f in result.folds] == ["affine"]
    check_full(result.model)
    assert _out_shape(result.model) == [N]
    assert_equivalent(model, result.model)


def test_a_bias_that_raised_the_rank_keeps_its_shape_and_the_output_its_rank():
    """[K] @ [K, N] + b[1, N] is [1, N]; a Mul by [1, N] after it folds, and the Add keeps b's [1, N]."""
    model = matmul_1d_model("Mul", [1, N], bias_shape=[1, N])
    result = bnfold.fold(model)
    assert [f.node for f in result.folds] == ["affine"]
    folded = result.model
    check_full(folded)
    [bias] = [t for t in folded.graph.initializer if t.name != "W" and t.name not in ("c",)]
    assert list(bias.dims) == [1, N]
    assert _out_shape(folded) == [1, N]
    assert_equivalent(model, folded)


def test_matmul_bn_over_a_bias_that_raised_the_rank_folds():
    """[K] @ [K, N] + b[1, N] is [1, N]: BN's axis 1 is the channel axis there."""
    rng = np.random.default_rng(1)
    inits = [_const("W", [K, N], rng), _const("b", [1, N], rng), *_bn_params(rng)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm"),
             helper.make_node("Add", ["p", "b"], ["pb"], name="bias"),
             helper.make_node("BatchNormalization", ["pb", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"],
                              name="bn")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [K])], [helper.make_tensor_value_info("z", F, [1, N])],
                   inits)
    result = bnfold.fold(model)
    assert [(f.rule, f.node) for f in result.folds] == [("matmul-bn", "bn")]
    check_full(result.model)
    assert_equivalent(model, result.model)


def test_bn_after_a_1d_matmul_without_bias_is_refused():
    rng = np.random.default_rng(1)
    inits = [_const("W", [K, N], rng), *_bn_params(rng)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm"),
             helper.make_node("BatchNormalization", ["p", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"],
                              name="bn")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [1, K])], [helper.make_tensor_value_info("z", F, [1, N])],
                   inits)
    # x [1, K] is 2-D: folds (the neighbour); with x [K] the product is 1-D and BN's axis 1 does not exist
    assert [f.rule for f in bnfold.fold(model).folds] == ["matmul-bn"]
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", F, [K]))
    result = bnfold.fold(model)
    assert result.folds == []
    assert "output rank is 1" in result.refusals[0].reason


# -- a new shape gets a new name ------------------------------------------------------------------------------


def gemm_bn_model(c_shape, *, ir_version, c_value_info=False) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = [_const("B", [K, N], rng), _const("C", c_shape, rng), *_bn_params(rng)]
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="gemm"),
             helper.make_node("BatchNormalization", ["y", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"],
                              name="bn")]
    value_info = [helper.make_tensor_value_info("C", F, c_shape), helper.make_tensor_value_info("y", F, [2, N])]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [2, K])], [helper.make_tensor_value_info("z", F, [2, N])],
                  inits, ir_version=ir_version, opset=8 if ir_version < 4 else 13,
                  value_info=value_info if c_value_info else ())


@pytest.mark.parametrize("c_shape", [[1], []], ids=["one", "scalar"])
@pytest.mark.parametrize("ir_version, value_info", [(3, False), (8, True), (3, True)],
                         ids=["ir3-input", "value-info", "ir3-and-value-info"])
def test_a_gemm_c_that_becomes_a_row_gets_a_fresh_name(c_shape, ir_version, value_info):
    model = gemm_bn_model(c_shape, ir_version=ir_version, c_value_info=value_info)
    result = bnfold.fold(model)
    assert [f.rule for f in result.folds] == ["gemm-bn"]
    folded = result.model
    check_full(folded)  # the old name's declaration of [1] would fail it
    gemm = folded.graph.node[0]
    new_c = gemm.input[2]
    assert new_c != "C" and new_c not in initializer_names(model)
    assert "C" not in initializer_names(folded)
    declared = {v.name: v for v in [*folded.graph.input, *folded.graph.value_info]}
    assert "C" not in declared and "y" not in declared  # both are gone from the model
    if ir_version < 4:  # the new initializer is listed as an input, with its shape
        assert new_c in input_names(folded)
        dims = [d.dim_value for d in declared[new_c].type.tensor_type.shape.dim]
        assert dims == [N]
    assert_equivalent(model, folded)


def test_a_gemm_c_of_the_same_shape_keeps_its_name_and_its_ir3_input():
    model = gemm_bn_model([N], ir_version=3, c_value_info=True)
    folded = bnfold.fold(model).model
    check_full(folded)
    assert folded.graph.node[0].input[2] == "C"
    assert "C" in input_names(folded)
    assert "C" in {v.name for v in folded.graph.value_info}  # still true: same dtype and shape
    assert_equivalent(model, folded)


def test_value_info_of_tensors_that_stay_is_kept():
    rng = np.random.default_rng(3)
    inits = [_const("W", [K, N], rng), *_bn_params(rng)]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["p"], name="mm"),
             helper.make_node("BatchNormalization", ["p", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"],
                              name="bn")]
    value_info = [helper.make_tensor_value_info("r", F, [2, K]), helper.make_tensor_value_info("p", F, [2, N])]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [2, K])],
                   [helper.make_tensor_value_info("z", F, [2, N])], inits, value_info=value_info)
    folded = bnfold.fold(model).model
    check_full(folded)
    assert [v.name for v in folded.graph.value_info] == ["r"]  # p vanished with the BN, r is untouched
    assert folded.graph.value_info[0] == model.graph.value_info[0]
