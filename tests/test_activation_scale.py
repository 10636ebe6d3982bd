"""Rule activation-scale: a positive per-channel scale after Relu / LeakyRelu / PRelu folds back into
the linear op before the activation.

Every fold is checked for its structure (the Mul, Div or BN is gone, the activation produces its
output) and its numbers (onnxruntime at ORT_DISABLE_ALL); every precondition has a negative test
with its reason. A BN with a shift after an activation is not this rule's: it stays, with the
reason the report gave before (conv-bn's "not a linear op").
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import bnfold
from bnfold.errors import NoFold
from bnfold.graph import import_model
from bnfold.rules.activation_scale import ScaleAfterActivationRule
from builders import bn_after_relu_model
from conftest import assert_equivalent, fold_expecting, initializer_array, node_named, op_types, refusal_for
from layout_builders import (ACTIVATIONS, CONVS, conv_act_scale, elem, expose, positive_bn, rng_for, text_model, vector,
                             weight)

def folded(model: onnx.ModelProto, op: str = "Mul") -> onnx.ModelProto:
    result = fold_expecting(model)
    fold = result.folds[0]
    assert (fold.rule, fold.node, fold.op, fold.into) == ("activation-scale", "scale" if op != "BatchNormalization"
                                                          else "bn", op, model.graph.node[0].name)
    assert op not in op_types(result.model)
    assert list(node_named(result.model, "act").output) == ["Y"]
    assert_equivalent(model, result.model)
    assert bnfold.fold(result.model).folds == []
    return result.model


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_conv_activation_positive_mul_folds_into_the_conv(conv, act):
    text, slope = ACTIVATIONS[act]
    model = conv_act_scale(text, slope, conv)
    out = folded(model)
    assert op_types(out) == ["Conv", node_named(model, "act").op_type]
    k = initializer_array(model, "k").astype(np.float64).reshape(-1)
    np.testing.assert_allclose(initializer_array(out, "B"), initializer_array(model, "B") * k, rtol=1e-6)  # b' = s·b


def test_division_by_a_positive_constant_folds():
    folded(conv_act_scale("Relu (c)", None, "conv2d", scale="Div"), "Div")


def test_a_conv_without_bias_keeps_none():
    out = folded(conv_act_scale("Relu (c)", None, "conv2d", bias=False))
    assert len(node_named(out, "conv").input) == 2


def test_float16_conv_relu_mul_folds():
    out = folded(conv_act_scale("Relu (c)", None, "conv2d", dtype=np.float16))
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("act", ["Relu (c)", "LeakyRelu <alpha = 0.1> (c)"], ids=["relu", "leaky-relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_bn_that_only_scales_folds_back_through_the_activation(act, dtype):
    """beta = 0 and mean = 0: BN is ``s * x`` with s > 0, and leaves nothing behind."""
    rng, t = rng_for(1), elem(dtype)
    model = text_model(f"""
        g ({t}[2, 3, 6, 6] X) => ({t}[2, 6, 4, 4] Y) {{
            [conv] c = Conv (X, W, B)
            [act] a = {act}
            [scale] Y = BatchNormalization (a, bn_scale, bn_bias, bn_mean, bn_var)
        }}""", {"W": weight(rng, (6, 3, 3, 3), dtype), "B": vector(rng, [6], dtype),
                **positive_bn(rng, 6, dtype=dtype)})
    out = fold_expecting(model).model
    assert op_types(out) == ["Conv", node_named(model, "act").op_type]
    assert_equivalent(model, out)


LINEARS = {
    "gemm": ("float[3, 4] X", "[lin] c = Gemm <transB = 1> (X, W, C)", {"W": (6, 4), "C": [6]}, "float[3, 6] Y"),
    "matmul-bias": ("float[3, 4] X", "[lin] m = MatMul (X, W)\n [add] c = Add (m, C)", {"W": (4, 6), "C": [6]},
                    "float[3, 6] Y"),
    "matmul-3d": ("float[2, 3, 4] X", "[lin] c = MatMul (X, W)", {"W": (4, 6)}, "float[2, 3, 6] Y"),
    "convtranspose": ("float[1, 3, 4, 4] X", "[lin] c = ConvTranspose (X, W)", {"W": (3, 6, 3, 3)},
                      "float[1, 6, 6, 6] Y"),
}


@pytest.mark.parametrize("kind", LINEARS)
def test_every_linear_op_kind_takes_the_scale(kind):
    x, nodes, shapes, y = LINEARS[kind]
    rng = rng_for(2)
    arrays = {n: weight(rng, s) if n == "W" else vector(rng, s) for n, s in shapes.items()}
    arrays["k"] = vector(rng, [6, 1, 1] if kind == "convtranspose" else [6], low=0.3, high=3.0)
    model = text_model(f"""
        g ({x}) => ({y}) {{
            {nodes}
            [act] a = Relu (c)
            [scale] Y = Mul (k, a)
        }}""", arrays)
    result = fold_expecting(model)
    assert result.folds[0].into == "lin" and "Mul" not in op_types(result.model)
    assert_equivalent(model, result.model)


# -- refusals --------------------------------------------------------------------------------------


def refused(model: onnx.ModelProto, node: str = "scale") -> str:
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.node, refusal.stage) == ("activation-scale", node, "check")
    return refusal.reason


def test_a_scale_that_is_not_positive_is_refused():
    values = [1.0, 2.0, -0.5, 1.5, 0.7, 3.0]
    reason = refused(conv_act_scale("Relu (c)", None, "conv2d", values=values))
    assert reason == ("its scale on channel 2 is -0.5, not positive: Relu(s·x) = s·Relu(x) holds only for s > 0")
    reason = refused(conv_act_scale("LeakyRelu (c)", None, "conv2d", values=[1, 1, 1, 0, 1, 1]))
    assert reason.startswith("its scale on channel 3 is 0, not positive")


def test_a_bn_that_only_scales_with_a_negative_gamma_is_refused():
    rng = rng_for(3)
    gamma = [1.0, -2.0, 1.0, 1.0, 0.5, 1.0]
    model = text_model("""
        g (float[2, 3, 6, 6] X) => (float[2, 6, 4, 4] Y) {
            [conv] c = Conv (X, W)
            [act] a = Relu (c)
            [bn] Y = BatchNormalization (a, bn_scale, bn_bias, bn_mean, bn_var)
        }""", {"W": weight(rng, (6, 3, 3, 3)), **positive_bn(rng, 6, gamma=gamma)})
    assert refused(model, "bn").startswith("its scale on channel 1 is -")


@pytest.mark.parametrize("act, reason", [
    ("Sigmoid (c)", "a scale does not move back through Sigmoid 'act': Sigmoid(s·x) is not s·Sigmoid(x)"),
    ("Tanh (c)", "Tanh(s·x) is not s·Tanh(x)"),
    ("Clip (c, lo, hi)", "Clip(s·x, a, b) = s·Clip(x, a/s, b/s): its bounds would have to scale per channel"),
], ids=["sigmoid", "tanh", "clip"])
def test_an_activation_a_scale_does_not_commute_with_is_refused(act, reason):
    bounds = {"lo": np.float32(0), "hi": np.float32(6)} if "Clip" in act else {}
    model = conv_act_scale(act, None, "conv2d", more=bounds)
    assert reason in refused(model)


@pytest.mark.parametrize("where, reason", [
    ("c", "Conv 'conv' output 'c' also feeds Relu 'side'"),
    ("a", "Relu 'act' output 'a' also feeds Relu 'side'"),
    ("c-output", "Conv 'conv' output 'c' is also a graph output"),
    ("a-output", "Relu 'act' output 'a' is also a graph output"),
])
def test_an_output_that_others_see_is_refused(where, reason):
    name, how = where.split("-")[0], "output" if where.endswith("-output") else "reader"
    model = expose(conv_act_scale("Relu (c)", None, "conv2d"), name, how, [2, 6, 4, 4])
    assert reason in refused(model)


def test_a_constant_that_is_not_per_channel_is_refused():
    rng = rng_for(4)
    model = text_model("""
        g (float[2, 3, 6, 6] X) => (float[2, 6, 4, 4] Y) {
            [conv] c = Conv (X, W)
            [act] a = Relu (c)
            [scale] Y = Mul (a, k)
        }""", {"W": weight(rng, (6, 3, 3, 3)), "k": vector(rng, [1, 1, 4, 1], low=0.5, high=2.0)})
    assert "is not per output channel" in refused(model)


def test_a_bn_with_a_shift_after_relu_keeps_the_report_it_had():
    """Folding only the scale would leave an Add in the BN's place: no gain, so no match, and the
    refusal the report shows is conv-bn's, as before this rule."""
    model = bn_after_relu_model()
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.stage) == ("conv-bn", "match")
    assert "its input 'relu_out' comes from Relu 'relu', not a linear op" in refusal.reason
    graph = import_model(model).main
    (node,) = graph.nodes_by_op({"BatchNormalization"})
    with pytest.raises(NoFold, match="its shift is not zero: after Relu 'relu' it would stay as an Add"):
        ScaleAfterActivationRule().match(node, graph)


def test_a_mul_after_an_activation_of_no_linear_op_is_not_reported():
    model = text_model("""
        g (float[2, 6, 4, 4] X) => (float[2, 6, 4, 4] Y) {
            [act] a = Relu (X)
            [scale] Y = Mul (a, k)
        }""", {"k": vector(rng_for(5), [6, 1, 1], low=0.5, high=2.0)})
    result = bnfold.fold(model)
    assert result.folds == [] and result.refusals == []
