"""The BatchNormalization → linear op rule ("bn-linear"): the math, then end to end through ``bnfold.fold``.

    L(s * x + t) = L'(x)   with the scale in the weight's INPUT-channel axis and L(t) - L(0) in the bias

The pure functions (``bnfold.foldmath``) are checked on known values and, with hypothesis, against
the unfolded computation in float64 (a numpy Conv, Gemm and MatMul). Every variant that folds is
then checked twice: the exact structure of the result and its numbers (onnxruntime on both models,
within ``bnfold.tolerances``). Every precondition has a negative test: nothing folds, the input
comes back untouched, and the refusal says why. The rule is not in DEFAULT_RULES yet: it is passed
explicitly, after the default rules.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import bnfold
from bn_linear_builders import (
    GEMM_C_SHAPES, Parts, bn, bn_conv_model, bn_gemm_model, bn_matmul_model, conv, gemm, matmul,
)
from bnfold.foldmath import (
    bn_affine,
    conv_input_channels,
    fold_affine_into_conv_input,
    fold_affine_into_gemm_input,
    fold_affine_into_matmul_input,
)
from bnfold.rules import DEFAULT_RULES, Fold
from bnfold.tolerances import tolerance_for
from conftest import (
    assert_equivalent,
    check_full,
    initializer,
    initializer_array,
    initializer_names,
    node_named,
    op_types,
    random_feeds,
    run_ort,
)

RULES = DEFAULT_RULES


def fold(model: onnx.ModelProto, folds: int = 1) -> bnfold.FoldResult:
    """Fold with the default rules; assert ``folds`` folds, no BN refused, a valid model.

    (An Add that bn-linear leaves after a MatMul may be reported by the affine-linear rule.)"""
    result = bnfold.fold(model, rules=RULES)
    assert [r.reason for r in result.refusals if r.op == "BatchNormalization"] == []
    assert len(result.folds) == folds, result.folds
    check_full(result.model)
    return result


def refusal(model: onnx.ModelProto) -> str:
    """Fold; assert nothing folded (the very input comes back) and bn-linear refused "bn"; return the reason."""
    result = bnfold.fold(model, rules=RULES)
    assert result.folds == []
    assert result.model is model
    assert len(result.refusals) == 1, result.refusals
    (r,) = result.refusals
    assert (r.rule, r.node, r.stage) == ("bn-linear", "bn", "check"), r
    return r.reason


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def affine64(model: onnx.ModelProto, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (initializer_array(model, f"bn_{p}") for p in ("scale", "bias", "mean", "var"))
    return bn_affine(gamma, beta, mean, var, eps)


# -- reference computations in float64 (independent of bnfold) ---------------------------------------


def conv_nd(x, w, b, group=1, strides=None, dilations=None):
    """Unpadded N-d Conv in float64: ``x [N, C, *S]``, ``w [M, C/g, *K]``."""
    rank = x.ndim - 2
    strides, dilations = strides or [1] * rank, dilations or [1] * rank
    m, cpg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    out_shape = [(x.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(rank)]
    y = np.zeros((x.shape[0], m, *out_shape))
    mpg = m // group
    for g in range(group):
        xg, wg = x[:, g * cpg:(g + 1) * cpg], w[g * mpg:(g + 1) * mpg]
        for k in np.ndindex(*kernel):
            window = tuple(slice(k[i] * dilations[i], k[i] * dilations[i] + (out_shape[i] - 1) * strides[i] + 1,
                                 strides[i]) for i in range(rank))
            y[:, g * mpg:(g + 1) * mpg] += np.einsum("nc...,mc->nm...", xg[(slice(None), slice(None), *window)],
                                                      wg[(slice(None), slice(None), *k)])
    return y + (0.0 if b is None else b.reshape(1, m, *[1] * rank))


def per_channel_affine(x, s, t):
    shape = [1, -1] + [1] * (x.ndim - 2)
    return x * s.reshape(shape) + t.reshape(shape)


def close(folded, unfolded, magnitude):
    """Equal up to a few float64 ulps of the largest term summed."""
    assert np.all(np.abs(folded - unfolded) <= 1e-12 * (magnitude + 1.0))


# == the math =========================================================================================


def test_conv_input_channels_follow_the_groups():
    # M=4, C=4, group 2: outputs 0-1 read inputs 0-1, outputs 2-3 read inputs 2-3
    assert conv_input_channels(4, 2, 2).tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert conv_input_channels(3, 2, 1).tolist() == [[0, 1]] * 3
    assert conv_input_channels(4, 1, 4).tolist() == [[0], [1], [2], [3]]  # depthwise
    assert conv_input_channels(4, 1, 2).tolist() == [[0], [0], [1], [1]]  # depthwise, multiplier 2
    with pytest.raises(ValueError, match="not divisible by group 2"):
        conv_input_channels(3, 1, 2)


def test_conv_input_fold_of_known_values():
    w = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # [M=2, C/g=1, k=2], group 2: output m reads input m
    w_new, b_new = fold_affine_into_conv_input(w, np.array([10.0, 20.0]), np.array([2.0, -1.0]),
                                               np.array([0.5, 3.0]), group=2)
    assert w_new.dtype == b_new.dtype == np.float64
    np.testing.assert_array_equal(w_new, [[[2.0, 4.0]], [[-3.0, -4.0]]])
    np.testing.assert_array_equal(b_new, [10.0 + 0.5 * 3.0, 20.0 + 3.0 * 7.0])


def test_conv_input_fold_without_bias_gives_the_shift_as_bias():
    w = np.ones((3, 2, 1))
    _, b_new = fold_affine_into_conv_input(w, None, np.ones(2), np.array([1.0, 2.0]), group=1)
    np.testing.assert_array_equal(b_new, [3.0, 3.0, 3.0])


def test_conv_input_fold_refuses_a_wrong_channel_count():
    with pytest.raises(ValueError, match="3 scales"):
        fold_affine_into_conv_input(np.ones((2, 2, 1)), None, np.ones(3), np.ones(3), group=1)


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_input_fold_of_known_values(trans_b):
    b = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [K=2, N=3]
    s, t = np.array([2.0, -1.0]), np.array([1.0, 0.5])
    b_new, c_new = fold_affine_into_gemm_input(b.T if trans_b else b, np.array([1.0, 1.0, 1.0]), s, t,
                                               alpha=2.0, beta=3.0, trans_b=trans_b)
    expected_b = np.array([[2.0, 4.0, 6.0], [-4.0, -5.0, -6.0]])
    np.testing.assert_array_equal(b_new, expected_b.T if trans_b else expected_b)
    np.testing.assert_array_equal(c_new, 3.0 + 2.0 * np.array([3.0, 4.5, 6.0]))  # beta C + alpha t B


@pytest.mark.parametrize("c, shape", [(None, (3,)), (np.float64(1.0), (3,)), (np.ones(1), (3,)), (np.ones(3), (3,)),
                                      (np.ones((1, 3)), (1, 3)), (np.ones((4, 1)), (4, 3)), (np.ones((4, 3)), (4, 3))],
                         ids=["none", "scalar", "one", "vector", "row", "column", "full"])
def test_gemm_input_fold_broadcasts_c(c, shape):
    _, c_new = fold_affine_into_gemm_input(np.ones((2, 3)), c, np.ones(2), np.ones(2), 1.0, 1.0, False)
    assert c_new.shape == shape


def test_gemm_input_fold_refuses_a_c_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        fold_affine_into_gemm_input(np.ones((2, 3)), np.ones((4, 2)), np.ones(2), np.ones(2), 1.0, 1.0, False)


def test_matmul_input_fold_of_known_values():
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [K=3, N=2]
    w_new, shift = fold_affine_into_matmul_input(w, np.array([1.0, 2.0, -1.0]), np.array([1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(w_new, [[1.0, 2.0], [6.0, 8.0], [-5.0, -6.0]])
    np.testing.assert_array_equal(shift, [11.0, 14.0])


# -- properties: folded = unfolded on random inputs, in float64 ----------------------------------------

finite = dict(allow_nan=False, allow_infinity=False)


def stats(draw, rng, c):
    """(s, t) of a random BN with statistics from wide ranges."""
    gamma = rng.uniform(1e-2, 1e2, c) * rng.choice([-1.0, 1.0], c)
    beta, mean = rng.uniform(-1e2, 1e2, c), rng.uniform(-1e2, 1e2, c)
    var = 10.0 ** rng.uniform(-4, 3, c)
    return bn_affine(gamma, beta, mean, var, draw(st.sampled_from([0.0, 1e-5])))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_conv_input_fold_equals_conv_of_the_affine_map(data):
    draw = data.draw
    rank, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    cpg, mpg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    strides = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    dilations = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    spatial = [(k - 1) * d + 1 + draw(st.integers(0, 3)) for k, d in zip(kernel, dilations)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c, m = cpg * group, mpg * group
    w = rng.standard_normal((m, cpg, *kernel))
    b = rng.standard_normal(m) if draw(st.booleans()) else None
    x = rng.standard_normal((2, c, *spatial))
    s, t = stats(draw, rng, c)

    unfolded = conv_nd(per_channel_affine(x, s, t), w, b, group, strides, dilations)
    w_new, b_new = fold_affine_into_conv_input(w, b, s, t, group)
    folded = conv_nd(x, w_new, b_new, group, strides, dilations)
    magnitude = conv_nd(np.abs(per_channel_affine(x, s, np.abs(t))) + np.abs(x * s.reshape([1, -1] + [1] * rank)),
                        np.abs(w), None if b is None else np.abs(b), group, strides, dilations)
    close(folded, unfolded, magnitude)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_gemm_input_fold_equals_gemm_of_the_affine_map(data):
    draw = data.draw
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    trans_b = draw(st.booleans())
    alpha, beta = draw(st.floats(-3, 3, **finite)), draw(st.floats(-3, 3, **finite))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = GEMM_C_SHAPES[draw(st.sampled_from(sorted(GEMM_C_SHAPES)))]
    c = None if shape is None else rng.standard_normal([{"m": m, "n": n}.get(d, d) for d in shape])
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    a = rng.standard_normal((m, k))
    s, t = stats(draw, rng, k)

    b_eff = b.T if trans_b else b
    unfolded = alpha * (a * s + t) @ b_eff + (0.0 if c is None else beta * c)
    b_new, c_new = fold_affine_into_gemm_input(b, c, s, t, alpha, beta, trans_b)
    folded = alpha * a @ (b_new.T if trans_b else b_new) + c_new  # beta is 1 after the fold
    assert folded.shape == np.broadcast_shapes(unfolded.shape, (m, n))
    magnitude = abs(alpha) * (np.abs(a * s) + np.abs(t)) @ np.abs(b_eff) + (0.0 if c is None else abs(beta) * np.abs(c))
    close(folded, unfolded, magnitude)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matmul_input_fold_equals_matmul_of_the_affine_map(data):
    draw = data.draw
    rows, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w, a = rng.standard_normal((k, n)), rng.standard_normal((rows, k))
    s, t = stats(draw, rng, k)
    w_new, shift = fold_affine_into_matmul_input(w, s, t)
    close(a @ w_new + shift, (a * s + t) @ w, (np.abs(a * s) + np.abs(t)) @ np.abs(w))


# == end to end: Conv =====================================================================================

CONV_VARIANTS = {
    "rank1": dict(rank=1),
    "rank2": dict(rank=2),
    "rank3": dict(rank=3, spatial=5),
    "group2": dict(group=2, c_in=4, c_out=6),
    "depthwise": dict(group=4, c_in=4, c_out=4),
    "depthwise-multiplier-2": dict(group=4, c_in=4, c_out=8),
    "rank1-depthwise": dict(rank=1, group=8, c_in=8, c_out=8),
    "rank3-group2": dict(rank=3, group=2, c_in=4, c_out=4, spatial=5),
    "pointwise": dict(kernel=1),
    "strides": dict(strides=[2, 1]),
    "dilations": dict(dilations=[2, 1]),
    "explicit-zero-pads": dict(pads=0),
    "auto_pad-VALID": dict(auto_pad="VALID", strides=2),
    "auto_pad-SAME_UPPER-1x1": dict(auto_pad="SAME_UPPER", kernel=1, strides=2),  # SAME pads nothing with k=1
    "rank3-everything": dict(rank=3, spatial=7, group=2, c_in=4, c_out=6, strides=[1, 2, 1], dilations=[2, 1, 1]),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("variant", CONV_VARIANTS.values(), ids=CONV_VARIANTS.keys())
def test_conv_variant_absorbs_the_bn_before_it(variant, bias):
    model = bn_conv_model(bias=bias, **variant)
    result = fold(model)
    folded = result.model

    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "conv", "Conv")]
    assert op_types(folded) == ["Conv"]
    conv_node = node_named(folded, "conv")
    assert attrs(conv_node) == attrs(node_named(model, "conv"))
    assert list(conv_node.input[:2]) == ["X", "conv_W"]  # reads BN's input; a private weight keeps its name
    assert list(conv_node.output) == ["Y"]
    bias_name = conv_node.input[2]
    if bias:
        assert bias_name == "conv_B"
    else:  # a new bias of the weight's dtype, named like nothing in the original
        assert bias_name not in initializer_names(model) | {"X", "Y", "bn_out"}
    assert initializer_names(folded) == {"conv_W", bias_name}
    c_out = variant.get("c_out", 6)
    assert list(initializer(folded, bias_name).dims) == [c_out]
    assert initializer(folded, bias_name).data_type == onnx.TensorProto.FLOAT
    assert_equivalent(model, folded)


def test_conv_tensors_are_the_float64_fold_cast_once():
    """W'[m, i] = W[m, i] * s[c], b'[m] = b[m] + sum W[m, i, k] t[c], c = (m // (M/g)) * (C/g) + i."""
    model = bn_conv_model(group=2, c_in=4, c_out=6)
    folded = fold(model).model
    s, t = affine64(model)
    w = initializer_array(model, "conv_W").astype(np.float64)  # [6, 2, 3, 3], groups of 3 outputs
    b = initializer_array(model, "conv_B").astype(np.float64)
    expected_w, expected_b = np.empty_like(w), b.copy()
    for m in range(6):
        for i in range(2):
            c = (m // 3) * 2 + i
            expected_w[m, i] = w[m, i] * s[c]
            expected_b[m] += w[m, i].sum() * t[c]
    np.testing.assert_array_equal(initializer_array(folded, "conv_W"), expected_w.astype(np.float32))
    np.testing.assert_allclose(initializer_array(folded, "conv_B"), expected_b.astype(np.float32), rtol=1e-6)


def test_bn_feeding_two_convs_folds_into_both_with_their_own_weights():
    model = bn_conv_model(convs=2)
    result = fold(model)
    folded = result.model
    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "conv,conv2", "Conv,Conv")]
    assert [n.name for n in folded.graph.node] == ["conv", "conv2"]
    assert list(node_named(folded, "conv").input) == ["X", "conv_W", "conv_B"]
    assert list(node_named(folded, "conv2").input) == ["X", "conv2_W", "conv2_B"]
    assert initializer_names(folded) == {"conv_W", "conv_B", "conv2_W", "conv2_B"}
    assert_equivalent(model, folded)


def test_bn_feeding_two_convs_that_share_a_weight_folds_both():
    """Both readers fold the same W with the same s: one gets a fresh tensor, the other keeps the name."""
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.output(conv(p, y, "conv2", c_in=4, c_out=6, weight="conv_W", bias=False, out="Y2"), 4)
    model = p.model()
    folded = fold(model).model
    conv_node, conv2_node = node_named(folded, "conv"), node_named(folded, "conv2")
    assert conv_node.input[1] not in initializer_names(model)  # W had two readers: a fresh copy
    assert conv2_node.input[1] == "conv_W"  # then only one: it keeps the name
    assert conv2_node.input[2] not in initializer_names(model)  # the shift needs a bias
    assert initializer_names(folded) == {"conv_W", "conv_B", conv_node.input[1], conv2_node.input[2]}
    assert_equivalent(model, folded)


def test_a_weight_shared_with_an_unrelated_conv_is_copied_and_the_other_conv_keeps_it():
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.output(conv(p, p.input("Z", [2, 4, 7, 7]), "other", c_in=4, c_out=6, weight="conv_W", bias=False, out="Y2"), 4)
    model = p.model()
    folded = fold(model).model
    new_weight = node_named(folded, "conv").input[1]
    assert new_weight not in initializer_names(model)
    assert list(node_named(folded, "other").input) == ["Z", "conv_W"]
    assert initializer(folded, "conv_W") == initializer(model, "conv_W")  # byte for byte
    assert initializer_names(folded) == {new_weight, "conv_W", "conv_B"}
    got = assert_equivalent(model, folded)
    np.testing.assert_array_equal(got["Y2"], run_ort(model, random_feeds(model))["Y2"])


def test_bn_after_a_relu_folds_into_the_conv_after_it():
    p = Parts()
    p.node("Relu", [p.input("X", [2, 4, 7, 7])], ["relu_out"], "relu")
    p.output(conv(p, bn(p, "relu_out", 4), "conv", c_in=4, c_out=6, out="Y"), 4)
    model = p.model()
    folded = fold(model).model
    assert op_types(folded) == ["Relu", "Conv"]
    assert node_named(folded, "conv").input[0] == "relu_out"
    assert_equivalent(model, folded)


def test_bn_before_and_bn_after_a_conv_both_fold():
    """BN → Conv → BN: bn-linear takes the first, conv-bn the second, in one pass."""
    p = Parts()
    y = conv(p, bn(p, p.input("X", [2, 4, 7, 7]), 4), "conv", c_in=4, c_out=6)
    p.output(bn(p, y, 6, name="bn2", out="Y"), 4)
    model = p.model()
    result = fold(model, folds=2)
    assert [(f.rule, f.node, f.into) for f in result.folds] == [("bn-linear", "bn", "conv"), ("conv-bn", "bn2", "conv")]
    assert op_types(result.model) == ["Conv"]
    assert list(node_named(result.model, "conv").input[:1]) == ["X"]
    assert list(node_named(result.model, "conv").output) == ["Y"]
    assert_equivalent(model, result.model)


def test_bn_after_a_conv_that_conv_bn_refuses_folds_forward():
    """conv-bn refuses (conv0's output is also a graph output); bn-linear then folds the BN into the next Conv."""
    p = Parts()
    x = conv(p, p.input("X", [2, 4, 9, 9]), "conv0", c_in=4, c_out=4)
    p.output(x, 4)
    p.output(conv(p, bn(p, x, 4), "conv", c_in=4, c_out=6, out="Y"), 4)
    model = p.model()
    result = fold(model)
    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "conv", "Conv")]
    assert list(node_named(result.model, "conv").input[:1]) == ["conv0_out"]
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("opset", [9, 13])
def test_bn_declaring_empty_optional_outputs_folds(opset):
    model = bn_conv_model(opset=opset)
    node_named(model, "bn").output.extend([""] * 4)
    check_full(model)
    folded = fold(model).model
    assert op_types(folded) == ["Conv"]
    assert_equivalent(model, folded)


def test_bn_and_conv_inside_a_subgraph_fold_there():
    """Each If branch runs its own BN → Conv on the outer X (statistics and weights are outer constants)."""
    p = Parts()
    x = p.input("X", [2, 4, 7, 7])
    p.output(conv(p, bn(p, x, 4), "conv", c_in=4, c_out=6, out="Y"), 4)
    branches = {}
    for name in ("then", "else"):
        q = Parts(seed=len(name))
        z = conv(q, bn(q, x, 4, name=f"{name}_bn"), f"{name}_conv", c_in=4, c_out=6)
        p.initializers += q.initializers
        branches[f"{name}_branch"] = helper.make_graph(
            q.nodes, name, [], [helper.make_tensor_value_info(z, onnx.TensorProto.FLOAT, [None] * 4)])
    p.inputs.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    p.node("If", ["cond"], ["if_out"], "if", **branches)
    p.output("if_out", 4)
    model = p.model()
    result = fold(model, folds=3)
    assert {(f.node, f.graph) for f in result.folds} == {
        ("bn", "main"), ("then_bn", "if/then_branch"), ("else_bn", "if/else_branch")}
    assert op_types(result.model) == ["Conv", "If"]
    tol = tolerance_for(np.float32)
    for cond in (True, False):
        feeds = {**random_feeds(model), "cond": np.array(cond)}
        expected, got = run_ort(model, feeds), run_ort(result.model, feeds)
        for name in ("Y", "if_out"):
            np.testing.assert_allclose(got[name], expected[name], atol=tol.atol, rtol=tol.rtol)


def test_float16_conv_folds():
    model = bn_conv_model(dtype=np.float16)
    folded = fold(model).model
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_equivalent(model, folded)


def test_conv_bn_after_wins_over_bn_linear():
    """Conv → BN → Conv: DEFAULT_RULES run first, so the BN goes into the Conv before it."""
    p = Parts()
    x = conv(p, p.input("X", [2, 4, 9, 9]), "conv0", c_in=4, c_out=4)
    p.output(conv(p, bn(p, x, 4), "conv", c_in=4, c_out=6, out="Y"), 4)
    model = p.model()
    result = fold(model)
    assert result.folds == [Fold("conv-bn", "bn", "BatchNormalization", "conv0", "Conv")]
    assert [n.name for n in result.model.graph.node] == ["conv0", "conv"]
    assert list(node_named(result.model, "conv0").output) == ["bn_out"]
    assert list(node_named(result.model, "conv").input) == ["bn_out", "conv_W", "conv_B"]  # untouched
    assert_equivalent(model, result.model)


# == end to end: Gemm ======================================================================================

FOLDED_C_SHAPES = {"none": [4], "scalar": [4], "one": [4], "vector": [4], "row": [1, 4], "column": [3, 4],
                   "full": [3, 4]}


@pytest.mark.parametrize("alpha, beta", [(None, None), (0.5, 2.0)], ids=["alpha-beta-1", "alpha-beta-set"])
@pytest.mark.parametrize("c", GEMM_C_SHAPES)
@pytest.mark.parametrize("trans_b", [0, 1], ids=["B", "B^T"])
def test_gemm_variant_absorbs_the_bn_before_it(trans_b, c, alpha, beta):
    model = bn_gemm_model(m=3, k=5, n=4, trans_b=trans_b, c=c, alpha=alpha, beta=beta)
    result = fold(model)
    folded = result.model

    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "gemm", "Gemm")]
    assert op_types(folded) == ["Gemm"]
    node = node_named(folded, "gemm")
    assert list(node.input[:2]) == ["X", "gemm_B"]
    assert list(node.output) == ["Y"]
    expected_attrs = attrs(node_named(model, "gemm"))
    if beta is not None:
        expected_attrs["beta"] = 1.0  # folded into the new C
    assert attrs(node) == expected_attrs
    c_name = node.input[2]
    kept_shape = c != "none" and [{"n": 4, "m": 3}.get(d, d) for d in GEMM_C_SHAPES[c]] == FOLDED_C_SHAPES[c]
    # C keeps its name only with its shape (an IR-3 input or value_info may declare the old one)
    assert c_name == "gemm_C" if kept_shape else c_name not in initializer_names(model)
    assert initializer_names(folded) == {"gemm_B", c_name}
    assert list(initializer(folded, c_name).dims) == FOLDED_C_SHAPES[c]
    assert_equivalent(model, folded)


def test_gemm_tensors_are_the_float64_fold_cast_once():
    model = bn_gemm_model(trans_b=1, alpha=0.5, beta=2.0, c="vector")
    folded = fold(model).model
    s, t = affine64(model)
    b = initializer_array(model, "gemm_B").astype(np.float64)  # [N, K]
    c = initializer_array(model, "gemm_C").astype(np.float64)
    np.testing.assert_array_equal(initializer_array(folded, "gemm_B"), (b * s).astype(np.float32))
    np.testing.assert_allclose(initializer_array(folded, "gemm_C"), (2.0 * c + 0.5 * b @ t).astype(np.float32),
                               rtol=1e-6)


# == end to end: MatMul ====================================================================================


@pytest.mark.parametrize("bias, dims", [("vector", [4]), ("row", [1, 4]), ("scalar", [4])])
def test_matmul_with_a_bias_add_takes_the_shift_into_that_add(bias, dims):
    model = bn_matmul_model(k=5, n=4, bias=bias)
    result = fold(model)
    folded = result.model
    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "mm", "MatMul")]
    # the bias keeps its name only with its shape (a scalar becomes [C]: a new name)
    b_name = "mm_b" if bias != "scalar" else folded.graph.node[1].input[1]
    assert b_name == "mm_b" or b_name not in initializer_names(model)
    assert [(n.name, list(n.input), list(n.output)) for n in folded.graph.node] == [
        ("mm", ["X", "mm_W"], ["mm_product"]), ("mm_add", ["mm_product", b_name], ["Y"])]
    assert initializer_names(folded) == {"mm_W", b_name}
    assert list(initializer(folded, b_name).dims) == dims
    s, t = affine64(model)
    w = initializer_array(model, "mm_W").astype(np.float64)
    np.testing.assert_array_equal(initializer_array(folded, "mm_W"), (w * s[:, None]).astype(np.float32))
    b = initializer_array(model, "mm_b").astype(np.float64)
    np.testing.assert_allclose(initializer_array(folded, b_name), np.reshape(b + t @ w, dims).astype(np.float32),
                               rtol=1e-6)
    assert_equivalent(model, folded)


def test_matmul_without_bias_gets_an_add_that_keeps_the_output_name():
    model = bn_matmul_model(bias=None)
    folded = fold(model).model
    mm, add = folded.graph.node
    assert (mm.name, mm.op_type, add.op_type) == ("mm", "MatMul", "Add")
    assert list(mm.input) == ["X", "mm_W"]
    assert mm.output[0] not in {"Y", "X", "bn_out"}
    assert list(add.input[:1]) == [mm.output[0]] and list(add.output) == ["Y"]
    assert initializer_names(folded) == {"mm_W", add.input[1]}
    assert list(initializer(folded, add.input[1]).dims) == [4]
    assert_equivalent(model, folded)


def test_matmul_whose_add_is_not_per_channel_gets_an_add_of_its_own():
    model = bn_matmul_model(batch=2, bias="full")  # the Add adds a [2, n] matrix: not a bias to merge into
    folded = fold(model).model
    assert op_types(folded) == ["MatMul", "Add", "Add"]
    mm, shift_add, old_add = folded.graph.node
    assert list(old_add.input) == ["mm_product", "mm_b"] and list(shift_add.output) == ["mm_product"]
    assert initializer(folded, "mm_b") == initializer(model, "mm_b")
    assert_equivalent(model, folded)


def test_matmul_output_read_twice_gets_an_add_of_its_own():
    """The MatMul's product changes (it lacks t·W): every reader must get the old value back."""
    model = bn_matmul_model(bias="vector")
    model.graph.output.append(helper.make_tensor_value_info("mm_product", onnx.TensorProto.FLOAT, [None, None]))
    folded = fold(model).model
    assert op_types(folded) == ["MatMul", "Add", "Add"]
    assert initializer(folded, "mm_b") == initializer(model, "mm_b")
    assert_equivalent(model, folded)


def test_bn_feeding_a_gemm_and_a_matmul_folds_into_both():
    p = Parts()
    y = bn(p, p.input("X", [3, 5]), 5)
    p.output(gemm(p, y, "gemm", m=3, k=5, n=4, out="Y"), 2)
    p.output(matmul(p, y, "mm", k=5, n=2, out="Y2"), 2)
    model = p.model()
    result = fold(model)
    assert result.folds == [Fold("bn-linear", "bn", "BatchNormalization", "gemm,mm", "Gemm,MatMul")]
    assert op_types(result.model) == ["Gemm", "MatMul", "Add"]
    assert_equivalent(model, result.model)


# -- property: bnfold.fold on random BN → Conv models, checked by onnxruntime --------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fold_is_equivalent_on_random_bn_conv_models(data):
    draw = data.draw
    rank, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    dilations = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    case = dict(rank=rank, group=group, c_in=group * draw(st.integers(1, 3)), c_out=group * draw(st.integers(1, 3)),
                kernel=kernel, strides=draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)),
                dilations=dilations, spatial=max(dilations) * (kernel - 1) + 1 + draw(st.integers(0, 3)),
                bias=draw(st.booleans()), auto_pad=draw(st.sampled_from([None, "VALID"])),
                convs=draw(st.integers(1, 2)), seed=draw(st.integers(0, 2**16)))
    model = bn_conv_model(**case)
    result = fold(model)
    assert op_types(result.model) == ["Conv"] * case["convs"]
    assert_equivalent(model, result.model)


# == refusals: one per precondition =========================================================================


def test_padded_conv_is_refused_naming_the_padding():
    assert refusal(bn_conv_model(pads=[0, 1, 0, 0])) == (
        "padding [0, 1, 0, 0] on Conv 'conv' makes a preceding BN unfoldable: the padded border would see "
        "BN's shift where the original saw zeros")


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_same_conv_is_refused(auto_pad):
    assert refusal(bn_conv_model(auto_pad=auto_pad)).startswith(
        f"padding auto_pad={auto_pad} on Conv 'conv' (kernel [3, 3]) makes a preceding BN unfoldable")


def test_one_padded_reader_keeps_the_bn_for_all():
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.output(conv(p, y, "conv2", c_in=4, c_out=6, pads=1, out="Y2"), 4)
    assert refusal(p.model()).startswith("padding [1, 1, 1, 1] on Conv 'conv2'")


def test_bn_output_also_feeding_a_relu_is_refused():
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.node("Relu", [y], ["R"], "relu")
    p.output("R", 4)
    assert refusal(p.model()) == (
        "its output 'bn_out' also feeds Relu 'relu', which is not a Conv, Gemm or MatMul: it needs BN's values")


def test_bn_output_used_as_a_conv_weight_is_refused():
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 3, 3]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.output(conv(p, p.input("Z", [1, 4, 5, 5]), "conv2", c_in=4, c_out=2, weight=y, bias=False, out="Y2"), 4)
    assert refusal(p.model()) == ("its output 'bn_out' is input 1 of Conv 'conv2': it folds only into a data input "
                                  "(input 0), never into a weight or bias")


def test_bn_output_that_is_a_graph_output_is_refused():
    model = bn_conv_model()
    model.graph.output.append(helper.make_tensor_value_info("bn_out", onnx.TensorProto.FLOAT, [2, 4, 7, 7]))
    assert refusal(model) == "its output 'bn_out' is also a graph output, which must keep BN's values"


def with_if_reading_bn_out(model: onnx.ModelProto, op: str, inputs: list[str]) -> onnx.ModelProto:
    """Add ``if_out = If(cond)`` whose branches each run ``op(*inputs)``: a node in a subgraph reads ``bn_out``."""
    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node(op, inputs, [f"{name}_z"], name=f"{name}_{op.lower()}")
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_z", onnx.TensorProto.FLOAT,
                                                                                  [None] * 4)])
    model.graph.input.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["cond"], ["if_out"], name="if",
                                             then_branch=branch("then"), else_branch=branch("else")))
    model.graph.output.append(helper.make_tensor_value_info("if_out", onnx.TensorProto.FLOAT, [None] * 4))
    check_full(model)
    return model


def test_bn_output_read_by_a_conv_inside_a_subgraph_is_refused():
    """Edits are recorded per scope: a reader in a subgraph keeps the BN (even a foldable Conv)."""
    model = bn_conv_model()
    model.graph.initializer.append(numpy_helper.from_array(np.ones((6, 4, 3, 3), np.float32), "sub_W"))
    model = with_if_reading_bn_out(model, "Conv", ["bn_out", "sub_W"])
    assert re.fullmatch(r"its output 'bn_out' is also read by Conv '(then|else)_conv' in another graph scope",
                        refusal(model))


def test_gemm_with_trans_a_is_refused():
    assert refusal(bn_gemm_model(trans_a=1)) == (
        "Gemm 'gemm' has transA=1: BN's axis 1 is then A's M axis (rows of the output), not the K axis the "
        "weight reads")


def test_matmul_on_a_3d_activation_is_refused_even_when_sizes_match():
    """X [2, 5, 5]: BN normalizes axis 1 (size 5), the weight reads axis 2 (also size 5)."""
    assert refusal(bn_matmul_model(x_shape=[2, 5, 5], k=5)) == (
        "MatMul 'mm' reads an activation of rank 3: BN normalizes axis 1 and the MatMul weight reads the last "
        "axis, which coincide only for a 2-D activation [N, K]")


def test_matmul_on_an_activation_of_unknown_rank_is_refused():
    """No declared shape and a producer whose rank bnfold cannot derive (a Reshape to a shape known
    only at run time): not provably 2-D."""
    p = Parts()
    p.inputs.append(helper.make_tensor_value_info("S", onnx.TensorProto.INT64, [2]))
    p.node("Reshape", [p.input("X", [3, 5]), "S"], ["reshaped"], "reshape")
    p.output(matmul(p, bn(p, "reshaped", 5), "mm", k=5, n=4, out="Y"), 2)
    assert refusal(p.model()).startswith("MatMul 'mm' reads an activation of unknown rank")


def test_matmul_on_an_activation_whose_producers_fix_its_rank_folds():
    """No declared shape, but Abs and BN keep the rank of the declared 2-D input (rules/_rank.py)."""
    p = Parts()
    p.node("Abs", [p.input("X", [3, 5])], ["abs_out"], "abs")
    p.output(matmul(p, bn(p, "abs_out", 5), "mm", k=5, n=4, out="Y"), 2)
    model = p.model()
    folded = fold(model).model
    assert op_types(folded) == ["Abs", "MatMul", "Add"]
    assert_equivalent(model, folded)


def test_bn_in_training_mode_is_refused():
    model = bn_conv_model(bn_kwargs=dict(training_mode=1))
    assert refusal(model) == "training_mode=1: it normalizes with batch statistics, not an inference op"


def test_non_constant_conv_weight_is_refused():
    model = bn_conv_model()
    model.graph.input.append(helper.make_tensor_value_info("conv_W", onnx.TensorProto.FLOAT, [6, 4, 3, 3]))
    assert refusal(model) == ("Conv 'conv' has a non-constant weight or bias: 'conv_W' is an initializer also "
                              "listed as a graph input, so callers may override it")


def test_non_constant_bn_statistics_are_refused():
    model = bn_conv_model()
    model.graph.input.append(helper.make_tensor_value_info("bn_mean", onnx.TensorProto.FLOAT, [4]))
    assert refusal(model).startswith("its mean is not a constant")


def test_readers_disagreeing_on_the_channel_count_are_refused():
    """Not a valid model (conv2 reads 2 channels of a 4-channel tensor): refused, never folded wrong."""
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=4, c_out=6, out="Y"), 4)
    p.output(conv(p, y, "conv2", c_in=2, c_out=6, out="Y2"), 4)
    assert refusal(p.model(check=False)) == "Conv 'conv2' reads 2 input channels but Conv 'conv' reads 4"


def test_statistics_of_another_channel_count_are_refused():
    p = Parts()
    y = bn(p, p.input("X", [2, 4, 7, 7]), 4)
    p.output(conv(p, y, "conv", c_in=2, c_out=6, out="Y"), 4)
    assert refusal(p.model(check=False)) == "its scale has shape [4] but Conv 'conv' reads 2 input channels"


def test_float16_weight_overflow_is_refused():
    """s = 1e4 / sqrt(1e-2) = 1e5: every folded weight (|W| in [1, 2]) exceeds float16's 65504."""
    weight = np.random.default_rng(0).uniform(1.0, 2.0, (6, 4, 3, 3))
    model = bn_conv_model(dtype=np.float16, weight_values=weight,
                          bn_kwargs=dict(gamma=np.full(4, 1e4), var=np.full(4, 1e-2), eps=0.0))
    assert refusal(model).startswith("folded weight of Conv 'conv' overflows float16")
