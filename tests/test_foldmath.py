"""The fold math (``bnfold.foldmath``, and ``fold_affine`` of ``rules/_linear.py``, which the rules
fold an affine map after a linear op with): unit tests, then properties.

    BN(x) = gamma * (x - mean) / sqrt(var + eps) + beta = s * x + t
    BN(W u + b) = (s W) u + (s b + t)

Property (a) checks ``fold_affine`` against the unfolded formula in float64; property (b) checks
the whole engine: random Conv attributes and statistics, ``bnfold.fold``, and onnxruntime on both
models.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnfold
from bnfold.errors import NoFold
from bnfold.foldmath import bn_affine, cast_checked, scale_along_axis, scale_cast_checked
from bnfold.rules._linear import KINDS, Linear, fold_affine
from builders import conv_bn_model
from conftest import assert_equivalent, op_types

# -- bn_affine -------------------------------------------------------------------------------------


def test_bn_affine_of_known_statistics():
    # s = gamma / sqrt(var + eps), t = beta - mean * s, with eps = 1
    s, t = bn_affine(gamma=[2.0, -1.0], beta=[1.0, 0.5], mean=[3.0, -2.0], var=[3.0, 0.0], epsilon=1.0)
    assert s.dtype == t.dtype == np.float64
    np.testing.assert_array_equal(s, [1.0, -1.0])
    np.testing.assert_array_equal(t, [-2.0, -1.5])


def test_bn_affine_computes_in_float64_whatever_the_input_dtype():
    gamma = np.array([1.0, 3.0], np.float16)
    s, _ = bn_affine(gamma, np.zeros(2, np.float16), np.zeros(2, np.float16), np.full(2, 0.1, np.float16), 0.0)
    np.testing.assert_array_equal(s, gamma.astype(np.float64) / np.sqrt(np.float64(np.float16(0.1))))


@pytest.mark.parametrize("position, label", list(enumerate(["scale", "bias", "mean", "variance"])))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bn_affine_refuses_non_finite_statistics(position, label, bad):
    stats = [np.ones(3) for _ in range(4)]
    stats[position][1] = bad
    with pytest.raises(NoFold, match=f"BatchNormalization {label} has non-finite values"):
        bn_affine(*stats, epsilon=1e-5)


@pytest.mark.parametrize("var, eps", [(-1.0, 1e-5), (-1e-5, 1e-5), (0.0, 0.0)])
def test_bn_affine_refuses_a_non_positive_variance_plus_epsilon_and_names_the_channel(var, eps):
    with pytest.raises(NoFold, match="variance \\+ epsilon is not positive \\(channel 2"):
        bn_affine(np.ones(4), np.zeros(4), np.zeros(4), np.array([1.0, 1.0, var, 1.0]), eps)


def test_bn_affine_accepts_a_negative_variance_that_epsilon_makes_positive():
    s, _ = bn_affine([1.0], [0.0], [0.0], [-0.75e-5], 1e-5)
    np.testing.assert_allclose(s, [1 / np.sqrt(0.25e-5)], rtol=1e-12)


# -- fold_affine: y -> s * y + t into the linear op before it ------------------------------------------


def read_as_rules_do(op: str, weight: np.ndarray, bias: np.ndarray | None = None) -> Linear:
    """A linear op with constant ``weight`` and ``bias`` as ``LinearKind.read`` gives it (no graph needed)."""
    node, kind = gs.Node(op, op.lower()), KINDS[op]
    return Linear(kind, node, weight, bias, kind.channels(node, weight), weight.ndim, 1)


def test_fold_scales_the_output_channel_axis_and_maps_the_bias():
    w = np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1)  # Conv [M=2, C, k1, k2]
    s, t = np.array([2.0, -0.5]), np.array([1.0, 3.0])
    folded = fold_affine(read_as_rules_do("Conv", w, np.array([10.0, 20.0], np.float32)), s, t)
    assert folded.weight.dtype == folded.bias.dtype == np.float32  # computed in float64, cast once
    np.testing.assert_array_equal(folded.weight[0], 2.0 * w[0])
    np.testing.assert_array_equal(folded.weight[1], -0.5 * w[1])
    np.testing.assert_array_equal(folded.bias, [21.0, -7.0])


def test_fold_without_bias_gives_t_as_the_bias():
    folded = fold_affine(read_as_rules_do("Conv", np.ones((2, 1, 1))), np.array([3.0, 4.0]), np.array([5.0, 6.0]))
    np.testing.assert_array_equal(folded.weight[:, 0, 0], [3.0, 4.0])
    np.testing.assert_array_equal(folded.bias, [5.0, 6.0])


def test_fold_along_another_axis():
    """Weights whose output channels are not axis 0 (ConvTranspose: [C, M/group, k...])."""
    folded = fold_affine(read_as_rules_do("ConvTranspose", np.ones((3, 2, 1))), np.array([2.0, 5.0]), np.zeros(2))
    np.testing.assert_array_equal(folded.weight[:, :, 0], [[2.0, 5.0]] * 3)


# -- cast_checked --------------------------------------------------------------------------------


FLOAT_DTYPES = [np.float16, np.float32, np.float64, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_cast_checked_rounds_once_to_the_target_dtype(dtype):
    values = np.array([0.1, -2.5, 1e3, 0.0, 1 / 3])
    cast = cast_checked(values, dtype, "weight", original=values)
    assert cast.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cast, values.astype(dtype))


@pytest.mark.parametrize("value, dtype", [
    (65520.0, np.float16),  # rounds to inf: just above the largest float16 (65504)
    (-1e5, np.float16),
    (1e39, np.float32),
    (1e39, ml_dtypes.bfloat16),
], ids=["float16-rounds-to-inf", "float16-negative", "float32", "bfloat16"])
def test_cast_checked_refuses_overflow(value, dtype):
    with pytest.raises(NoFold, match=f"folded weight overflows {np.dtype(dtype).name}"):
        cast_checked(np.array([1.0, value]), dtype, "weight")


def test_cast_checked_accepts_the_largest_float16():
    assert cast_checked(np.array([65504.0, -65504.0]), np.float16, "weight").tolist() == [65504.0, -65504.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_cast_checked_refuses_non_finite_values(bad):
    with pytest.raises(NoFold, match="folded bias has non-finite values"):
        cast_checked(np.array([1.0, bad]), np.float32, "bias")


def test_cast_checked_refuses_a_normal_weight_that_becomes_subnormal():
    with pytest.raises(NoFold, match="folded weight underflows float16"):
        cast_checked(np.array([0.5, 1e-6]), np.float16, "weight", original=np.array([0.5, 0.01]))


@pytest.mark.parametrize("original, folded", [
    (1e-6, 1e-7),  # already subnormal in the unfolded graph: nothing lost by folding
    (0.01, 0.0),  # an exact zero (gamma = 0) is exact
    (0.01, 1e-4),  # still normal
])
def test_cast_checked_accepts_what_the_unfolded_graph_did_not_have_either(original, folded):
    cast_checked(np.array([folded]), np.float16, "weight", original=np.array([original]))


def test_cast_checked_checks_underflow_only_against_an_original():
    assert cast_checked(np.array([1e-6]), np.float16, "bias").dtype == np.float16


def test_cast_checked_refuses_non_float_weights():
    with pytest.raises(NoFold, match="only floating-point weights fold"):
        cast_checked(np.array([1.0]), np.int8, "weight")


# -- property (a): the folded affine map is the BN of the linear map ------------------------------------

channels = st.integers(1, 6)


@st.composite
def linear_bn(draw):
    m = draw(channels)
    rest = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    finite = dict(allow_nan=False, allow_infinity=False)
    stat = lambda lo, hi: hnp.arrays(np.float64, m, elements=st.floats(lo, hi, **finite))  # noqa: E731
    magnitude = draw(stat(1e-3, 1e3))
    sign = draw(hnp.arrays(np.float64, m, elements=st.sampled_from([-1.0, 1.0])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dict(
        weight=rng.standard_normal((m, *rest)),
        bias=rng.standard_normal(m) if draw(st.booleans()) else None,
        gamma=sign * magnitude,
        beta=draw(stat(-1e3, 1e3)),
        mean=draw(stat(-1e3, 1e3)),
        var=draw(stat(1e-6, 1e4)),
        eps=draw(st.sampled_from([0.0, 1e-5, 1e-3])),
        x=rng.standard_normal(rest),
    )


@settings(max_examples=60, deadline=None)
@given(linear_bn())
def test_folded_affine_equals_bn_of_the_linear_map(case):
    w, b, x = case["weight"], case["bias"], case["x"]
    gamma, beta, mean, var, eps = (case[k] for k in ("gamma", "beta", "mean", "var", "eps"))
    axes = list(range(1, w.ndim))
    z = np.tensordot(w, x, axes=(axes, list(range(x.ndim)))) + (0.0 if b is None else b)
    unfolded = gamma * (z - mean) / np.sqrt(var + eps) + beta

    s, t = bn_affine(gamma, beta, mean, var, eps)
    folded = fold_affine(read_as_rules_do("Conv", w, b), s, t)  # float64 weights: nothing is rounded
    w_new, b_new = folded.weight, folded.bias
    folded = np.tensordot(w_new, x, axes=(axes, list(range(x.ndim)))) + b_new

    # Every term is float64: the two orders of evaluation differ by a few ulps of the largest term.
    scale = np.abs(s) * (np.tensordot(np.abs(w), np.abs(x), axes=(axes, list(range(x.ndim))))
                         + (0.0 if b is None else np.abs(b)) + np.abs(mean)) + np.abs(beta)
    assert np.all(np.abs(folded - unfolded) <= 1e-13 * scale)


# -- property (b): bnfold.fold on random Conv → BN models, checked by onnxruntime -------------------------


@st.composite
def conv_bn_cases(draw):
    rank = draw(st.integers(1, 3))
    group = draw(st.integers(1, 4))
    c_in, c_out = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    auto_pad = draw(st.sampled_from([None, "SAME_UPPER", "SAME_LOWER", "VALID"]))
    per_axis = lambda lo, hi: draw(st.lists(st.integers(lo, hi), min_size=rank, max_size=rank))  # noqa: E731
    strides = per_axis(1, 2)
    # onnxruntime does not implement dilations with SAME_* padding
    dilations = per_axis(1, 2) if auto_pad not in ("SAME_UPPER", "SAME_LOWER") else None
    pads = per_axis(0, kernel - 1) + per_axis(0, kernel - 1) if auto_pad is None else None
    reach = max(dilations or [1]) * (kernel - 1) + 1
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fan_in = c_in // group * kernel**rank
    # Weights and scales are bounded away from zero so that no float16 weight underflows
    # (that refusal has its own test); the statistics are those of a trained network.
    w_shape = (c_out, c_in // group) + (kernel,) * rank
    weight = rng.uniform(0.2, 1.0, w_shape) * rng.choice([-1, 1], size=w_shape)
    return dict(
        rank=rank, group=group, c_in=c_in, c_out=c_out, kernel=kernel,
        spatial=draw(st.integers(reach, reach + 3)), batch=draw(st.integers(1, 2)),
        strides=strides, dilations=dilations, pads=pads, auto_pad=auto_pad,
        bias=draw(st.booleans()), dtype=dtype, eps=draw(st.sampled_from([1e-5, 1e-3])),
        weight=weight / np.sqrt(fan_in),
        gamma=rng.uniform(0.5, 1.5, c_out) * rng.choice([-1, 1], c_out),
        beta=rng.standard_normal(c_out), mean=rng.standard_normal(c_out), var=rng.uniform(0.5, 2.0, c_out),
    )


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_bn_cases())
def test_fold_is_equivalent_on_random_conv_bn_models(case):
    model = conv_bn_model(**case)
    result = bnfold.fold(model)
    assert [r.reason for r in result.refusals] == []
    assert len(result.folds) == 1 and op_types(result.model) == ["Conv"]
    assert_equivalent(model, result.model)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([np.float32, np.float16, np.float64]),
    st.integers(1, 6), st.integers(1, 5), st.integers(0, 1),
    st.floats(-30, 30), st.integers(0, 2**31 - 1),
)
def test_fused_scale_cast_equals_the_two_step_form(dtype, channels, other, axis, log2_spread, seed):
    """scale_cast_checked: same values, same refusals as cast_checked(scale_along_axis(...))."""
    rng = np.random.default_rng(seed)
    shape = (channels, other) if axis == 0 else (other, channels)
    spread = abs(log2_spread)
    with np.errstate(over="ignore"):  # an infinite float16 weight is one of the cases
        weight = (rng.standard_normal(shape) * 2.0 ** rng.uniform(-spread, spread, shape)).astype(dtype)
    weight[rng.random(shape) < 0.1] = 0  # pruned weights take the careful path
    scale = 2.0 ** rng.uniform(-spread, spread, channels)
    try:
        expected = cast_checked(scale_along_axis(weight, scale, axis), dtype, "w", original=weight)
    except NoFold as exc:
        with pytest.raises(NoFold, match=re.escape(exc.reason)):
            scale_cast_checked(weight, scale, axis, "w")
        return
    got = scale_cast_checked(weight, scale, axis, "w")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))  # bit for bit
