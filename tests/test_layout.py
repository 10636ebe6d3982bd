"""Layout ops between a linear op and a BatchNormalization, on either side.

First the pure axis tracking (``bnfold/rules/_layout_axes.py``) against numpy, with hypothesis: for
every Transpose / Reshape / Flatten / Squeeze / Unsqueeze of a random static shape, the axis it
returns carries exactly the channels (numpy moves a channel-index tensor), and when it returns None
no output axis determines the channel at all (it is complete, not just safe). Then the folds through
``bnfold.fold``: linear op → layout ops → BN (rules conv-bn, matmul-bn, ...: ``_site.py`` follows the
layout ops) and BN → layout ops → linear op (rule bn-layout-linear), each with its structure and its
numbers under onnxruntime at ORT_DISABLE_ALL; and one refusal per precondition, with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bnfold
from bnfold.errors import NoFold
from bnfold.rules._layout_axes import (
    Dim, LayoutError, dims, reshape_target, through_flatten, through_reshape, through_squeeze,
    through_transpose, through_unsqueeze,
)
from conftest import assert_equivalent, fold_expecting, node_named, op_types, refusal_for
from layout_builders import bn_transpose_model, matmul_transpose_bn, bn, declared, elem, rng_for, text_model, vector, weight

# -- the axis tracking against numpy ----------------------------------------------------------------


def channel_index(shape, axis: int) -> np.ndarray:
    """A tensor of ``shape`` whose every element is its coordinate on ``axis`` (its channel)."""
    index = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(index, shape)


def carrying_axes(y: np.ndarray, channels: int) -> list[int]:
    """The axes ``b`` of ``y`` whose coordinate is the channel of every element."""
    return [b for b in range(y.ndim) if y.shape[b] == channels and np.array_equal(y, channel_index(y.shape, b))]


def assert_tracks(x_shape, axis, y: np.ndarray, out, b) -> None:
    """``out``/``b`` (what the function says) describe ``y`` (what numpy did to the channel index)."""
    assert tuple(d.value for d in out) == y.shape
    channels = x_shape[axis]
    if b is not None:
        np.testing.assert_array_equal(y, channel_index(y.shape, b))
    elif channels >= 2:
        assert carrying_axes(y, channels) == [], "an axis carries the channels, but the tracking lost them"


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=5)


@st.composite
def shape_and_axis(draw, shape_strategy=shapes):
    shape = draw(shape_strategy)
    return shape, draw(st.integers(0, len(shape) - 1))


def _factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def reshape_case(draw):
    """A shape, a channel axis, and a Reshape target that regroups its (prime) factors in order,
    with 1s inserted, at most one -1 and some 0s (copies) where the sizes match."""
    shape, axis = draw(shape_and_axis())
    factors = [f for d in shape for f in _factors(d)]
    cuts = sorted(draw(st.sets(st.integers(1, max(len(factors) - 1, 1)), max_size=len(factors))))
    groups = [factors[i:j] for i, j in zip([0, *cuts], [*cuts, len(factors)]) if factors[i:j]] or [[]]
    target = [int(np.prod(g)) for g in groups]
    for _ in range(draw(st.integers(0, 2))):
        target.insert(draw(st.integers(0, len(target))), 1)
    if draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    for i in range(min(len(target), len(shape))):
        if target[i] == shape[i] and draw(st.booleans()):
            target[i] = 0
    return shape, axis, target


@settings(max_examples=300, deadline=None)
@given(shape_and_axis(), st.randoms(use_true_random=False))
def test_transpose_follows_the_channels(case, random):
    shape, axis = case
    perm = list(range(len(shape)))
    random.shuffle(perm)
    out, b = through_transpose(dims(shape), axis, perm)
    assert_tracks(shape, axis, np.transpose(channel_index(shape, axis), perm), out, b)


@settings(max_examples=500, deadline=None)
@given(reshape_case())
def test_reshape_follows_the_channels_or_says_they_are_lost(case):
    shape, axis, target = case
    resolved = [shape[i] if v == 0 else v for i, v in enumerate(target)]
    out, b = through_reshape(dims(shape), axis, target)
    assert_tracks(shape, axis, channel_index(shape, axis).reshape(resolved), out, b)


@settings(max_examples=300, deadline=None)
@given(shape_and_axis(), st.data())
def test_flatten_follows_the_channels(case, data):
    shape, axis = case
    k = data.draw(st.integers(-len(shape), len(shape)))
    kk = k % (len(shape) + 1) if k >= 0 else k + len(shape)
    y = channel_index(shape, axis).reshape(int(np.prod(shape[:kk])), -1)
    out, b = through_flatten(dims(shape), axis, k)
    assert_tracks(shape, axis, y, out, b)


@settings(max_examples=300, deadline=None)
@given(shape_and_axis(st.lists(st.integers(1, 3), min_size=1, max_size=5)), st.data())
def test_squeeze_follows_the_channels(case, data):
    shape, axis = case
    ones = [i for i, d in enumerate(shape) if d == 1]
    axes = data.draw(st.none() | st.lists(st.sampled_from(ones), unique=True) if ones else st.none())
    y = np.squeeze(channel_index(shape, axis), axis=None if axes is None else tuple(axes))
    out, b = through_squeeze(dims(shape), axis, axes)
    assert_tracks(shape, axis, y, out, b)


@settings(max_examples=300, deadline=None)
@given(shape_and_axis(), st.data())
def test_unsqueeze_follows_the_channels(case, data):
    shape, axis = case
    rank = len(shape) + data.draw(st.integers(0, 3))
    axes = data.draw(st.lists(st.integers(0, rank - 1), min_size=rank - len(shape), max_size=rank - len(shape),
                              unique=True))
    negative = [a - rank if data.draw(st.booleans()) else a for a in axes]
    out, b = through_unsqueeze(dims(shape), axis, negative)
    assert_tracks(shape, axis, np.expand_dims(channel_index(shape, axis), tuple(axes)), out, b)


N, T, H, W = (Dim.unknown(s) for s in ("N", "T", "H", "W"))


def test_a_copied_batch_dim_is_followed_without_its_size():
    """Reshape [0, 0, -1] of [N, 6, H, W]: the products before the channel axis are the same N."""
    out, b = through_reshape((N, Dim(6), H, W), 1, [0, 0, -1])
    assert (out, b) == ((N, Dim(6), H * W), 1)


def test_an_inferred_batch_of_a_3d_output_is_followed():
    """[N, T, 6] → Reshape [-1, 6, 1, 1]: nothing after the channel axis on either side."""
    out, b = through_reshape((N, T, Dim(6)), 2, [-1, 6, 1, 1])
    assert (out, b) == ((N * T, Dim(6), Dim(1), Dim(1)), 1)


@pytest.mark.parametrize("shape, axis, target", [
    ((N, Dim(6), H, W), 1, [1, 6, -1]),  # N = 1 would make it right: unknown, so no
    ((Dim(2), H, Dim(6)), 2, [4, 6, -1]),  # H = 2 would: unknown
    ((N, T, Dim(6)), 2, [0, -1]),  # 6 merged with T
])
def test_unknown_sizes_are_never_guessed(shape, axis, target):
    assert through_reshape(shape, axis, target)[1] is None


@pytest.mark.parametrize("call, message", [
    (lambda: through_transpose(dims([2, 3]), 0, [0, 0]), "not a permutation"),
    (lambda: reshape_target(dims([2, 3]), [4, 2]), "does not hold the 6 elements"),
    (lambda: reshape_target(dims([2, 3]), [-1, -1]), "more than one -1"),
    (lambda: through_squeeze((N, Dim(3)), 1), "not fully known"),
    (lambda: through_squeeze(dims([2, 3]), 1, [0]), "has size 2, not 1"),
    (lambda: through_unsqueeze(dims([2]), 0, [5]), "out of range"),
])
def test_malformed_parameters_are_errors(call, message):
    with pytest.raises(LayoutError, match=message):
        call()


# -- linear op → layout ops → BN -------------------------------------------------------------------


def folded_by(model: onnx.ModelProto, rule: str, into: str, folds: int = 1) -> onnx.ModelProto:
    """Fold ``model``: ``folds`` folds, the first by ``rule`` into ``into``, no refusal, no BN left,
    and the same outputs as the original under onnxruntime (ORT_DISABLE_ALL)."""
    result = fold_expecting(model, folds)
    assert (result.folds[0].rule, result.folds[0].node, result.folds[0].into) == (rule, "bn", into)
    assert "BatchNormalization" not in op_types(result.model)
    assert_equivalent(model, result.model)
    assert bnfold.fold(result.model).folds == []  # nothing left to fold
    return result.model


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch", ["2", "B"], ids=["static", "symbolic-batch"])
def test_matmul_on_B_T_C_then_transpose_then_bn_folds_into_the_matmul(bias, batch):
    model = matmul_transpose_bn(bias=bias, batch=batch)
    folded = folded_by(model, "matmul-bn", "matmul")
    assert op_types(folded) == ["MatMul", "Add", "Transpose"]  # the shift needs a bias Add: kept or created
    tr = node_named(folded, "tr")
    assert list(tr.output) == ["Y"] and [a.ints for a in tr.attribute] == [[0, 2, 1]]


def test_float16_matmul_transpose_bn_folds():
    model = matmul_transpose_bn(dtype=np.float16)
    folded = folded_by(model, "matmul-bn", "matmul")
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}


CONV_LAYOUTS = {
    # name: (op, X shape, weight shape, conv attributes, layout node reading c, its shape / axes input, Y shape)
    "conv2d-reshape-batch-copied": ("Conv", "N, 3, 4, 4", [6, 3, 3, 3], "<pads = [1, 1, 1, 1]>",
                                    "Reshape (c, shape)", [0, 0, -1], "N, 6, 16"),
    "conv3d-reshape": ("Conv", "1, 3, 3, 3, 3", [6, 3, 2, 2, 2], "", "Reshape (c, shape)", [1, 6, 8], "1, 6, 8"),
    "conv1d-unsqueeze": ("Conv", "2, 3, 7", [6, 3, 3], "", "Unsqueeze (c, axes)", [2], "2, 6, 1, 5"),
    "conv2d-1x1-output-squeeze": ("Conv", "2, 3, 3, 3", [6, 3, 3, 3], "", "Squeeze (c, axes)", [2, 3], "2, 6"),
    "conv2d-1x1-output-flatten": ("Conv", "2, 3, 3, 3", [6, 3, 3, 3], "", "Flatten <axis = 1> (c)", None, "2, 6",
                                  [2, 6, 1, 1]),
    "conv2d-transpose-spatial": ("Conv", "2, 3, 4, 5", [6, 3, 3, 3], "", "Transpose <perm = [0, 1, 3, 2]> (c)",
                                 None, "2, 6, 3, 2"),
    "convtranspose2d-reshape": ("ConvTranspose", "N, 3, 4, 4", [3, 6, 3, 3], "<pads = [1, 1, 1, 1]>",
                                "Reshape (c, shape)", [0, 0, -1], "N, 6, 16"),
    "convtranspose1d-unsqueeze": ("ConvTranspose", "2, 3, 7", [3, 6, 3], "", "Unsqueeze (c, axes)", [-2],
                                  "2, 6, 1, 9"),
    "convtranspose3d-transpose": ("ConvTranspose", "1, 3, 2, 2, 2", [3, 6, 2, 2, 2], "",
                                  "Transpose <perm = [0, 1, 4, 2, 3]> (c)", None, "1, 6, 3, 3, 3"),
}


@pytest.mark.parametrize("case", CONV_LAYOUTS.values(), ids=CONV_LAYOUTS.keys())
def test_conv_then_layout_op_then_bn_folds_into_the_conv(case):
    op, x_shape, w_shape, attrs, layout, param, y_shape, *conv_shape = case
    rng = rng_for(1)
    w = weight(rng, w_shape)
    arrays = {"W": w, "Bc": vector(rng, [6]), **bn(rng, 6)}
    if param is not None:
        arrays["shape" if "Reshape" in layout else "axes"] = np.array(param, np.int64)
    model = text_model(f"""
        g (float[{x_shape}] X) => (float[{y_shape}] Y) {{
            [conv] c = {op} {attrs} (X, W, Bc)
            [lay] l = {layout}
            [bn] Y = BatchNormalization (l, bn_scale, bn_bias, bn_mean, bn_var)
        }}""", arrays)
    if conv_shape:  # Flatten merges the spatial axes: that they are 1x1 must be declared
        model = declared(model, "c", conv_shape[0])
    folded = folded_by(model, "conv-bn" if op == "Conv" else "convtranspose-bn", "conv")
    assert op_types(folded) == [op, node_named(model, "lay").op_type]
    assert list(node_named(folded, "lay").output) == ["Y"]


@pytest.mark.parametrize("target, y_shape", [([-1, 6, 1, 1], "10, 6, 1, 1"), ([10, 6, 1], "10, 6, 1"),
                                             ([10, 6], "10, 6")])
def test_3d_matmul_reshaped_to_rows_of_channels_folds(target, y_shape):
    """``[B, T, C] → Reshape [B*T, C, 1, 1] → BN``: refused before layout ops were followed."""
    rng = rng_for(2)
    model = text_model(f"""
        g (float[2, 5, 4] X) => (float[{y_shape}] Y) {{
            [matmul] m = MatMul (X, W)
            [add] a = Add (m, B)
            [lay] l = Reshape (a, shape)
            [bn] Y = BatchNormalization (l, bn_scale, bn_bias, bn_mean, bn_var)
        }}""", {"W": weight(rng, (4, 6)), "B": vector(rng, [6]), "shape": np.array(target, np.int64), **bn(rng, 6)})
    folded = folded_by(model, "matmul-bn", "matmul")
    assert op_types(folded) == ["MatMul", "Add", "Reshape"]


def test_gemm_then_two_layout_ops_then_bn_folds():
    rng = rng_for(3)
    model = text_model("""
        g (float[3, 4] X) => (float[3, 6, 1, 1] Y) {
            [gemm] y = Gemm <transB = 1> (X, W, C)
            [un] u = Unsqueeze (y, axes)
            [tr] t = Transpose <perm = [0, 1, 3, 2]> (u)
            [bn] Y = BatchNormalization (t, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 4)), "C": vector(rng, [6]), "axes": np.array([2, 3], np.int64), **bn(rng, 6)})
    folded = folded_by(model, "gemm-bn", "gemm")
    assert op_types(folded) == ["Gemm", "Unsqueeze", "Transpose"]


def test_squeeze_and_unsqueeze_with_attribute_axes_before_opset_13():
    rng = rng_for(4)
    model = text_model("""
        g (float[2, 3, 3, 3] X) => (float[2, 6, 1] Y) {
            [conv] c = Conv (X, W)
            [sq] s = Squeeze <axes = [2, 3]> (c)
            [un] u = Unsqueeze <axes = [-1]> (s)
            [bn] Y = BatchNormalization (u, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 3, 3, 3)), **bn(rng, 6)}, opset=12)
    folded = folded_by(model, "conv-bn", "conv")
    assert op_types(folded) == ["Conv", "Squeeze", "Unsqueeze"]


def layout_refusal(model: onnx.ModelProto, rule: str) -> str:
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.node, refusal.stage) == (rule, "bn", "check")
    return refusal.reason


def test_a_reshape_that_merges_the_channels_with_another_axis_is_refused():
    """[1, 6, 2, 2] → Reshape [1, 24]: a BN over 24 features is per position, not per Conv channel."""
    rng = rng_for(5)
    model = text_model("""
        g (float[1, 3, 4, 4] X) => (float[1, 24] Y) {
            [conv] c = Conv <kernel_shape = [3, 3]> (X, W)
            [lay] l = Reshape (c, shape)
            [bn] Y = BatchNormalization (l, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 3, 3, 3)), "shape": np.array([1, 24], np.int64), **bn(rng, 24)})
    model = declared(model, "c", [1, 6, 2, 2])
    assert ("Reshape 'lay' to [1, 24] merges the 6 channels of a 4-D Conv output with other axes or splits them "
            "([1, 6, 2, 2] → [1, 24], channels on axis 1)") in layout_refusal(model, "conv-bn")


def test_a_merge_the_shape_cannot_rule_out_is_refused_as_unproven():
    """[N, 6, H, W] → Reshape [1, 6, -1]: right only if N = 1, which nothing says."""
    rng = rng_for(5)
    model = text_model("""
        g (float[N, 3, 4, 4] X) => (float[1, 6, M] Y) {
            [conv] c = Conv <kernel_shape = [3, 3]> (X, W)
            [lay] l = Reshape (c, shape)
            [bn] Y = BatchNormalization (l, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 3, 3, 3)), "shape": np.array([1, 6, -1], np.int64), **bn(rng, 6)})
    reason = layout_refusal(model, "conv-bn")
    assert "Reshape 'lay' to [1, 6, -1] cannot be proven to keep the 6 channels of a 4-D Conv output on one axis" \
        in reason and "[?, 6, ?, ?] → [1, 6, ?]" in reason


def test_a_transpose_that_moves_the_channels_off_axis_1_is_refused():
    rng = rng_for(6)
    model = text_model("""
        g (float[6, 2, 4] X) => (float[2, 6, 6] Y) {
            [matmul] m = MatMul (X, W)
            [tr] t = Transpose <perm = [1, 0, 2]> (m)
            [bn] Y = BatchNormalization (t, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (4, 6)), **bn(rng, 6)})  # T = C = 6: the statistics fit axis 1 anyway
    assert ("Transpose 'tr' (perm [1, 0, 2]) does not keep the 6 channels of a 3-D MatMul output on axis 1: "
            "they land on axis 2") in layout_refusal(model, "matmul-bn")


def test_unknown_rank_is_refused():
    rng = rng_for(7)
    model = text_model("""
        g (float[2, 5, 4] X, int64[3] shape) => (float[2, 6, 5] Y) {
            [pre] r = Reshape (X, shape)
            [matmul] m = MatMul (r, W)
            [tr] t = Transpose <perm = [0, 2, 1]> (m)
            [bn] Y = BatchNormalization (t, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (4, 6)), **bn(rng, 6)})
    assert "the rank of 'm' is unknown, so its channel axis cannot be followed" in layout_refusal(model, "matmul-bn")


def test_a_non_constant_reshape_shape_is_refused():
    rng = rng_for(8)
    model = text_model("""
        g (float[2, 3, 4, 4] X, int64[3] shape) => (float[A, B, C] Y) {
            [conv] c = Conv (X, W)
            [lay] l = Reshape (c, shape)
            [bn] Y = BatchNormalization (l, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 3, 1, 1)), **bn(rng, 6)})
    assert "Reshape 'lay' has a non-constant shape: 'shape' is a graph input" in layout_refusal(model, "conv-bn")


@pytest.mark.parametrize("where, reason", [
    ("output", "Transpose 'tr' output 'tr_out' is also a graph output"),
    ("reader", "Transpose 'tr' output 'tr_out' also feeds Relu 'side'"),
])
def test_a_layout_output_that_others_see_is_refused(where, reason):
    model = matmul_transpose_bn()
    graph = model.graph
    if where == "output":
        graph.output.append(onnx.helper.make_tensor_value_info("tr_out", onnx.TensorProto.FLOAT, [2, 6, 5]))
    else:
        graph.node.append(onnx.helper.make_node("Relu", ["tr_out"], ["Z"], name="side"))
        graph.output.append(onnx.helper.make_tensor_value_info("Z", onnx.TensorProto.FLOAT, [2, 6, 5]))
    onnx.checker.check_model(model, full_check=True)
    assert reason in layout_refusal(model, "matmul-bn")


# -- BN → layout ops → linear op ---------------------------------------------------------------------


def test_bn_then_transpose_then_matmul_on_B_T_C_folds_into_the_matmul():
    """A speech model's BN over [B, C, T], then the features as rows: [B, T, C] @ W."""
    rng = rng_for(10)
    model = text_model("""
        g (float[2, 6, 5] X) => (float[2, 5, 3] Y) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [tr] t = Transpose <perm = [0, 2, 1]> (b)
            [matmul] m = MatMul (t, W)
            [add] Y = Add (m, B)
        }""", {"W": weight(rng, (6, 3)), "B": vector(rng, [3]), **bn(rng, 6)})
    folded = folded_by(model, "bn-layout-linear", "matmul")
    assert op_types(folded) == ["Transpose", "MatMul", "Add"]
    assert list(node_named(folded, "tr").input) == ["X"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bn_then_transpose_then_two_matmuls_fold_into_both(dtype):
    rng, t = rng_for(11), elem(dtype)
    model = text_model(f"""
        g ({t}[2, 6, 5] X) => ({t}[2, 5, 3] Y, {t}[2, 5, 4] Z) {{
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [tr] t = Transpose <perm = [0, 2, 1]> (b)
            [q] Y = MatMul (t, Wq)
            [k] Z = MatMul (t, Wk)
        }}""", {"Wq": weight(rng, (6, 3), dtype), "Wk": weight(rng, (6, 4), dtype), **bn(rng, 6, dtype=dtype)})
    folded = folded_by(model, "bn-layout-linear", "q,k")
    assert sorted(op_types(folded)) == ["Add", "Add", "MatMul", "MatMul", "Transpose"]  # the shift: a bias each


@pytest.mark.parametrize("layout, params, gemm_attrs", [
    ("Flatten <axis = 1> (b)", {}, ""),
    ("Squeeze (b, axes)", {"axes": np.array([2, 3], np.int64)}, "<transB = 1>"),
    ("Reshape (b, shape)", {"shape": np.array([0, -1], np.int64)}, ""),
], ids=["flatten", "squeeze", "reshape"])
def test_bn_over_pooled_features_then_flatten_then_gemm_folds(layout, params, gemm_attrs):
    rng = rng_for(12)
    w = weight(rng, (3, 6)) if "transB" in gemm_attrs else weight(rng, (6, 3))
    model = text_model(f"""
        g (float[N, 6, 1, 1] X) => (float[N, 3] Y) {{
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [lay] f = {layout}
            [gemm] Y = Gemm {gemm_attrs} (f, W, C)
        }}""", {"W": w, "C": vector(rng, [3]), **params, **bn(rng, 6)})
    folded = folded_by(model, "bn-layout-linear", "gemm")
    assert op_types(folded) == [node_named(model, "lay").op_type, "Gemm"]


def test_bn_then_unsqueeze_then_unpadded_conv_folds():
    rng = rng_for(13)
    model = text_model("""
        g (float[2, 6, 7] X) => (float[2, 4, 1, 5] Y) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [un] u = Unsqueeze (b, axes)
            [conv] Y = Conv <kernel_shape = [1, 3]> (u, W, Bc)
        }""", {"W": weight(rng, (4, 6, 1, 3)), "Bc": vector(rng, [4]), "axes": np.array([2], np.int64),
               **bn(rng, 6)})
    folded_by(model, "bn-layout-linear", "conv")


def test_bn_read_directly_and_through_a_layout_op_folds_into_every_reader():
    rng = rng_for(14)
    model = text_model("""
        g (float[2, 6, 1, 1] X) => (float[2, 4, 1, 1] Y, float[2, 3] Z) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [conv] Y = Conv (b, Wc)
            [tr] t = Transpose <perm = [1, 0, 2, 3]> (b)
            [flat] f = Reshape (t, shape)
            [gemm] Z = Gemm <transA = 1> (f, Wg)
        }""", {"Wc": weight(rng, (4, 6, 1, 1)), "Wg": weight(rng, (6, 3)), "shape": np.array([6, 2], np.int64),
               **bn(rng, 6)})  # Gemm with transA = 1 reads its K channels on axis 0 of A
    folded = folded_by(model, "bn-layout-linear", "conv,gemm")
    assert op_types(folded) == ["Conv", "Transpose", "Reshape", "Gemm"]


def test_bn_whose_channels_reach_the_wrong_matmul_axis_is_refused():
    rng = rng_for(16)
    model = text_model("""
        g (float[2, 6, 6] X) => (float[2, 6, 3] Y) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [tr] t = Transpose <perm = [0, 2, 1]> (b)
            [tr2] t2 = Transpose <perm = [0, 2, 1]> (t)
            [matmul] Y = MatMul (t2, W)
        }""", {"W": weight(rng, (6, 3)), **bn(rng, 6)})
    reason = layout_refusal(model, "bn-layout-linear")
    assert reason == ("MatMul 'matmul' reads the 6 channels on axis 1 of a rank-3 input, but it reads its input "
                      "channels on the last axis")


def test_bn_before_a_layout_op_and_a_padded_conv_is_refused():
    rng = rng_for(17)
    model = bn_transpose_model("[conv] Y = Conv <pads = [1, 1]> (t, W)",
                               {"W": weight(rng, (3, 5, 3))}, out="float[2, 3, 6] Y", x="float[2, 6, 5] X")
    # after the Transpose axis 1 holds 5 = T, not the channels: that is the reason, before padding
    assert "Conv 'conv' reads the 6 channels on axis 2" in layout_refusal(model, "bn-layout-linear")
    model = text_model("""
        g (float[2, 6, 7] X) => (float[2, 4, 1, 7] Y) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [un] u = Unsqueeze (b, axes)
            [conv] Y = Conv <kernel_shape = [1, 3], pads = [0, 1, 0, 1]> (u, W)
        }""", {"W": weight(rng, (4, 6, 1, 3)), "axes": np.array([2], np.int64), **bn(rng, 6)})
    assert "padding [0, 1, 0, 1] on Conv 'conv' makes a preceding BN unfoldable" in layout_refusal(
        model, "bn-layout-linear")


def test_bn_then_flatten_that_merges_the_channels_is_refused():
    rng = rng_for(18)
    model = text_model("""
        g (float[2, 6, 2, 2] X) => (float[2, 3] Y) {
            [bn] b = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
            [flat] f = Flatten (b)
            [gemm] Y = Gemm (f, W)
        }""", {"W": weight(rng, (24, 3)), **bn(rng, 6)})
    assert ("Flatten 'flat' (axis 1) merges the 6 channels of BN's input with other axes or splits them "
            "([2, 6, 2, 2] → [2, 24], channels on axis 1)") in layout_refusal(model, "bn-layout-linear")


def test_bn_whose_layout_output_is_a_graph_output_is_refused():
    rng = rng_for(19)
    model = bn_transpose_model("[matmul] Y = MatMul (t, W)", {"W": weight(rng, (6, 3))},
                               out="float[2, 5, 3] Y, float[2, 5, 6] t")
    assert layout_refusal(model, "bn-layout-linear") == "'t' is a graph output, which must keep BN's values"


def test_bn_whose_layout_output_also_feeds_another_op_keeps_the_closest_reason():
    """A Relu after the Transpose needs BN's values: no match; the report keeps conv-bn's reason."""
    rng = rng_for(20)
    model = bn_transpose_model("[matmul] Y = MatMul (t, W)\n [relu] Z = Relu (t)", {"W": weight(rng, (6, 3))},
                               out="float[2, 5, 3] Y, float[2, 5, 6] Z")
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.stage) == ("conv-bn", "match")
    assert "is an input of the graph" in refusal.reason
    from bnfold.graph import import_model
    from bnfold.rules.bn_layout_linear import BatchNormLayoutLinearRule
    graph = import_model(model).main
    with pytest.raises(NoFold, match="'t' also feeds Relu 'relu', which is neither a layout op"):
        BatchNormLayoutLinearRule().match(graph.nodes_by_op({"BatchNormalization"})[0], graph)
