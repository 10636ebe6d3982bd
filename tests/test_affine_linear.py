"""Mul / Add / Sub / Div by per-channel constants: into the linear op before them (affine-linear)
or into the BatchNormalization before them (bn-scale).

Every variant that folds is checked for its exact structure (which nodes are left, which tensors
they read, the float64 fold cast once) and its numbers (onnxruntime, original against folded).
Every precondition has a negative test: nothing folds and the report says why — or, for what is
no match at all (a product of two activations, ``c / y``), the report says nothing.
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from affine_builders import Step, bn_stats, linear_chain_model, text_model
from bnfold.errors import NoFold
from bnfold.graph import import_model
from bnfold.rules import DEFAULT_RULES, Fold
from bnfold.rules._rank import rank_of
from bnfold.rules.affine_linear import AffineAfterLinearRule
from bnfold.rules.bn_scale import BatchNormScaleRule
from conftest import assert_equivalent, check_full, initializer_array, initializer_names, node_named, op_types
from test_light_models import LIGHT, randomize_weights

AFFINE = AffineAfterLinearRule()
BN_SCALE = BatchNormScaleRule()
RULES = DEFAULT_RULES

C = 8  # output channels of every linear op in affine_builders
PER_CHANNEL_4D = (C, 1, 1)


def fold(model: onnx.ModelProto) -> bnfold.FoldResult:
    return bnfold.fold(model, rules=RULES)


def fold_all(model: onnx.ModelProto, folds: int) -> bnfold.FoldResult:
    """Fold; assert ``folds`` folds, no refusal, and a result that passes the full check."""
    result = fold(model)
    assert result.refusals == [], [r.reason for r in result.refusals]
    assert len(result.folds) == folds, result.folds
    check_full(result.model)
    return result


def refused(model: onnx.ModelProto, node: str = "op0", rule: str = "affine-linear") -> str:
    """Fold; assert nothing folded (the input comes back) and ``node`` was refused by ``rule``; its reason."""
    result = fold(model)
    assert result.folds == []
    assert result.model is model
    mine = [r for r in result.refusals if r.node == node]
    assert len(mine) == 1, result.refusals
    assert (mine[0].rule, mine[0].stage) == (rule, "check")
    return mine[0].reason


def not_reported(model: onnx.ModelProto, node: str = "op0") -> None:
    """Fold; assert nothing folded and ``node`` does not appear in the report."""
    result = fold(model)
    assert result.folds == []
    assert [r for r in result.refusals if r.node == node] == []


def match_reason(model: onnx.ModelProto, node: str, rule=AFFINE) -> str:
    """Why ``rule`` does not match ``node`` (the report leaves unmatched Mul/Add/Sub/Div out)."""
    graph = import_model(model).main
    (target,) = [n for n in graph.nodes_by_op(("Mul", "Add", "Sub", "Div")) if n.name == node]
    with pytest.raises(NoFold) as exc:
        rule.match(target, graph)
    return exc.value.reason


# -- the maps y -> s * y + t, computed here independently ----------------------------------------------


def expected_affine(step: Step, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = c.astype(np.float64).reshape(-1)
    c = np.full(C, c[0]) if c.size == 1 else c
    one, zero = np.ones(C), np.zeros(C)
    return {
        ("Mul", False): (c, zero), ("Mul", True): (c, zero),
        ("Add", False): (one, c), ("Add", True): (one, c),
        ("Sub", False): (one, -c), ("Sub", True): (-one, c),
        ("Div", False): (1 / c, zero),
    }[step.op, step.constant_first]


OPS = {
    "Mul": Step("Mul", PER_CHANNEL_4D),
    "Mul-constant-first": Step("Mul", PER_CHANNEL_4D, constant_first=True),
    "Add": Step("Add", PER_CHANNEL_4D),
    "Add-constant-first": Step("Add", PER_CHANNEL_4D, constant_first=True),
    "Sub-y-minus-c": Step("Sub", PER_CHANNEL_4D),
    "Sub-c-minus-y": Step("Sub", PER_CHANNEL_4D, constant_first=True),
    "Div": Step("Div", PER_CHANNEL_4D),
}


# -- affine-linear: folds --------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("step", OPS.values(), ids=OPS.keys())
def test_conv_then_op_folds_into_the_conv_exactly(step, bias):
    model = linear_chain_model("Conv", [step], bias=bias)
    result = fold_all(model, folds=1)
    folded = result.model

    assert result.folds == [Fold("affine-linear", "op0", step.op, "lin", "Conv")]
    assert op_types(folded) == ["Conv"]
    conv = node_named(folded, "lin")
    assert list(conv.output) == ["Y"]
    assert list(conv.input[:2]) == ["X", "W"]  # a private weight keeps its name
    s, t = expected_affine(step, initializer_array(model, "c0"))
    w = initializer_array(model, "W").astype(np.float64)
    np.testing.assert_array_equal(initializer_array(folded, "W"), (w * s[:, None, None, None]).astype(np.float32))
    if bias:
        b = initializer_array(model, "B").astype(np.float64)
        assert conv.input[2] == "B"
        np.testing.assert_array_equal(initializer_array(folded, "B"), (b * s + t).astype(np.float32))
    elif step.op in ("Mul", "Div"):  # a pure scale: no zero bias is made up
        assert len(conv.input) == 2
    else:  # a shift on a Conv without bias: a bias is created, under a new name
        assert conv.input[2] not in initializer_names(model) | {"X", "Y", "lin_out"}
        np.testing.assert_array_equal(initializer_array(folded, conv.input[2]), t.astype(np.float32))
    assert initializer_names(folded) == set(conv.input[1:])  # the constant operand is gone
    assert_equivalent(model, folded)


SHAPES = {"[C,1,1]": (C, 1, 1), "[1,C,1,1]": (1, C, 1, 1), "scalar": (), "[1]": (1,), "[1,1,1,1]": (1, 1, 1, 1)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_every_per_channel_constant_shape_folds(shape):
    model = linear_chain_model("Conv", [Step("Mul", shape), Step("Add", shape)])
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["Conv"]
    assert_equivalent(model, result.model)


def test_chain_folds_one_op_at_a_time_into_one_conv():
    steps = [Step("Mul", (C, 1, 1)), Step("Add", (1, C, 1, 1)), Step("Sub", ()), Step("Div", (C, 1, 1)),
             Step("Sub", (1,), constant_first=True)]
    model = linear_chain_model("Conv", steps, bias=False)
    result = fold_all(model, folds=len(steps))
    assert [(f.rule, f.node, f.into) for f in result.folds] == [("affine-linear", f"op{k}", "lin") for k in range(5)]
    assert op_types(result.model) == ["Conv"]
    assert list(node_named(result.model, "lin").output) == ["Y"]
    assert len(initializer_names(result.model)) == 2  # W and the one bias made on the way
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_then_mul_folds_along_each_groups_output_channels(group):
    model = linear_chain_model("ConvTranspose", [Step("Mul", (1, 4 * group, 1, 1)), Step("Add", (4 * group, 1, 1))],
                               group=group)
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["ConvTranspose"]
    assert node_named(result.model, "lin").attribute == node_named(model, "lin").attribute
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "B-transposed"])
@pytest.mark.parametrize("shape", [(1, C), (C,), ()], ids=["[1,N]", "[N]", "scalar"])
def test_gemm_then_mul_folds_and_beta_becomes_1(shape, trans_b):
    model = linear_chain_model("Gemm", [Step("Mul", shape), Step("Sub", shape, constant_first=True)], trans_b=trans_b)
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["Gemm"]
    gemm = node_named(result.model, "lin")
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    assert attrs == {"alpha": 0.75, "beta": 1.0, "transB": int(trans_b)}
    assert_equivalent(model, result.model)


def test_matmul_bias_add_then_mul_folds_into_weight_and_bias():
    model = linear_chain_model("MatMul", [Step("Add", (C,)), Step("Mul", (1, C))])
    result = fold_all(model, folds=2)
    # op0 (an Add after the bias Add) folds into the bias; op1 then scales weight and bias
    assert [(f.node, f.into) for f in result.folds] == [("op0", "lin"), ("op1", "lin")]
    assert [n.name for n in result.model.graph.node] == ["lin", "bias_add"]
    assert list(node_named(result.model, "bias_add").output) == ["Y"]
    assert initializer_names(result.model) == {"W", "B"}
    assert_equivalent(model, result.model)


def test_matmul_without_bias_then_mul_scales_the_weight_and_adds_no_node():
    model = linear_chain_model("MatMul", [Step("Mul", (C,)), Step("Div", ())], bias=False)
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["MatMul"]
    assert list(node_named(result.model, "lin").output) == ["Y"]
    assert initializer_names(result.model) == {"W"}
    assert_equivalent(model, result.model)


def test_matmul_without_bias_then_sub_becomes_its_bias_add():
    model = linear_chain_model("MatMul", [Step("Sub", (C,), constant_first=True), Step("Mul", (C,))], bias=False)
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["MatMul", "Add"]
    assert_equivalent(model, result.model)


def test_a_matmuls_own_bias_add_is_left_alone_and_not_reported():
    model = linear_chain_model("MatMul", [], bias=True)
    result = fold(model)
    assert result.folds == [] and result.refusals == []
    assert "bias of MatMul 'lin'" in match_reason(model, "bias_add")


def test_3d_matmul_then_mul_by_a_row_folds():
    model = text_model("""
        g (float[2, 3, 5] X) => (float[2, 3, 8] Y) {
            [lin] m = MatMul (X, W)
            [op0] Y = Mul (m, c0)
        }""", {"W": np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32),
               "c0": np.linspace(-2, 2, 8).astype(np.float32)})
    result = fold_all(model, folds=1)
    assert op_types(result.model) == ["MatMul"]
    assert_equivalent(model, result.model)


def test_constant_shared_by_two_ops_folds_into_both_and_is_dropped_once_unused():
    rng = np.random.default_rng(2)
    model = text_model("""
        g (float[1, 4, 6, 6] X) => (float[1, 8, 6, 6] Y, float[1, 8, 6, 6] Z) {
            [a] u = Conv <pads = [1, 1, 1, 1]> (X, W1)
            [op_a] Y = Mul (u, s)
            [b] v = Conv (X, W2)
            [op_b] Z = Mul (v, s)
        }""", {"W1": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
               "W2": rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
               "s": rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32)})
    result = fold_all(model, folds=2)
    assert op_types(result.model) == ["Conv", "Conv"]
    assert initializer_names(result.model) == {"W1", "W2"}
    assert_equivalent(model, result.model)


def test_shared_weight_gets_a_fresh_name_and_the_other_conv_keeps_it():
    rng = np.random.default_rng(3)
    model = text_model("""
        g (float[1, 4, 6, 6] X) => (float[1, 8, 4, 4] Y, float[1, 8, 4, 4] Z) {
            [a] u = Conv (X, W)
            [op0] Y = Mul (u, s)
            [b] Z = Conv (X, W)
        }""", {"W": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
               "s": rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32)})
    result = fold_all(model, folds=1)
    a, b = node_named(result.model, "a"), node_named(result.model, "b")
    assert list(b.input) == ["X", "W"] and a.input[1] != "W"
    np.testing.assert_array_equal(initializer_array(result.model, "W"), initializer_array(model, "W"))
    assert_equivalent(model, result.model)


# -- affine-linear: refusals, one per precondition ---------------------------------------------------------


@pytest.mark.parametrize("shape, why", [
    ((C,), "broadcasts along W"),
    ((1, 1, 6, 1), "varies along H"),
    ((1, C, 6, 1), "varies along H too"),
    ((2, C, 1, 1), "varies along N"),
], ids=["[C]", "[1,1,H,1]", "[1,C,H,1]", "[2,C,1,1]"])
def test_conv_then_mul_by_a_constant_that_is_not_per_channel_is_refused(shape, why):
    model = linear_chain_model("Conv", [Step("Mul", shape)], width=C)  # W == C: [C] broadcasts without error
    reason = refused(model)
    assert f"its operand 'c0' of shape {list(shape)} is not per output channel" in reason, why


def test_constant_with_more_dims_than_the_output_is_refused():
    model = linear_chain_model("Conv", [Step("Add", (1, 1, C, 1, 1))])
    assert "has more dimensions than the output (rank 4)" in refused(model)


def test_gemm_then_mul_by_a_column_is_refused():
    model = linear_chain_model("Gemm", [Step("Mul", (3, 1))])
    assert "is not per output channel" in refused(model)


def test_div_by_a_constant_with_a_zero_is_refused():
    value = np.linspace(1, 2, C).astype(np.float32)
    value[5] = 0
    model = linear_chain_model("Conv", [Step("Div", (C, 1, 1), value=value)])
    assert refused(model) == "it divides by zero (channel 5 of 'c0')"


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_constant_is_refused(bad):
    value = np.ones(C, np.float32)
    value[2] = bad
    model = linear_chain_model("Conv", [Step("Mul", (C, 1, 1), value=value)])
    assert refused(model) == "its operand 'c0' has non-finite values"


def test_constant_divided_by_the_conv_output_is_no_match():
    model = linear_chain_model("Conv", [Step("Div", (C, 1, 1), constant_first=True)])
    not_reported(model)
    assert "not affine" in match_reason(model, "op0")


def test_mul_by_an_activation_is_no_match_and_not_reported():
    model = text_model("""
        g (float[1, 4, 6, 6] X, float[1, 8, 4, 4] G) => (float[1, 8, 4, 4] Y) {
            [lin] u = Conv (X, W)
            [op0] Y = Mul (u, G)
        }""", {"W": np.ones((8, 4, 3, 3), np.float32)})
    not_reported(model)
    assert match_reason(model, "op0") == "no operand is a constant"


def test_add_of_two_conv_outputs_is_not_reported():
    model = text_model("""
        g (float[1, 4, 6, 6] X) => (float[1, 8, 4, 4] Y) {
            [a] u = Conv (X, W)
            [b] v = Conv (X, W)
            [op0] Y = Add (u, v)
        }""", {"W": np.ones((8, 4, 3, 3), np.float32)})
    assert fold(model).refusals == []


def test_scaled_attention_scores_are_not_reported():
    """MatMul of two activations is no layer: its Div by sqrt(d) is not a missed fold."""
    model = text_model("""
        g (float[2, 3, 4] Q, float[2, 4, 3] K) => (float[2, 3, 3] Y) {
            [scores] s = MatMul (Q, K)
            [op0] Y = Div (s, d)
        }""", {"d": np.array(2.0, np.float32)})
    not_reported(model)
    assert "no constant weight" in match_reason(model, "op0")


def test_conv_output_read_by_another_node_is_refused():
    model = linear_chain_model("Conv", [Step("Mul", PER_CHANNEL_4D)])
    model.graph.node.append(helper.make_node("Relu", ["lin_out"], ["side"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("side", onnx.TensorProto.FLOAT, [1, 8, 6, 6]))
    assert refused(model) == "Conv 'lin' output 'lin_out' also feeds Relu 'side'"


def test_conv_output_that_is_a_graph_output_is_refused():
    model = linear_chain_model("Conv", [Step("Mul", PER_CHANNEL_4D)])
    model.graph.output.append(helper.make_tensor_value_info("lin_out", onnx.TensorProto.FLOAT, [1, 8, 6, 6]))
    assert refused(model) == "Conv 'lin' output 'lin_out' is also a graph output"


def test_matmul_output_read_past_its_bias_add_is_refused():
    model = linear_chain_model("MatMul", [Step("Mul", (C,))])
    model.graph.output.append(helper.make_tensor_value_info("lin_out", onnx.TensorProto.FLOAT, [3, 8]))
    assert refused(model) == "Add 'bias_add' output 'lin_out' is also a graph output"


def test_overridable_constant_is_refused():
    model = linear_chain_model("Conv", [Step("Mul", PER_CHANNEL_4D)])
    model.graph.input.append(helper.make_tensor_value_info("c0", onnx.TensorProto.FLOAT, list(PER_CHANNEL_4D)))
    assert "'c0' is an initializer also listed as a graph input" in refused(model)


def test_float16_fold_that_overflows_is_refused():
    model = linear_chain_model("Conv", [Step("Mul", (), value=np.array(60000.0))], dtype=np.float16)
    w = initializer_array(model, "W").copy()
    w[0, 0, 0, 0] = 2.0  # 2 * 60000 > 65504, the float16 maximum
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    assert "folded weight of Conv 'lin' overflows float16" in refused(model)


def test_legacy_broadcast_before_opset_7_is_refused():
    model = linear_chain_model("Conv", [Step("Mul", (C,))], width=C, opset=6)
    node_named(model, "op0").attribute.extend([helper.make_attribute("broadcast", 1), helper.make_attribute("axis", 1)])
    assert refused(model) == "it uses legacy broadcasting (broadcast=1, opset < 7), which bnfold does not fold"


# -- bn-scale -----------------------------------------------------------------------------------------------

BN_RELU_SCALE = """
    g (float[2, 8, 5, 5] X) => (float[2, 8, 5, 5] Y) {
        [relu] r = Relu (X)
        [bn] b = BatchNormalization <epsilon = 0.001> (r, bn_scale, bn_bias, bn_mean, bn_var)
        [op0] m = Mul (b, c0)
        [op1] Y = Add (c1, m)
    }"""


def bn_model(text: str = BN_RELU_SCALE, **extra: np.ndarray) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    values = bn_stats(rng, C) | {"c0": rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32),
                                 "c1": rng.standard_normal((1, C, 1, 1)).astype(np.float32)}
    return text_model(text, values | extra)


def test_bn_after_relu_absorbs_its_scale_layer():
    model = bn_model()
    result = fold(model)
    assert [(f.rule, f.node, f.into) for f in result.folds] == [("bn-scale", "op0", "bn"), ("bn-scale", "op1", "bn")]
    assert [(r.node, r.rule) for r in result.refusals] == [("bn", "conv-bn")]  # no linear op before the BN
    folded = result.model
    check_full(folded)
    assert op_types(folded) == ["Relu", "BatchNormalization"]
    bn = node_named(folded, "bn")
    assert list(bn.input) == ["r", "bn_scale", "bn_bias", "bn_mean", "bn_var"]  # private: names kept
    assert list(bn.output) == ["Y"]
    gamma, beta = (initializer_array(model, n).astype(np.float64) for n in ("bn_scale", "bn_bias"))
    s, t = initializer_array(model, "c0").reshape(-1).astype(np.float64), initializer_array(model, "c1").reshape(-1)
    np.testing.assert_array_equal(initializer_array(folded, "bn_scale"), (s * gamma).astype(np.float32))
    np.testing.assert_array_equal(initializer_array(folded, "bn_bias"),
                                  ((s * beta).astype(np.float32).astype(np.float64) + t).astype(np.float32))
    for name in ("bn_mean", "bn_var"):
        np.testing.assert_array_equal(initializer_array(folded, name), initializer_array(model, name))
    assert initializer_names(folded) == {"bn_scale", "bn_bias", "bn_mean", "bn_var"}
    assert_equivalent(model, folded)


@pytest.mark.parametrize("step", OPS.values(), ids=OPS.keys())
def test_every_op_folds_into_a_bn(step):
    operands = "c0, b" if step.constant_first else "b, c0"
    model = bn_model(f"""
        g (float[2, 8, 5, 5] X) => (float[2, 8, 5, 5] Y) {{
            [relu] r = Relu (X)
            [bn] b = BatchNormalization (r, bn_scale, bn_bias, bn_mean, bn_var)
            [op0] Y = {step.op} ({operands})
        }}""")
    result = fold(model)
    assert result.folds == [Fold("bn-scale", "op0", step.op, "bn", "BatchNormalization")]
    assert op_types(result.model) == ["Relu", "BatchNormalization"]
    assert_equivalent(model, result.model)


def test_bn_on_2d_input_takes_a_vector():
    model = bn_model("""
        g (float[4, 8] X) => (float[4, 8] Y) {
            [relu] r = Relu (X)
            [bn] b = BatchNormalization (r, bn_scale, bn_bias, bn_mean, bn_var)
            [op0] Y = Mul (b, v)
        }""", v=np.linspace(0.5, 2, C).astype(np.float32))
    result = fold(model)
    assert [f.node for f in result.folds] == ["op0"]
    assert_equivalent(model, result.model)


def test_bn_after_conv_then_scale_layer_all_fold_into_the_conv():
    model = bn_model("""
        g (float[2, 4, 5, 5] X) => (float[2, 8, 5, 5] Y) {
            [conv] u = Conv <pads = [1, 1, 1, 1]> (X, W)
            [bn] b = BatchNormalization (u, bn_scale, bn_bias, bn_mean, bn_var)
            [op0] m = Mul (b, c0)
            [op1] Y = Add (m, c1)
        }""", W=np.random.default_rng(5).standard_normal((8, 4, 3, 3)).astype(np.float32))
    result = fold_all(model, folds=3)
    assert [(f.rule, f.node, f.into) for f in result.folds] == [
        ("conv-bn", "bn", "conv"), ("affine-linear", "op0", "conv"), ("affine-linear", "op1", "conv")]
    assert op_types(result.model) == ["Conv"]
    assert list(node_named(result.model, "conv").output) == ["Y"]
    assert_equivalent(model, result.model)


def test_bn_sharing_its_scale_and_bias_gets_fresh_ones():
    model = bn_model("""
        g (float[2, 8, 5, 5] X) => (float[2, 8, 5, 5] Y, float[2, 8, 5, 5] Z) {
            [relu] r = Relu (X)
            [bn] b = BatchNormalization (r, bn_scale, bn_bias, bn_mean, bn_var)
            [op0] Y = Mul (b, c0)
            [bn2] Z = BatchNormalization (X, bn_scale, bn_bias, bn_mean, bn_var)
        }""")
    result = fold(model)
    assert [f.node for f in result.folds] == ["op0"]
    bn, bn2 = node_named(result.model, "bn"), node_named(result.model, "bn2")
    assert list(bn2.input[1:]) == ["bn_scale", "bn_bias", "bn_mean", "bn_var"]
    assert bn.input[1] not in initializer_names(model) and bn.input[2] not in initializer_names(model)
    assert list(bn.input[3:]) == ["bn_mean", "bn_var"]
    for name in ("bn_scale", "bn_bias"):
        np.testing.assert_array_equal(initializer_array(result.model, name), initializer_array(model, name))
    assert_equivalent(model, result.model)


def test_bn_after_a_conv_it_cannot_fold_into_still_absorbs_its_scale_layer():
    """conv-bn refuses (the Conv's output is read twice); the Mul and Add still go, into the BN."""
    model = bn_model("""
        g (float[2, 4, 5, 5] X) => (float[2, 8, 5, 5] Y, float[2, 8, 5, 5] Z) {
            [conv] u = Conv <pads = [1, 1, 1, 1]> (X, W)
            [bn] b = BatchNormalization (u, bn_scale, bn_bias, bn_mean, bn_var)
            [op0] m = Mul (b, c0)
            [op1] Y = Add (m, c1)
            [side] Z = Relu (u)
        }""", W=np.random.default_rng(5).standard_normal((8, 4, 3, 3)).astype(np.float32))
    result = fold(model)
    assert [(f.rule, f.node, f.into) for f in result.folds] == [("bn-scale", "op0", "bn"), ("bn-scale", "op1", "bn")]
    assert [(r.rule, r.node, r.reason) for r in result.refusals] == [
        ("conv-bn", "bn", "Conv 'conv' output 'u' also feeds Relu 'side'")]
    assert op_types(result.model) == ["Conv", "BatchNormalization", "Relu"]
    check_full(result.model)
    assert_equivalent(model, result.model)


def test_bn_output_that_is_a_graph_output_is_refused():
    model = bn_model()
    model.graph.output.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2, 8, 5, 5]))
    assert refused(model, "op0", rule="bn-scale") == "BatchNormalization 'bn' output 'b' is also a graph output"


def test_bn_in_training_mode_keeps_its_scale_layer():
    model = bn_model(BN_RELU_SCALE.replace("<epsilon = 0.001>", "<epsilon = 0.001, training_mode = 1>")
                     .replace("b = Batch", "b, running_mean, running_var = Batch"))
    reason = refused(model, "op0", rule="bn-scale")
    assert reason == ("BatchNormalization 'bn' before it: training_mode=1: "
                      "it normalizes with batch statistics, not an inference op")


def test_bn_output_read_twice_is_refused():
    model = bn_model(BN_RELU_SCALE.replace("[op1] Y = Add (c1, m)", "[op1] Y = Add (b, m)"))
    assert refused(model, "op0", rule="bn-scale") == "BatchNormalization 'bn' output 'b' also feeds Add 'op1'"


def test_bn_with_non_constant_statistics_is_refused():
    model = bn_model(BN_RELU_SCALE.replace("float[2, 8, 5, 5] X)", "float[2, 8, 5, 5] X, float[8] bn_mean)"))
    reason = refused(model, "op0", rule="bn-scale")
    assert reason == ("BatchNormalization 'bn' before it: its mean is not a constant: "
                      "'bn_mean' is an initializer also listed as a graph input, so callers may override it")


def test_bn_of_unknown_rank_takes_only_a_scalar():
    def unknown_rank(model: onnx.ModelProto) -> onnx.ModelProto:
        # Relu and BN: unknown rank too. The checker wants a shape on graph inputs; onnxruntime does not.
        model.graph.input[0].type.tensor_type.ClearField("shape")
        return model

    model = unknown_rank(bn_model())
    assert "the rank of the output is unknown" in refused(model, "op0", rule="bn-scale")
    scalar = unknown_rank(bn_model(c0=np.array(1.5, np.float32), c1=np.array([-0.5], np.float32)))
    result = fold(scalar)
    assert [f.node for f in result.folds] == ["op0", "op1"]
    assert_equivalent(bn_model(c0=np.array(1.5, np.float32), c1=np.array([-0.5], np.float32)), result.model)


def test_bn_then_mul_by_a_vector_on_4d_input_is_refused():
    model = bn_model(BN_RELU_SCALE.replace("5, 5]", "5, 8]"), c0=np.linspace(0.5, 2, C).astype(np.float32))
    reason = refused(model, "op0", rule="bn-scale")
    assert reason == "its operand 'c0' of shape [8] is not per output channel (expected 8 entries on axis 1)"


def test_float16_bn_scale_that_overflows_is_refused():
    rng = np.random.default_rng(6)
    stats = {k: v.astype(np.float16) for k, v in bn_stats(rng, C).items()}
    model = text_model(BN_RELU_SCALE.replace("float[", "float16[").replace("epsilon = 0.001", "epsilon = 0.01"),
                       stats | {"c0": np.full((C, 1, 1), 60000, np.float16), "c1": np.zeros((1, C, 1, 1), np.float16)})
    stats_scale = stats["bn_scale"].astype(np.float64)
    assert np.max(stats_scale) * 60000 > 65504
    assert "folded scale of BatchNormalization 'bn' overflows float16" in refused(model, "op0", rule="bn-scale")


def test_rank_of_follows_pooling_concat_and_broadcasting():
    model = text_model("""
        g (float[1, 8, 6, 6] X) => (float[1, 16, 3, 3] Y) {
            [pool] p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (X)
            [cat] q = Concat <axis = 1> (p, p)
            [add] Y = Add (q, k)
        }""", {"k": np.ones((16, 1, 1), np.float32)})
    graph = import_model(model).main
    tensors = {t.name: t for t in graph.graph.tensors().values()}
    tensors["p"].shape = tensors["q"].shape = None  # as in a model without value_info
    assert [rank_of(tensors[n], graph) for n in ("p", "q")] == [4, 4]


# -- the light DenseNet-121: Caffe2 scale layers after every BN ------------------------------------------------

DENSENET = LIGHT / "light_densenet121.onnx"


def scale_layer_constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each ``Unsqueeze`` that makes a scale-layer constant ``[C, 1, 1]`` (from a ConstantOfShape
    or an initializer ``[C]``) by an initializer (listed as an input, as IR 3 wants), with random
    values so the numerical check means something."""
    rng = np.random.default_rng(7)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    channels_of = {t.name: int(t.dims[0]) for t in graph.initializer if len(t.dims) == 1}
    for node in graph.node:
        if node.op_type == "ConstantOfShape":
            shape = [t for t in graph.initializer if t.name == node.input[0]][0]
            channels_of[node.output[0]] = int(numpy_helper.to_array(shape)[0])
    keep = []
    for node in graph.node:
        if node.op_type == "Unsqueeze":
            channels = channels_of[node.input[0]]
            value = rng.uniform(0.5, 1.5, (channels, 1, 1)).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            graph.input.append(helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, value.shape))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def check_densenet(model: onnx.ModelProto) -> None:
    before = op_types(model)
    result = fold(model)
    after = op_types(result.model)
    assert (before.count("Mul"), before.count("Add")) == (121, 121)
    assert (after.count("Mul"), after.count("Add")) == (0, 0)  # every scale layer is gone
    assert after.count("BatchNormalization") == 62  # those after MaxPool, AveragePool, Concat stay
    rules = [f.rule for f in result.folds]
    assert (rules.count("conv-bn"), rules.count("affine-linear"), rules.count("bn-scale")) == (59, 118, 124)
    assert {r.rule for r in result.refusals} == {"conv-bn"} and len(result.refusals) == 62
    check_full(result.model)
    out = assert_equivalent(model, result.model)
    assert all(np.std(v) > 0 for v in out.values())


def test_densenet_scale_layers_fold():
    check_densenet(scale_layer_constants_as_initializers(randomize_weights(onnx.load(DENSENET))))


def test_densenet_scale_layers_fold_as_exported():
    check_densenet(randomize_weights(onnx.load(DENSENET)))


# -- scopes: If branches ---------------------------------------------------------------------------------------


def if_model(branch_nodes: list[onnx.NodeProto], outer_nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    """``outer_nodes`` (making ``u`` from ``X``), then ``Y = If(cond)``: the then-branch runs
    ``branch_nodes`` (which may read ``u`` from the outer scope) ending in ``tz``; the else-branch is Relu(u)."""
    rng = np.random.default_rng(8)
    inits = {"W": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
             "c": rng.uniform(0.5, 2, (C, 1, 1)).astype(np.float32)} | bn_stats(rng, C)
    out = helper.make_tensor_value_info
    then = helper.make_graph(branch_nodes, "then", [], [out("tz", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    other = helper.make_graph([helper.make_node("Relu", ["u"], ["ez"], name="erelu")], "else", [],
                              [out("ez", onnx.TensorProto.FLOAT, [1, 8, 4, 4])])
    graph = helper.make_graph(
        [*outer_nodes, helper.make_node("If", ["cond"], ["Y"], name="if", then_branch=then, else_branch=other)], "g",
        [out("X", onnx.TensorProto.FLOAT, [1, 4, 6, 6]), out("cond", onnx.TensorProto.BOOL, [])],
        [out("Y", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check_full(model)
    return model


CONV = helper.make_node("Conv", ["X", "W"], ["u"], name="conv")
BN = helper.make_node("BatchNormalization", ["r", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["u"], name="bn")


def test_conv_and_mul_inside_a_branch_fold_there():
    inner = helper.make_node("Conv", ["X", "W"], ["v"], name="inner_conv")
    model = if_model([inner, helper.make_node("Mul", ["v", "c"], ["tz"], name="tmul")],
                     [helper.make_node("Relu", ["X"], ["x_relu"], name="relu"), CONV])
    result = fold_all(model, folds=1)
    assert result.folds == [Fold("affine-linear", "tmul", "Mul", "inner_conv", "Conv", "if/then_branch")]
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("outer, rule, producer", [
    ([CONV], "affine-linear", "Conv 'conv'"),
    ([helper.make_node("Conv", ["X", "W"], ["c0_out"], name="c0"),
      helper.make_node("Relu", ["c0_out"], ["r"], name="relu"), BN],
     "bn-scale", "BatchNormalization 'bn'"),
], ids=["conv-outside", "bn-outside"])
def test_op_in_a_branch_does_not_fold_into_a_node_of_the_enclosing_graph(outer, rule, producer):
    model = if_model([helper.make_node("Mul", ["u", "c"], ["tz"], name="tmul")], outer)
    result = fold(model)
    mine = [r for r in result.refusals if r.node == "tmul"]
    assert [(r.rule, r.graph, r.reason) for r in mine] == [
        (rule, "if/then_branch", f"{producer} is in an enclosing graph; bnfold does not fold across graph scopes")]
    assert "tmul" not in {f.node for f in result.folds}
    check_full(result.model)
