"""Quantized weights (QDQ models): the rules ``qdq-bn`` and ``qdq-affine``, their math, and the
validation of quantized outputs.

    DequantizeLinear(Wq, scale, zp) → Conv | ConvTranspose | Gemm | MatMul → BN | Mul | Add | Sub | Div
    s[c] * (q[c] - zp[c]) * scale[c] = (q[c] - zp[c]) * (s[c] * scale[c])

Every variant that folds is checked for its structure (the follower is gone; the weight still
comes through DequantizeLinear of the same integers, or of the negated ones where a factor is
negative; no float weight anywhere), its numbers (the new dequantized weight is ``s`` times the
old one to one float32 rounding; original and folded model through onnxruntime at
ORT_DISABLE_ALL agree: float outputs within the re-quantization bound plus float rounding,
quantized outputs by the criterion of ``bnfold.tolerances``), and a second fold changes nothing.
Every precondition has a negative test whose refusal says why. Hypothesis checks the pure math.
"""

from __future__ import annotations

import collections
import copy
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import bnfold
from bnfold import tolerances
from bnfold.quantgrid import quantization_grids, unrounded
from bnfold.compare import quantum_errors
from bnfold.errors import NoFold
from bnfold.quantmath import Quantization, fold_into_scale, integer_limits, negate_channels, product_convention, requantize
from bnfold.rules import DEFAULT_RULES
from bnfold.rules.qdq import QuantizedFold
from conftest import check_full, fold_expecting, initializer_array, node_named, op_types, random_feeds, refusal_for, run_ort
from qdq_builders import EXTREME_CHANNEL, X_SCALE, Y_SCALE, float8_weight_model, qat_stack, qdq_model, shapes_for

FOLLOWER_NODE = {"bn": "bn", "mul": "mul", "add": "add1", "sub": "sub", "div": "div"}
FOLLOWER_OP = {"bn": "BatchNormalization", "mul": "Mul", "add": "Add", "sub": "Sub", "div": "Div"}


# -- helpers ---------------------------------------------------------------------------------------


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    [node] = [n for n in model.graph.node if tensor in n.output]
    return node


def attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def weight_parts(model: onnx.ModelProto, op: str):
    """(DequantizeLinear node, integers, scale, zero point) of the linear node's weight."""
    dq = producer(model, node_named(model, op.lower()).input[1])
    assert dq.op_type == "DequantizeLinear"
    arrays = [initializer_array(model, name) for name in dq.input]
    return dq, arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None


def dequantized(q, scale, zp, axis: int) -> np.ndarray:
    """(q - zp) * scale in float64, per tensor or per axis (independent of bnfold.quantmath)."""
    q = q.astype(np.float64)
    if np.size(scale) == 1:
        return (q - (0 if zp is None else float(np.asarray(zp).reshape(())))) * float(np.asarray(scale).reshape(()))
    view = [1] * q.ndim
    view[axis] = np.size(scale)
    zp = 0 if zp is None else np.asarray(zp, dtype=np.float64).reshape(view)
    return (q - zp) * np.asarray(scale, dtype=np.float64).reshape(view)


def affine_of_model(model: onnx.ModelProto, follower: str):
    """(s, t) per output channel in float64, from the follower's constants."""
    if follower == "bn":
        gamma, beta, mean, var = (initializer_array(model, f"bn_{k}").astype(np.float64)
                                  for k in ("scale", "bias", "mean", "var"))
        s = gamma / np.sqrt(var + np.float64(np.float32(1e-5)))
        return s, beta - mean * s
    c = initializer_array(model, "c").astype(np.float64).ravel()
    ones = np.ones_like(c)
    return {"mul": (c, 0 * c), "add": (ones, c), "sub": (ones, -c), "div": (1 / c, 0 * c)}[follower]


def channel_factors(op: str, s: np.ndarray, group: int = 1) -> np.ndarray:
    """``s`` along the weight's output-channel axis (ConvTranspose groups repeat it)."""
    return s.reshape(group, -1)[0] if op == "ConvTranspose" else s


def feeds_for(model: onnx.ModelProto, k: int) -> dict:
    """The three input sets of the numerical checks: normal, |normal|, normal x 10."""
    feeds = random_feeds(model, k)
    return {n: np.abs(v) if k == 1 else v * 10 if k == 2 else v for n, v in feeds.items()}


def assert_same_numbers(original: onnx.ModelProto, folded: onnx.ModelProto, bound: float | None = None) -> None:
    """Both models through onnxruntime (ORT_DISABLE_ALL) on three input sets. A quantized output (from a
    DequantizeLinear) passes bnfold's criterion for quantized outputs; a float one is within the
    re-quantization ``bound`` plus the fast pass's float rounding (256 eps of its scale)."""
    grids = quantization_grids(original)
    for k in range(3):
        feeds = feeds_for(original, k)
        ref, got = run_ort(original, feeds), run_ort(folded, feeds)
        for name, a in ref.items():
            b = got[name]
            assert a.shape == b.shape and a.dtype == b.dtype
            if name in grids:
                e = quantum_errors(a, b, grids[name][0])
                if not tolerances.quantum_pass(e.moved, e.beyond, e.elements):
                    ua, ub = run_ort(unrounded(original), feeds)[name], run_ort(unrounded(folded), feeds)[name]
                    steps = np.abs(ua.astype(np.float64) - ub).max() / float(grids[name][0])
                    assert tolerances.unrounded_pass(steps), (name, k, e, steps)
            else:
                scale = float(np.abs(a).max())
                allowed = (bound or 0.0) + tolerances.FAST_PASS_EPS * tolerances.epsilon(np.float32) * scale
                assert np.abs(a.astype(np.float64) - b).max() <= allowed, (name, k)


def fold_one(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantizedFold]:
    result = fold_expecting(model)
    [fold] = result.folds
    assert isinstance(fold, QuantizedFold)
    assert bnfold.fold(result.model).folds == []  # folding again finds nothing
    return result.model, fold


def as_graph_input(model: onnx.ModelProto, name: str, keep_initializer: bool = False) -> onnx.ModelProto:
    """A copy where initializer ``name`` is a graph input (kept as an overridable default, or moved)."""
    model = copy.deepcopy(model)
    [init] = [t for t in model.graph.initializer if t.name == name]
    model.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    if not keep_initializer:
        model.graph.initializer.remove(init)
    return model


# -- every variant ---------------------------------------------------------------------------------

VARIANTS = [v for v in itertools.product(("Conv", "ConvTranspose", "Gemm", "MatMul"), (True, False), ("int8", "uint8"),
                                         ("bn", "mul", "add"), ("none", "float", "int32"))
            if not (v[0] == "MatMul" and v[3] == "add" and v[4] == "none")]  # that Add is the MatMul's bias


@pytest.mark.parametrize("output", ["quantized", "float"])
@pytest.mark.parametrize("op, per_channel, qtype, follower, bias", VARIANTS)
def test_every_variant_folds_into_the_scale(op, per_channel, qtype, follower, bias, output):
    model = qdq_model(op, follower=follower, qtype=qtype, per_channel=per_channel, bias=bias,
                      output_qdq=output == "quantized")
    folded, fold = fold_one(model)
    rule = "qdq-bn" if follower == "bn" else "qdq-affine"
    assert fold == QuantizedFold(rule, FOLLOWER_NODE[follower], FOLLOWER_OP[follower], op.lower(), op)
    expected_ops = op_types(model)
    expected_ops.remove(FOLLOWER_OP[follower])
    if op == "MatMul" and bias == "none" and follower == "bn":
        expected_ops.append("Add")  # the shift needs a bias Add
    assert sorted(op_types(folded)) == sorted(expected_ops)
    assert FOLLOWER_NODE[follower] not in [n.name for n in folded.graph.node]

    # the weight: DequantizeLinear of the same integers (negated where a factor is negative), no float weight
    _, w_shape, _, axis = shapes_for(op)
    old_dq, q0, scale0, zp0 = weight_parts(model, op)
    dq, q1, scale1, zp1 = weight_parts(folded, op)
    assert q1.dtype == q0.dtype and q1.shape == q0.shape
    assert not [t for t in folded.graph.initializer if list(t.dims) == w_shape and t.data_type == onnx.TensorProto.FLOAT]
    s, t = affine_of_model(model, follower)
    uniform = np.all(np.abs(s) == np.abs(s[0]))
    assert np.all(scale1 > 0)  # no scale became negative
    if not uniform:
        assert scale1.shape == (w_shape[axis],) and attr(dq, "axis") == axis
    negative = s < 0
    assert fold.negated_channels == tuple(np.flatnonzero(negative))
    if not negative.any():  # the very integers of the model
        assert dq.input[0] == "Wq"
        np.testing.assert_array_equal(q1, q0)
    np.testing.assert_allclose(dequantized(q1, scale1, zp1, axis),
                               dequantized(q0, scale0, zp0, axis) * s.reshape([-1 if i == axis else 1
                                                                              for i in range(len(w_shape))]),
                               rtol=2.0 ** -23, atol=0)

    # the bias
    if bias == "int32":
        assert fold.bias_error_bound is not None and fold.bias_error_bound > 0
        bias_input = node_named(folded, "add").input[1] if op == "MatMul" else node_named(folded, op.lower()).input[2]
        b_dq = producer(folded, bias_input)
        bq, b_scale, b_zero = (initializer_array(folded, n) for n in b_dq.input)
        assert bq.dtype == np.int32 and b_dq.op_type == "DequantizeLinear" and attr(b_dq, "axis") == 0
        # the model's convention, kept: bias scale = input scale x weight scale, per channel
        np.testing.assert_array_equal(b_scale, (np.float32(X_SCALE) * np.broadcast_to(scale1, b_scale.shape)
                                                ).astype(np.float32))
        old_b = dequantized(initializer_array(model, "Bq"), initializer_array(model, "b_scale"), None, 0)
        exact = s * old_b + t
        new_b = dequantized(bq, b_scale, b_zero, 0)
        assert np.all(np.abs(new_b - exact) <= b_scale.astype(np.float64) / 2 * (1 + 1e-9))
        assert fold.bias_error_bound == pytest.approx(float(b_scale.max()) / 2)
    else:
        assert fold.bias_error_bound is None
    assert_same_numbers(model, folded, fold.bias_error_bound)


@pytest.mark.parametrize("qtype", ["int16", "uint16", "int4", "uint4"])
@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_other_integer_types_fold(qtype, op):
    # 4-bit: per channel and no negative factor, so that no packed tensor has to be written
    packed = qtype.endswith("4")
    model = qdq_model(op, qtype=qtype, bias="int32", positive=packed)
    folded, fold = fold_one(model)
    _, q0, _, _ = weight_parts(model, op)
    dq, q1, _, _ = weight_parts(folded, op)
    if packed:
        assert dq.input[0] == "Wq" and dq.input[2] == "w_zero"  # the 4-bit tensors are the model's own
    assert str(q1.dtype) == str(q0.dtype)
    assert_same_numbers(model, folded, fold.bias_error_bound)


@pytest.mark.parametrize("follower", ["sub", "div"])
@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_sub_and_div_fold(op, follower):
    model = qdq_model(op, follower=follower, bias="float")
    folded, fold = fold_one(model)
    assert fold.rule == "qdq-affine" and fold.op == FOLLOWER_OP[follower]
    assert_same_numbers(model, folded)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_folds_along_the_output_axis_of_b_and_sets_beta_to_one(trans_b):
    model = qdq_model("Gemm", trans_b=trans_b, bias="float")
    node_named(model, "gemm").attribute.append(helper.make_attribute("beta", 0.5))
    folded, _ = fold_one(model)
    dq, _, scale, _ = weight_parts(folded, "Gemm")
    assert attr(dq, "axis") == (0 if trans_b else 1) and scale.shape == (6,)
    assert attr(node_named(folded, "gemm"), "beta") == 1.0
    assert_same_numbers(model, folded)


def test_an_integer_bias_of_another_convention_keeps_it():
    # bias scale 1e-3 for every channel (not input scale x weight scale): the new one is 1e-3 x |s|
    model = qdq_model("Conv", bias="int32", bias_convention="own")
    folded, fold = fold_one(model)
    s, _ = affine_of_model(model, "bn")
    b_scale = initializer_array(folded, producer(folded, node_named(folded, "conv").input[2]).input[1])
    np.testing.assert_array_equal(b_scale, (np.float32(1e-3) * np.abs(s)).astype(np.float32))
    assert fold.bias_error_bound == pytest.approx(float(b_scale.max()) / 2)
    assert_same_numbers(model, folded, fold.bias_error_bound)


def test_a_per_tensor_scale_stays_per_tensor_under_a_scalar_factor():
    model = qdq_model("Conv", per_channel=False, follower="mul", factor=np.float32(-0.5), bias="int32")
    folded, fold = fold_one(model)
    dq, _, scale, zp = weight_parts(folded, "Conv")
    assert scale.shape == () and zp.shape == () and attr(dq, "axis") is None
    assert scale == np.float32(0.01 * 0.5) and fold.negated_channels == tuple(range(6))
    assert_same_numbers(model, folded, fold.bias_error_bound)


def test_negative_factors_negate_the_channel_integers_exactly():
    model = qdq_model("Conv", qtype="uint8", per_channel=True)
    folded, fold = fold_one(model)
    _, q0, _, zp = weight_parts(model, "Conv")
    _, q1, _, _ = weight_parts(folded, "Conv")
    assert fold.negated_channels == (1, 4)
    for c in range(6):
        expected = 2 * int(zp[c]) - q0[c].astype(np.int64) if c in fold.negated_channels else q0[c]
        np.testing.assert_array_equal(q1[c], expected)


def test_a_chain_of_followers_folds_one_op_at_a_time():
    model = qdq_model("Conv", bias="int32")
    extra = [helper.make_node("Mul", ["z", "c2"], ["z2"], name="mul2"), helper.make_node("Add", ["z2", "c3"], ["z3"], name="add2")]
    y_q = node_named(model, "y_q")
    y_q.input[0] = "z3"
    index = [n.name for n in model.graph.node].index("y_q")
    for k, node in enumerate(extra):
        model.graph.node.insert(index + k, node)
    model.graph.initializer.extend([numpy_helper.from_array(np.float32(1.5), "c2"),
                                    numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 6, 1, 1), "c3")])
    result = fold_expecting(model, folds=3)
    assert [f.rule for f in result.folds] == ["qdq-bn", "qdq-affine", "qdq-affine"]
    assert op_types(result.model).count("DequantizeLinear") == op_types(model).count("DequantizeLinear")
    assert_same_numbers(model, result.model, sum(f.bias_error_bound for f in result.folds))


# -- shared tensors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", ["dq", "scale", "integers"])
def test_shared_dequantize_scale_or_integers_are_never_changed(share):
    model = qdq_model("Conv", share=share)
    folded, _ = fold_one(model)
    twin = node_named(folded, "conv_twin")
    conv = node_named(folded, "conv")
    assert conv.input[1] != twin.input[1]  # the folded conv has a DequantizeLinear of its own
    twin_dq = producer(folded, twin.input[1])
    assert twin_dq.name == ("w_dq" if share == "dq" else "w_dq_twin") and list(twin_dq.input[:1]) == ["Wq"]
    shared = ("Wq", "w_zero") if share == "integers" else ("Wq", "w_scale", "w_zero")  # the twin's scale is its own
    for name in shared:
        np.testing.assert_array_equal(initializer_array(folded, name), initializer_array(model, name))
    _, q1, scale1, _ = weight_parts(folded, "Conv")
    assert producer(folded, conv.input[1]).input[0] != "Wq"  # negated channels: new integers, fresh name
    feeds = feeds_for(model, 0)
    np.testing.assert_array_equal(run_ort(model, feeds)["twin"], run_ort(folded, feeds)["twin"])
    assert_same_numbers(model, folded)


# -- refusals ----------------------------------------------------------------------------------------


def test_a_per_channel_scale_on_another_axis_is_refused():
    model = qdq_model("MatMul", dq_axis=0)
    reason = refusal_for(model).reason
    assert reason == ("weight scale of MatMul 'matmul' is per channel along axis 0 of the weight, not along its "
                      "output-channel axis 1: a per-channel factor does not fit it")


def test_a_scalar_factor_fits_a_scale_on_any_axis():
    model = qdq_model("MatMul", dq_axis=0, follower="mul", factor=np.float32(0.75))
    folded, _ = fold_one(model)
    dq, _, scale, _ = weight_parts(folded, "MatMul")
    assert attr(dq, "axis") == 0
    np.testing.assert_array_equal(scale, (initializer_array(model, "w_scale").astype(np.float64) * 0.75).astype(np.float32))
    assert_same_numbers(model, folded)


def test_blocked_quantization_along_the_output_axis_is_refused():
    model = qdq_model("Conv", block_size=2, block_axis=0)
    assert refusal_for(model).reason == ("weight scale of Conv 'conv' is blocked along the weight's output-channel "
                                         "axis 0 (block_size 2): a per-channel factor does not fit it")


@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_blocked_quantization_along_another_axis_folds(op):
    model = qdq_model(op, block_size=2, bias="float")
    folded, _ = fold_one(model)
    dq, _, scale, _ = weight_parts(folded, op)
    assert attr(dq, "block_size") == 2 and scale.shape == initializer_array(model, "w_scale").shape
    assert_same_numbers(model, folded)


@pytest.mark.parametrize("name, what", [("w_scale", "scale is"), ("Wq", "integers are"), ("w_zero", "zero point is")])
def test_a_non_constant_scale_integers_or_zero_point_is_refused(name, what):
    model = as_graph_input(qdq_model("Conv"), name)
    assert refusal_for(model).reason == (f"the weight of Conv 'conv' comes from DequantizeLinear 'w_dq', whose {what} "
                                         f"not a constant: '{name}' is a graph input, not a constant")


def test_an_overridable_scale_is_refused():
    model = as_graph_input(qdq_model("Conv"), "w_scale", keep_initializer=True)
    assert "'w_scale' is an initializer also listed as a graph input, so callers may override it" in \
        refusal_for(model).reason


def test_a_negative_factor_whose_integers_cannot_be_negated_is_refused():
    model = qdq_model("Conv", extreme=True)
    assert refusal_for(model).reason.startswith(
        f"the factor of output channel {EXTREME_CHANNEL} is negative (")
    assert "negating its integers is not exact: -128 with zero point 0 has no negation in int8 [-128, 127]; " \
        "bnfold does not make a scale negative" in refusal_for(model).reason


def test_uint8_with_a_value_that_has_no_negation_is_refused_and_positive_factors_fold():
    model = qdq_model("Conv", qtype="uint8", extreme=True)
    assert "has no negation in uint8 [0, 255]" in refusal_for(model).reason
    positive = qdq_model("Conv", qtype="uint8", extreme=True, positive=True)
    folded, fold = fold_one(positive)
    assert fold.negated_channels == ()
    assert_same_numbers(positive, folded)


def test_a_zero_factor_is_refused():
    factor = np.array([0.5, 0.7, 0.0, 0.4, 0.3, 0.6], np.float32).reshape(1, 6, 1, 1)
    model = qdq_model("Conv", follower="mul", factor=factor)
    assert refusal_for(model).reason == "the factor of output channel 2 is 0: weight scale of Conv 'conv' would be 0"


def test_a_scale_beyond_float16_of_a_float32_weight_folds_as_float32():
    """The float16 scale of a DequantizeLinear producing float32 is widened before the factor goes
    in, so a product beyond float16's range is no overflow: the weight it describes is float32."""
    model = qdq_model("Conv", scale_dtype=np.float16, positive=True, bn={"scale": 1e5, "var": 1e-6})
    folded, _ = fold_one(model)
    _, _, scale, _ = weight_parts(folded, "Conv")
    assert scale.dtype == np.float32 and np.abs(scale).max() > np.finfo(np.float16).max
    assert_same_numbers(model, folded)


def test_a_scale_that_overflows_its_own_float16_is_refused():
    """Where the scale's dtype is the data's (no wider output), the product must fit it."""
    q = np.ones((2, 3), np.int8)
    with pytest.raises(NoFold, match="overflows float16"):
        fold_into_scale(q, Quantization(np.array([0.5, 0.5], np.float16), None, 0), np.array([1e6, 1.0]), 0)


def test_a_scale_that_underflows_float32_is_refused():
    model = qdq_model("Conv", follower="mul", factor=np.full((1, 6, 1, 1), 1e-30, np.float32), weight_scale=1e-10)
    assert "folded weight scale of Conv 'conv' underflows float32" in refusal_for(model).reason


def test_a_float16_scale_of_a_float32_weight_is_widened():
    """A float16 scale whose DequantizeLinear produces float32 (``output_dtype``, opset 23): the new
    scale is written as float32, since rounding it to float16 would lose 2^-11 of every float32
    weight (with a large factor, several quanta of a quantized output). Widening is exact."""
    model = qdq_model("Conv", scale_dtype=np.float16, follower="mul", positive=True, output_qdq=False)
    folded, _ = fold_one(model)
    _, _, scale, _ = weight_parts(folded, "Conv")
    _, _, old_scale, _ = weight_parts(model, "Conv")
    assert old_scale.dtype == np.float16 and scale.dtype == np.float32
    feeds = feeds_for(model, 0)
    a, b = run_ort(model, feeds)["y"], run_ort(folded, feeds)["y"]
    assert np.abs(a - b).max() <= 64 * 2.0 ** -23 * np.abs(a).max()  # float32 rounding only
    check_full(folded)


def test_a_float16_scale_with_a_large_cancelling_factor_keeps_the_quantized_output():
    """The adversarial case: a per-tensor float16 scale, factors near 1e3 and a float bias that
    cancels most of the weight term; with the scale rounded to float16 the quantized output moved
    by 4 quanta, widened it moves by at most one."""
    value = np.random.default_rng(2).uniform(0.5, 2, [1, 6, 1, 1]) * 1e3
    model = qdq_model("Conv", follower="mul", bias="float", scale_dtype=np.float16, per_channel=False,
                      factor=value, seed=2, output_qdq=True)
    folded, _ = fold_one(model)
    feeds = feeds_for(model, 0)
    a, b = run_ort(model, feeds)["y"], run_ort(folded, feeds)["y"]
    assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= Y_SCALE * 1.0001


def test_an_int32_bias_that_overflows_is_refused():
    model = qdq_model("Conv", bias="int32", bias_convention="own", follower="add",
                      factor=np.full((1, 6, 1, 1), 1e7, np.float32))
    assert refusal_for(model).reason.startswith("re-quantized bias of Conv 'conv' overflows int32 (|value| 1e+10")


def test_float8_weights_are_refused():
    assert refusal_for(float8_weight_model()).reason == (
        "the weight of Conv 'conv' comes from DequantizeLinear 'w_dq' of float8_e4m3fn values; bnfold folds "
        "integer-quantized weights only")


def test_before_opset_13_a_per_tensor_scale_cannot_become_per_channel():
    model = qdq_model("Conv", per_channel=False, opset=10)
    assert refusal_for(model).reason == ("the per-tensor weight scale of Conv 'conv' would become per channel, and "
                                         "DequantizeLinear has no axis before opset 13 (the model's opset is 10)")
    scalar = qdq_model("Conv", per_channel=False, opset=10, follower="mul", factor=np.float32(0.5))
    folded, _ = fold_one(scalar)
    assert_same_numbers(scalar, folded)


def test_grouped_convtranspose_folds_only_factors_that_repeat_per_group():
    model = qdq_model("ConvTranspose", group=2)
    assert refusal_for(model).reason.startswith("ConvTranspose 'convtranspose' has group 2: its weight [C, M/group, ...]")
    factor = np.tile([0.5, -0.7, 0.9], 2).astype(np.float32).reshape(1, 6, 1, 1)
    repeating = qdq_model("ConvTranspose", group=2, follower="mul", factor=factor, bias="int32")
    folded, fold = fold_one(repeating)
    dq, _, scale, _ = weight_parts(folded, "ConvTranspose")
    assert scale.shape == (3,) and attr(dq, "axis") == 1 and fold.negated_channels == (1, 4)
    assert_same_numbers(repeating, folded, fold.bias_error_bound)


@pytest.mark.parametrize("qtype", ["int4", "uint4"])
def test_a_fold_that_would_write_4_bit_tensors_is_refused(qtype):
    per_tensor = qdq_model("Conv", qtype=qtype, per_channel=False, positive=True)
    assert refusal_for(per_tensor).reason == (f"the weight of Conv 'conv': the fold would write new {qtype} zero point, "
                                              f"and bnfold does not write packed {qtype} tensors")
    negative = qdq_model("Conv", qtype=qtype)
    assert refusal_for(negative).reason == (f"the weight of Conv 'conv': the fold would write new {qtype} integers, "
                                            f"and bnfold does not write packed {qtype} tensors")


def test_without_the_quantized_rules_the_float_rules_say_who_folds_it():
    rules = [r for r in DEFAULT_RULES if not r.name.startswith("qdq-")]
    result = bnfold.fold(qdq_model("Conv"), rules)
    [refusal] = result.refusals
    assert (refusal.rule, refusal.stage) == ("conv-bn", "match")
    assert refusal.reason == ("Conv 'conv' takes its weight from DequantizeLinear 'w_dq': rules 'qdq-bn' and "
                              "'qdq-affine' fold it")


def test_a_linear_op_output_read_elsewhere_is_refused():
    model = qdq_model("Conv")
    model.graph.output.append(helper.make_tensor_value_info("conv_out", onnx.TensorProto.FLOAT, [1, 6, 6, 6]))
    assert refusal_for(model).reason == "Conv 'conv' output 'conv_out' is also a graph output"


# -- onnxruntime's fusion ------------------------------------------------------------------------------


def optimized_ops(model: onnx.ModelProto, level, path) -> collections.Counter:
    """The op types of the graph onnxruntime saves after optimizing ``model`` at ``level``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path)
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("bias", ["none", "int32"])
def test_after_the_fold_onnxruntime_fuses_the_conv_into_qlinearconv(bias, tmp_path):
    model = qdq_model("Conv", bias=bias)  # x → Q → DQ → Conv(DQ(int8)) → BN → Q → DQ → y
    folded, _ = fold_one(model)
    onnx.save(model, tmp_path / "original.onnx")
    onnx.save(folded, tmp_path / "folded.onnx")
    extended = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    before = optimized_ops(onnx.load(tmp_path / "original.onnx"), extended, tmp_path / "original.opt.onnx")
    after = optimized_ops(onnx.load(tmp_path / "folded.onnx"), extended, tmp_path / "folded.opt.onnx")
    assert before["QLinearConv"] == 0 and before["BatchNormalization"] == 1 and before["Conv"] == 1
    assert after["QLinearConv"] == 1 and after["Conv"] == 0 and after["BatchNormalization"] == 0
    # at onnxruntime's default level the BN stays in the original too: its Conv+BN fusion needs a float weight
    assert optimized_ops(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, tmp_path / "all.onnx")["BatchNormalization"] == 1


# -- validation of quantized outputs -------------------------------------------------------------------


def with_scaled_weight(model: onnx.ModelProto, op: str, factor: float, layer: int = 0) -> onnx.ModelProto:
    """A copy whose ``layer``-th ``op`` has its weight's DequantizeLinear scale multiplied by ``factor``."""
    model = copy.deepcopy(model)
    node = [n for n in model.graph.node if n.op_type == op][layer]
    [tensor] = [t for t in model.graph.initializer if t.name == producer(model, node.input[1]).input[1]]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    return model


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
def test_a_correct_qdq_fold_passes_validation_and_a_scale_1_percent_off_fails(op):
    model = qdq_model(op, bias="int32")
    folded, _ = fold_one(model)
    good = bnfold.validate(model, folded)
    [out] = good.outputs
    assert good.verdict == "passed" and out.stage in ("quantum", "fast pass")
    assert out.quantum == np.float32(Y_SCALE) and out.moved * 18 <= tolerances.quantum_allowance(18) if op == "Gemm" \
        else out.moved <= tolerances.QUANTUM_MOVED_FRACTION
    bad = bnfold.validate(model, with_scaled_weight(folded, op, 1.01))
    [out] = bad.outputs
    assert bad.verdict == "failed" and out.stage == "unrounded" and out.unrounded > tolerances.UNROUNDED_QUANTA
    assert "elements moved by one quantum (0.05; at most" in bad.reason and "without activation rounding" in bad.reason


def test_a_deep_qdq_stack_passes_without_activation_rounding_where_rounding_cascades():
    # 8 layers: boundaries crossed early move later layers' outputs by several quanta
    model = qat_stack(8, channels=32, size=16)
    folded = fold_expecting(model, folds=8).model
    feeds = feeds_for(model, 0)
    e = quantum_errors(run_ort(model, feeds)["y"], run_ort(folded, feeds)["y"], Y_SCALE)
    assert not tolerances.quantum_pass(e.moved, e.beyond, e.elements)  # the quantum criterion alone would fail it
    good = bnfold.validate(model, folded)
    assert good.verdict == "passed" and good.outputs[0].stage == "unrounded"
    assert good.outputs[0].unrounded < tolerances.UNROUNDED_QUANTA / 8
    bad = bnfold.validate(model, with_scaled_weight(folded, "Conv", 1.01, layer=7))
    assert bad.verdict == "failed" and bad.outputs[0].unrounded > tolerances.UNROUNDED_QUANTA


def test_the_json_report_has_the_requantization_bound_and_the_quanta(tmp_path):
    onnx.save(qdq_model("Conv", bias="int32"), tmp_path / "m.onnx")
    report = bnfold.optimize(tmp_path / "m.onnx", tmp_path / "m.folded.onnx")
    assert report.ok and report.written
    doc = report.to_dict()
    [fold] = doc["folds"]
    assert fold["rule"] == "qdq-bn" and fold["bias_error_bound"] > 0 and list(fold["negated_channels"]) == [1, 4]
    [out] = doc["validation"]["outputs"]  # a quantized output: its grid and how many elements moved
    assert out["quantum"] == pytest.approx(Y_SCALE) and 0 <= out["moved"] <= tolerances.QUANTUM_MOVED_FRACTION


def test_quantum_errors_count_elements_by_quanta():
    ref = np.array([0.0, 0.1, 0.2, 0.3, 0.4, np.nan], np.float32)
    got = np.array([0.0, 0.15, 0.2, 0.4, 0.4, np.nan], np.float32)
    e = quantum_errors(ref, got, 0.05)
    assert (e.elements, e.moved, e.beyond) == (5, 1, 1)
    per_axis = quantum_errors(np.zeros((2, 3)), np.array([[0.1, 0, 0], [0, 0.5, 1.0]]), np.array([[0.1, 0.5, 1.0]]))
    assert (per_axis.moved, per_axis.beyond, per_axis.quantum) == (3, 0, 1.0)


def test_the_quantum_criterion_allows_one_percent_rounded_up_and_nothing_beyond_one_quantum():
    assert [tolerances.quantum_allowance(n) for n in (1, 100, 101, 300, 200704)] == [1, 1, 2, 3, 2008]
    assert tolerances.quantum_pass(3, 0, 300) and not tolerances.quantum_pass(4, 0, 300)
    assert not tolerances.quantum_pass(0, 1, 10 ** 6)
    assert tolerances.unrounded_pass(0.125) and not tolerances.unrounded_pass(0.126)


def test_quantization_grids_are_read_from_the_graph():
    model = qdq_model("Conv")
    assert {k: (v[0], v[1]) for k, v in quantization_grids(model).items()} == {"y": (np.float32(Y_SCALE), None)}
    assert quantization_grids(qdq_model("Conv", output_qdq=False)) == {}
    # through ops that keep the grid (per tensor), not through others
    relu = copy.deepcopy(model)
    node_named(relu, "y_dq").output[0] = "y_deq"
    relu.graph.node.append(helper.make_node("Relu", ["y_deq"], ["y"], name="relu"))
    assert "y" in quantization_grids(relu)
    sig = copy.deepcopy(relu)
    node_named(sig, "relu").op_type = "Sigmoid"
    assert quantization_grids(sig) == {}
    # a scale callers may override is no grid
    assert quantization_grids(as_graph_input(model, "y_scale", keep_initializer=True)) == {}


def test_unrounded_replaces_activation_pairs_with_clips_to_their_range():
    model = qdq_model("Conv")
    relaxed = unrounded(model)
    assert op_types(relaxed).count("Clip") == 2 and op_types(relaxed).count("DequantizeLinear") == 1  # the weight's
    check_full(relaxed)
    x = {"x": np.array([-100.0, -0.02, 0.03, 100.0], np.float32).reshape(1, 4, 1, 1) * np.ones((1, 4, 6, 6), np.float32)}
    clipped = onnx.helper.make_graph([n for n in relaxed.graph.node if n.name == "__bnfold_unrounded_1"], "g",
                                     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                                     [helper.make_tensor_value_info("x_deq", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                                     [t for t in relaxed.graph.initializer if t.name.startswith("__bnfold_unrounded_1")])
    values = run_ort(helper.make_model(clipped, opset_imports=[helper.make_opsetid("", 17)]), x)["x_deq"][0, :, 0, 0]
    np.testing.assert_allclose(values, [-128 * X_SCALE, -0.02, 0.03, 127 * X_SCALE], rtol=1e-6)  # int8, zero point 0
    assert unrounded(qdq_model("Conv", input_qdq=False, output_qdq=False)) is None


# -- the pure math (bnfold.quantmath) ------------------------------------------------------------------

DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


@st.composite
def quantized_weights(draw):
    """(q, Quantization, s, out_axis): integers whose every channel negates exactly, a layout that fits
    per-channel factors along ``out_axis`` (per tensor, per axis on it, blocked along another)."""
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    out_axis = draw(st.integers(0, rank - 1))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    lo, hi = integer_limits(dtype)
    layouts = ["tensor", "axis"] + (["blocked"] if rank > 1 else [])
    layout = draw(st.sampled_from(layouts))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if layout == "tensor":
        param_shape, axis, block = (), 0, 0
    elif layout == "axis":
        param_shape, axis, block = (shape[out_axis],), out_axis, 0
    else:
        axis = draw(st.sampled_from([a for a in range(rank) if a != out_axis]))
        block = draw(st.integers(1, 3))
        param_shape = tuple(-(-n // block) if i == axis else n for i, n in enumerate(shape))
    mid = 0 if lo < 0 else (lo + hi + 1) // 2
    # no zero point means 0: only signed integers negate around it
    zp = rng.integers(mid - 3, mid + 4, size=param_shape).astype(dtype) if lo >= 0 or draw(st.booleans()) else None
    scale = rng.uniform(1e-3, 1.0, size=param_shape).astype(np.float32)
    quant = Quantization(scale, zp, axis, block)
    from bnfold.quantmath import expand

    zp_full = 0 if zp is None else expand(zp, shape, quant).astype(np.int64)
    span = min(100, hi - mid - 4, mid - lo - 4)
    q = (zp_full + rng.integers(-span, span + 1, size=shape)).astype(dtype)
    magnitudes = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), size=shape[out_axis]))
    s = magnitudes * rng.choice([-1.0, 1.0], size=shape[out_axis])
    return q, quant, s, out_axis


def reference_dequantize(q, quant: Quantization) -> np.ndarray:
    """(q - zp) * scale in float64, each layout spelled out (independent of quantmath.expand)."""
    values = q.astype(np.float64)
    scale = np.asarray(quant.scale, dtype=np.float64)
    zp = np.zeros_like(scale) if quant.zero_point is None else np.asarray(quant.zero_point, dtype=np.float64)
    if quant.layout == "tensor":
        return (values - zp.reshape(())) * scale.reshape(())
    if quant.layout == "axis":
        view = [1] * q.ndim
        view[quant.axis] = scale.size
        return (values - zp.reshape(view)) * scale.reshape(view)
    index = np.arange(q.shape[quant.axis]) // quant.block_size
    return (values - np.take(zp, index, axis=quant.axis)) * np.take(scale, index, axis=quant.axis)


@settings(max_examples=300, deadline=None)
@given(quantized_weights())
def test_folding_into_the_scale_multiplies_the_dequantized_weight_to_one_float32_rounding(case):
    q, quant, s, out_axis = case
    fold = fold_into_scale(q, quant, s, out_axis)
    view = [1] * q.ndim
    view[out_axis] = s.size
    exact = reference_dequantize(q, quant) * s.reshape(view)
    got = reference_dequantize(fold.q, fold.quant)
    assert np.all(np.abs(got - exact) <= 2.0 ** -24 * np.abs(exact))
    assert fold.q.dtype == q.dtype and fold.quant.scale.dtype == np.float32
    assert np.all(fold.quant.scale > 0)  # a negative factor negates integers, never a scale
    np.testing.assert_array_equal(fold.negated, s < 0)
    if not (s < 0).any():
        assert fold.q is q


@settings(max_examples=200, deadline=None)
@given(quantized_weights(), st.integers(0, 2 ** 32 - 1))
def test_negating_channels_is_exact_or_refused(case, seed):
    q, quant, _, axis = case
    rng = np.random.default_rng(seed)
    lo, _ = integer_limits(q.dtype)
    if quant.zero_point is None and q.dtype.kind == "i":
        q = q.copy()
        q.flat[rng.integers(q.size)] = lo  # the minimum has no negation with zero point 0
    channels = rng.random(q.shape[axis]) < 0.5
    try:
        flipped = negate_channels(q, quant, channels, axis)
    except NoFold as exc:
        assert "has no negation" in exc.reason
        return
    view = [1] * q.ndim
    view[axis] = channels.size
    sign = np.where(channels, -1.0, 1.0).reshape(view)
    np.testing.assert_array_equal(reference_dequantize(flipped, quant), reference_dequantize(q, quant) * sign)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2 ** 32 - 1), st.floats(1e-6, 1e6))
def test_requantize_is_within_half_a_quantum(channels, seed, size):
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(channels) * size
    scale = rng.uniform(0.5, 2.0, channels).astype(np.float32) * np.float32(size * 1e-4)
    quant = Quantization(scale, np.zeros(channels, np.int32), 0)
    q, bound = requantize(target, quant, np.int32)
    assert q.dtype == np.int32 and bound == pytest.approx(float(scale.max()) / 2)
    assert np.all(np.abs(q * scale.astype(np.float64) - target) <= scale.astype(np.float64) / 2 * (1 + 1e-12))


def test_requantize_refuses_what_does_not_fit():
    with pytest.raises(NoFold, match=r"re-quantized bias overflows int32 \(\|value\| 3e\+09 outside"):
        requantize(np.array([3.0]), Quantization(np.array([1e-9], np.float32), None, 0), np.int32)


def test_the_product_convention_is_recognised_to_float32_rounding():
    weight = np.array([0.01, 0.02], np.float32)
    assert product_convention((np.float32(0.05) * weight).astype(np.float32), 0.05, weight)
    assert not product_convention(np.array([1e-3, 1e-3], np.float32), 0.05, weight)
