"""Rule concat-bn: a BatchNormalization over a channel Concat of linear op outputs splits into one
fold per producer; the Concat stays, the BN goes.

Positive cases: 2 and 3 producers of mixed kinds (Conv, grouped Conv, ConvTranspose; Gemm, MatMul
with and without bias; a 3-D MatMul through a Transpose beside a Conv1d), float16, a negative axis.
Each is checked for its structure, the statistics each producer received, and its numbers under
onnxruntime at ORT_DISABLE_ALL. One refusal per precondition, with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import bnfold
from bnfold.errors import NoFold
from bnfold.graph import import_model
from bnfold.rules.concat_bn import ConcatBatchNormRule
from conftest import assert_equivalent, fold_expecting, initializer_array, node_named, op_types, refusal_for
from layout_builders import bn, conv_concat, elem, expose, rng_for, text_model, vector, weight


def folded(model: onnx.ModelProto, into: str) -> onnx.ModelProto:
    result = fold_expecting(model)
    assert [(f.rule, f.node, f.into) for f in result.folds] == [("concat-bn", "bn", into)]
    out = result.model
    assert "BatchNormalization" not in op_types(out)
    assert list(node_named(out, "cat").output) == ["Y"]
    assert_equivalent(model, out)
    assert bnfold.fold(out).folds == []
    return out


@pytest.mark.parametrize("third", [False, True], ids=["two-convs", "three-mixed"])
def test_bn_over_a_concat_of_convs_folds_a_slice_into_each(third):
    model = conv_concat(third=third)
    out = folded(model, "c1,c2,c3" if third else "c1,c2")
    assert op_types(out) == op_types(model)[:-1]
    gamma, beta, mean, var = (initializer_array(model, f"bn_{p}").astype(np.float64)
                              for p in ("scale", "bias", "mean", "var"))
    s = gamma / np.sqrt(var + 1e-5)
    w2 = initializer_array(model, "W2").astype(np.float64)
    new_w2 = initializer_array(out, node_named(out, "c2").input[1])
    np.testing.assert_allclose(new_w2, w2 * s[3:7, None, None, None], rtol=1e-6)  # channels 3..6 are c2's
    new_b2 = initializer_array(out, node_named(out, "c2").input[2])
    np.testing.assert_allclose(new_b2, (beta - mean * s)[3:7], rtol=1e-5, atol=1e-6)


def test_float16_concat_folds():
    out = folded(conv_concat(np.float16), "c1,c2,c3")
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_a_negative_axis_of_a_known_rank_is_the_channel_axis():
    folded(conv_concat(axis=-3), "c1,c2,c3")


def test_bn_over_a_concat_of_gemm_and_matmuls_folds():
    rng = rng_for(1)
    model = text_model("""
        g (float[3, 4] X) => (float[3, 9] Y) {
            [gemm] y1 = Gemm <transB = 1, beta = 0.5> (X, W1, C1)
            [mm] y2 = MatMul (X, W2)
            [mmb] m3 = MatMul (X, W3)
            [add] y3 = Add (m3, B3)
            [cat] z = Concat <axis = 1> (y1, y2, y3)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (2, 4)), "C1": vector(rng, [2]), "W2": weight(rng, (4, 3)), "W3": weight(rng, (4, 4)),
               "B3": vector(rng, [4]), **bn(rng, 9)})
    out = folded(model, "gemm,mm,mmb")
    assert op_types(out) == ["Gemm", "MatMul", "Add", "MatMul", "Add", "Concat"]  # mm got a bias Add


def test_a_3d_matmul_through_a_transpose_beside_a_conv1d_folds():
    """Sequence features [B, T, C] brought to [B, C, T] and joined with a Conv1d's channels."""
    rng = rng_for(2)
    model = text_model("""
        g (float[2, 5, 4] X, float[2, 3, 7] S) => (float[2, 8, 5] Y) {
            [mm] m = MatMul (X, W1)
            [tr] y1 = Transpose <perm = [0, 2, 1]> (m)
            [conv] y2 = Conv (S, W2, B2)
            [cat] z = Concat <axis = 1> (y1, y2)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (4, 6)), "W2": weight(rng, (2, 3, 3)), "B2": vector(rng, [2]), **bn(rng, 8)})
    out = folded(model, "mm,conv")
    assert op_types(out) == ["MatMul", "Add", "Transpose", "Conv", "Concat"]


# -- refusals --------------------------------------------------------------------------------------


def refused(model: onnx.ModelProto) -> str:
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.node, refusal.stage) == ("concat-bn", "bn", "check")
    return refusal.reason


def test_a_concat_along_another_axis_is_refused():
    rng = rng_for(3)
    model = text_model("""
        g (float[2, 4, 5, 5] X) => (float[2, 3, 6, 3] Y) {
            [c1] y1 = Conv (X, W1)
            [c2] y2 = Conv (X, W2)
            [cat] z = Concat <axis = 2> (y1, y2)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (3, 4, 3, 3)), "W2": weight(rng, (3, 4, 3, 3)), **bn(rng, 3)})
    assert refused(model) == "Concat 'cat' joins along axis 2, not along the channel axis 1 that BN normalizes"


def test_a_concat_input_that_is_not_a_linear_output_is_no_match():
    """DenseNet's running Concat (a pooled input beside Conv outputs): the BN stays, and the report
    keeps conv-bn's reason; concat-bn's match says which input failed."""
    rng = rng_for(4)
    model = text_model("""
        g (float[2, 4, 5, 5] X) => (float[2, 7, 3, 3] Y) {
            [c1] y1 = Conv (X, W1)
            [pool] y2 = MaxPool <kernel_shape = [3, 3]> (X)
            [cat] z = Concat <axis = 1> (y1, y2)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (3, 4, 3, 3)), **bn(rng, 7)})
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.stage) == ("conv-bn", "match")
    assert "comes from Concat 'cat', not a linear op" in refusal.reason
    graph = import_model(model).main
    (node,) = graph.nodes_by_op({"BatchNormalization"})
    with pytest.raises(NoFold, match="input 1 of Concat 'cat': its input 'y2' comes from MaxPool 'pool', not a "
                                     "linear op .*; every input must fold, or none can"):
        ConcatBatchNormRule().match(node, graph)


@pytest.mark.parametrize("where, reason", [
    ("y2-reader", "Conv 'c2' output 'y2' also feeds Relu 'side'"),
    ("y2-output", "Conv 'c2' output 'y2' is also a graph output"),
    ("z-reader", "Concat 'cat' output 'z' also feeds Relu 'side'"),
    ("z-output", "Concat 'cat' output 'z' is also a graph output"),
])
def test_a_value_others_see_is_refused(where, reason):
    name, how = where.split("-")
    model = expose(conv_concat(third=False), name, how, [2, 4, 3, 3] if name == "y2" else [2, 7, 3, 3])
    assert reason in refused(model)


def test_one_producer_read_twice_by_the_concat_is_refused():
    rng = rng_for(5)
    model = text_model("""
        g (float[2, 4, 5, 5] X) => (float[2, 6, 3, 3] Y) {
            [c1] y1 = Conv (X, W1)
            [cat] z = Concat <axis = 1> (y1, y1)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (3, 4, 3, 3)), **bn(rng, 6)})
    assert refused(model) == "Concat 'cat' reads 'y1' more than once: one producer cannot take two slices"


def test_a_producer_with_a_non_constant_weight_is_refused_and_none_folds():
    rng = rng_for(6)
    model = text_model("""
        g (float[3, 4] X, float[4, 5] W2) => (float[3, 9] Y) {
            [m1] y1 = MatMul (X, W1)
            [m2] y2 = MatMul (X, W2)
            [cat] z = Concat <axis = 1> (y1, y2)
            [bn] Y = BatchNormalization (z, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W1": weight(rng, (4, 4)), **bn(rng, 9)})
    assert refused(model) == "MatMul 'm2' has a non-constant weight: 'W2' is a graph input, not a constant"
