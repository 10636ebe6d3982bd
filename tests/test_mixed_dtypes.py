"""Folds whose parameters have another dtype than the data they affect (BN-15's T, T1, T2).

Rule under test: a folded tensor is as precise as the data path it affects. From opset 15 a
BatchNormalization may keep its scale and bias (T1) and its statistics (T2) in other float dtypes
than its data (T). Folding a float32 constant into a float16 scale or bias would round it to
float16 (a float32 ``Add 1000.3`` moved the output by 0.25, 4000 float32 ULPs): bn-scale widens
the scale and bias (exact: every float16 value is a float32 value), under fresh names since
their dtype changes. Folds into a Conv/Gemm/MatMul weight are cast to the weight's dtype, which
is the data path's own.
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import bnfold
from bnfold import foldmath
from bnfold.tolerances import tolerance_for
from conftest import assert_equivalent, check_full, initializer, run_ort, run_reference

C = 4
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _tensor(name: str, values, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values).astype(dtype), name)


def bn_then_affine_model(t: str, t1: str, t2: str, op: str = "Add", constant=1000.3, opset: int = 15,
                         before: str = "Relu") -> onnx.ModelProto:
    """``x -> Relu -> BN(scale/bias in t1, mean/var in t2) -> op(constant in t)``, data in ``t``.

    The Relu keeps conv-bn and bn-linear out of it: bn-scale is the rule that folds.
    """
    rng = np.random.default_rng(0)
    T, T1, T2 = DTYPES[t], DTYPES[t1], DTYPES[t2]
    inits = [
        _tensor("gamma", rng.uniform(0.5, 1.5, C), T1), _tensor("beta", rng.standard_normal(C), T1),
        _tensor("mean", rng.standard_normal(C), T2), _tensor("var", rng.uniform(0.5, 2.0, C), T2),
        _tensor("c", np.full((C, 1, 1), constant), T),
    ]
    elem = helper.np_dtype_to_tensor_dtype(T)
    nodes = [
        helper.make_node(before, ["x"], ["r"], name="act"),
        helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
        helper.make_node(op, ["y", "c"], ["z"], name="affine"),
    ]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", elem, [1, C, 3, 3])],
                              [helper.make_tensor_value_info("z", elem, [1, C, 3, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, feeds):
    try:
        return run_ort(model, feeds)
    except Exception:  # no onnxruntime kernel (bfloat16): the reference evaluator
        return run_reference(model, feeds)


def _feeds(dtype) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, C, 3, 3)).astype(DTYPES[dtype])}


def _ulp(values: np.ndarray) -> np.ndarray:
    return np.spacing(np.abs(values).astype(np.float32)) if values.dtype == np.float32 else np.spacing(np.abs(values))


# -- the seen case and its neighbours -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub"])
@pytest.mark.parametrize("t1", ["float16", "bfloat16"])
def test_a_float32_constant_is_not_rounded_into_a_narrow_scale_or_bias(t1, op):
    model = bn_then_affine_model("float32", t1, "float32", op=op, constant=1000.3 if op != "Mul" else 1.0001)
    check_full(model)

    result = bnfold.fold(model)

    assert [(f.rule, f.node) for f in result.folds] == [("bn-scale", "affine")]
    folded = result.model
    check_full(folded)
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    scale, bias = initializer(folded, bn.input[1]), initializer(folded, bn.input[2])
    # widened to float32, under new names (gamma/beta keep declaring their float16 type nowhere)
    assert scale.data_type == bias.data_type == onnx.TensorProto.FLOAT
    assert {bn.input[1], bn.input[2]}.isdisjoint({"gamma", "beta"})
    assert {t.name for t in folded.graph.initializer} == {bn.input[1], bn.input[2], "mean", "var"}
    feeds = _feeds("float32")
    ref, got = _run(model, feeds)["z"], _run(folded, feeds)["z"]
    # float32 rounding of the data path, not float16 rounding of the parameters (0.25 at 1000)
    assert np.all(np.abs(got - ref) <= 8 * _ulp(ref)), np.abs(got - ref).max()


@pytest.mark.parametrize("t1", ["float32", "float64"])
def test_a_parameter_at_least_as_precise_as_the_data_keeps_its_dtype_and_name(t1):
    model = bn_then_affine_model("float32", t1, "float32")
    folded = bnfold.fold(model).model
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert list(bn.input[1:3]) == ["gamma", "beta"]
    assert initializer(folded, "gamma").data_type == helper.np_dtype_to_tensor_dtype(DTYPES[t1])
    feeds = _feeds("float32")
    np.testing.assert_allclose(_run(folded, feeds)["z"], _run(model, feeds)["z"], rtol=1e-6)


def test_float16_data_with_float16_parameters_stays_float16():
    model = bn_then_affine_model("float16", "float16", "float16", constant=3.0, opset=14)
    folded = bnfold.fold(model).model
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert list(bn.input[1:3]) == ["gamma", "beta"]
    assert initializer(folded, "gamma").data_type == onnx.TensorProto.FLOAT16
    assert_equivalent(model, folded)


@pytest.mark.parametrize("t, t1, t2", [c for c in itertools.product(("float16", "float32"), repeat=3)])
def test_every_float16_float32_combination_of_bn15_folds_exactly(t, t1, t2):
    model = bn_then_affine_model(t, t1, t2, constant=3.0)
    result = bnfold.fold(model)
    assert [f.rule for f in result.folds] == ["bn-scale"]
    check_full(result.model)
    feeds = _feeds(t)
    ref, got = _run(model, feeds)["z"], _run(result.model, feeds)["z"]
    tol = tolerance_for(ref.dtype)
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), atol=tol.atol, rtol=tol.rtol)
    bn = next(n for n in result.model.graph.node if n.op_type == "BatchNormalization")
    stored = initializer(result.model, bn.input[1]).data_type
    expected = onnx.TensorProto.FLOAT if "float32" in (t, t1) else onnx.TensorProto.FLOAT16
    assert stored == expected


def test_float16_conv_with_float32_statistics_folds_into_the_float16_weight():
    """The Conv's weight is the data path's dtype: the fold is cast there (T = float16, T1 = T2 = float32)."""
    rng = np.random.default_rng(2)
    inits = [
        _tensor("W", rng.standard_normal((C, 2, 3, 3)) * 0.3, np.float16),
        _tensor("gamma", rng.uniform(0.5, 1.5, C), np.float32), _tensor("beta", rng.standard_normal(C), np.float32),
        _tensor("mean", rng.standard_normal(C), np.float32), _tensor("var", rng.uniform(0.5, 2.0, C), np.float32),
    ]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv"),
             helper.make_node("BatchNormalization", ["y", "gamma", "beta", "mean", "var"], ["z"], name="bn")]
    graph = helper.make_graph(nodes, "conv16", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT16, [1, C, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    result = bnfold.fold(model)
    assert [f.rule for f in result.folds] == ["conv-bn"]
    conv = result.model.graph.node[0]
    assert {initializer(result.model, n).data_type for n in conv.input[1:]} == {onnx.TensorProto.FLOAT16}
    check_full(result.model)
    assert_equivalent(model, result.model)


# -- the rule as a pure function ------------------------------------------------------------------------------

FLOATS = st.sampled_from(sorted(DTYPES))


@given(FLOATS, FLOATS)
def test_widened_holds_both_dtypes_and_is_the_narrowest_that_does(stored, data):
    s, d = DTYPES[stored], DTYPES[data]
    w = foldmath.widened(s, d)
    assert foldmath.holds(w, s) and foldmath.holds(w, d)
    if foldmath.holds(s, d):
        assert w == s
    # no narrower candidate holds both
    narrower = [x for x in DTYPES.values() if x != w and foldmath.holds(w, x) and not foldmath.holds(x, w)]
    assert not any(foldmath.holds(x, s) and foldmath.holds(x, d) for x in narrower)


@given(st.floats(allow_nan=False, allow_infinity=False, width=16), FLOATS)
def test_widening_keeps_every_value(value, target):
    f16 = np.float16(value)
    w = foldmath.widened(np.float16, DTYPES[target])
    assert np.float64(f16.astype(w)) == np.float64(f16)


def test_holds_is_false_between_float16_and_bfloat16():
    assert not foldmath.holds(np.float16, ml_dtypes.bfloat16)
    assert not foldmath.holds(ml_dtypes.bfloat16, np.float16)
    assert foldmath.widened(np.float16, ml_dtypes.bfloat16) == np.float32


def test_before_opset_15_a_narrow_parameter_is_refused_not_widened():
    """T1 = T before opset 15 (the checker rejects such a model); handed one anyway, bnfold refuses."""
    model = bn_then_affine_model("float32", "float16", "float32", opset=14)
    with pytest.raises(onnx.shape_inference.InferenceError, match="scale has inconsistent type"):
        check_full(model)
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    [refusal] = [r for r in result.refusals if r.node == "affine"]
    assert "float16" in refusal.reason and "float32" in refusal.reason, refusal.reason


# -- a chain folded one op at a time is rounded once ------------------------------------------------------------


def narrow_chain_model(dtype) -> onnx.ModelProto:
    """Conv (weights in ``dtype``) → Mul → BN → BN, data in ``dtype``, every parameter in ``dtype``."""
    rng = np.random.default_rng(7)
    D = np.dtype(dtype)
    inits = [_tensor("W", rng.standard_normal((C, 2, 3, 3)) * 0.5, D), _tensor("c", rng.uniform(0.5, 1.5, (C, 1, 1)), D)]
    for k in (1, 2):
        inits += [_tensor(f"g{k}", rng.uniform(0.5, 1.5, C), D), _tensor(f"b{k}", rng.standard_normal(C), D),
                  _tensor(f"m{k}", rng.standard_normal(C), D), _tensor(f"v{k}", rng.uniform(0.5, 2.0, C), D)]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y0"], name="conv"),
             helper.make_node("Mul", ["y0", "c"], ["y1"], name="mul"),
             helper.make_node("BatchNormalization", ["y1", "g1", "b1", "m1", "v1"], ["y2"], name="bn1"),
             helper.make_node("BatchNormalization", ["y2", "g2", "b2", "m2", "v2"], ["z"], name="bn2")]
    elem = helper.np_dtype_to_tensor_dtype(D)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("z", elem, [1, C, 3, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_chain_in_a_narrow_dtype_is_rounded_once(dtype):
    """Three folds into one float16/bfloat16 weight: the result is the float64 composition rounded
    once (folding one op at a time used to round the weight after each: 3 roundings, up to 17x the
    original's own distance from exact on a random model)."""
    model = narrow_chain_model(DTYPES[dtype])
    result = bnfold.fold(model)
    assert [f.node for f in result.folds] == ["mul", "bn1", "bn2"]
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    s, t = arrays["c"].reshape(-1), np.zeros(C)
    for k in (1, 2):
        sk = arrays[f"g{k}"] / np.sqrt(arrays[f"v{k}"] + float(np.float32(1e-5)))
        s, t = s * sk, t * sk + arrays[f"b{k}"] - arrays[f"m{k}"] * sk
    folded = {t_.name: numpy_helper.to_array(t_) for t_ in result.model.graph.initializer}
    conv = result.model.graph.node[0]
    expected_w = (arrays["W"] * s[:, None, None, None]).astype(DTYPES[dtype])
    expected_b = t.astype(DTYPES[dtype])
    np.testing.assert_array_equal(folded[conv.input[1]].view(np.uint16), expected_w.view(np.uint16))
    np.testing.assert_array_equal(folded[conv.input[2]].view(np.uint16), expected_b.view(np.uint16))
