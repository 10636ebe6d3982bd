"""Model-local functions: attribute references, IR-10 overloads, subgraphs inside function bodies.

Rules under test:
- an attribute a rule reads (BN epsilon/training_mode, Gemm alpha/beta/transA/transB, Conv
  group/pads/auto_pad, ConvTranspose group, Mul's broadcast, a Constant's value) may be a reference to the function's
  attribute (``ref_attr_name``): its value is known per call only, so the fold is refused with that
  reason; an attribute the rule does not read may be a reference;
- functions are told apart by (domain, name, overload): every overload is a scope of its own;
- every graph reachable from the model is a scope: If/Loop/Scan bodies inside function bodies too.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from conftest import check_full, run_ort

C = 4
F = onnx.TensorProto.FLOAT


def _constants(rng, prefix: str = "", weight=(C, 2, 1, 1)) -> list[onnx.NodeProto]:
    """Constant nodes for a Conv weight and BN parameters (functions have no initializers)."""
    values = {"W": rng.standard_normal(weight) * 0.5, "g": rng.uniform(0.5, 1.5, C), "b": rng.standard_normal(C),
              "m": rng.standard_normal(C), "v": rng.uniform(0.5, 2.0, C)}
    return [helper.make_node("Constant", [], [prefix + k], value=numpy_helper.from_array(v.astype(np.float32), prefix + k))
            for k, v in values.items()]


def _function(name, nodes, inputs=("x",), attributes=(), overload="", opset=17) -> onnx.FunctionProto:
    f = helper.make_function("local", name, list(inputs), ["z"], nodes, [helper.make_opsetid("", opset)],
                             attributes=list(attributes))
    f.overload = overload
    return f


def _model(functions, calls, extra_inputs=(), ir_version=10) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(c.output[0], F, [1, C, 3, 3]) for c in calls]
    graph = helper.make_graph(calls, "g", [helper.make_tensor_value_info("x", F, [1, 2, 3, 3]), *extra_inputs], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=functions, ir_version=ir_version)
    check_full(model)
    return model


def _call(name, output, inputs=("x",), overload="", **attrs) -> onnx.NodeProto:
    node = helper.make_node(name, list(inputs), [output], domain="local", **attrs)
    node.overload = overload
    return node


def _ref(name: str, attr_type) -> onnx.AttributeProto:
    return helper.make_attribute_ref(name, attr_type)


def _feeds():
    return {"x": np.random.default_rng(5).standard_normal((1, 2, 3, 3)).astype(np.float32)}


def assert_same_outputs(model, folded, feeds=None):
    feeds = feeds or _feeds()
    expected, got = run_ort(model, feeds), run_ort(folded, feeds)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-4)


# -- attribute references ------------------------------------------------------------------------------------


def _conv_bn_body(rng, bn_refs=(), conv_refs=()):
    conv = helper.make_node("Conv", ["x", "W"], ["y"], name="conv")
    conv.attribute.extend(_ref(*r) for r in conv_refs)
    bn = helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn")
    bn.attribute.extend(_ref(*r) for r in bn_refs)
    return [*_constants(rng), conv, bn]


A = onnx.AttributeProto


@pytest.mark.parametrize("attr, attr_type, value", [("epsilon", A.FLOAT, 1e-3), ("training_mode", A.INT, 0)])
def test_a_bn_attribute_from_the_function_is_refused_with_the_reason(attr, attr_type, value):
    rng = np.random.default_rng(0)
    body = _conv_bn_body(rng, bn_refs=[(attr, attr_type)])
    model = _model([_function("F", body, attributes=[attr])], [_call("F", "z1", **{attr: value})])
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    [refusal] = result.refusals
    assert refusal.graph == "function local.F"
    assert f"{attr} of BatchNormalization 'bn' comes from the function's attribute '{attr}'" in refusal.reason


def test_a_conv_attribute_the_fold_does_not_read_may_be_a_reference():
    """conv-bn scales the weight per output channel whatever the strides or group: it reads neither."""
    rng = np.random.default_rng(1)
    body = _conv_bn_body(rng, conv_refs=[("strides", A.INTS)])
    model = _model([_function("F", body, attributes=["strides"])], [_call("F", "z1", strides=[1, 1])])
    result = bnfold.fold(model)
    assert [(f.rule, f.graph) for f in result.folds] == [("conv-bn", "function local.F")]
    check_full(result.model)
    assert_same_outputs(model, result.model)


@pytest.mark.parametrize("attr, attr_type", [("pads", A.INTS), ("group", A.INT), ("auto_pad", A.STRING)])
def test_a_conv_attribute_that_bn_linear_reads_is_refused(attr, attr_type):
    """BN → Conv needs the Conv's padding and group: a reference there refuses the fold."""
    rng = np.random.default_rng(2)
    values = {"pads": [0, 0, 0, 0], "group": 1, "auto_pad": "NOTSET"}
    conv = helper.make_node("Conv", ["n", "W"], ["z"], name="conv")
    conv.attribute.append(_ref(attr, attr_type))
    body = [*_constants(rng, weight=(C, 2, 1, 1)), *_bn_params_for_input(rng),
            helper.make_node("BatchNormalization", ["x", "ig", "ib", "im", "iv"], ["n"], name="bn"), conv]
    model = _model([_function("F", body, attributes=[attr])], [_call("F", "z1", **{attr: values[attr]})])
    result = bnfold.fold(model)
    assert result.folds == []
    [refusal] = [r for r in result.refusals if r.rule == "bn-linear"]
    assert f"{attr} of Conv 'conv' comes from the function's attribute" in refusal.reason


def _bn_params_for_input(rng):
    values = {"ig": rng.uniform(0.5, 1.5, 2), "ib": rng.standard_normal(2), "im": rng.standard_normal(2),
              "iv": rng.uniform(0.5, 2.0, 2)}
    return [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype(np.float32), k))
            for k, v in values.items()]


@pytest.mark.parametrize("attr, attr_type", [("alpha", A.FLOAT), ("beta", A.FLOAT), ("transA", A.INT),
                                             ("transB", A.INT)])
def test_a_gemm_attribute_from_the_function_is_refused(attr, attr_type):
    rng = np.random.default_rng(3)
    gemm = helper.make_node("Gemm", ["n", "B", "Cb"], ["z"], name="gemm")
    gemm.attribute.append(_ref(attr, attr_type))
    consts = {"B": rng.standard_normal((2, C)), "Cb": rng.standard_normal(C)}
    body = [*(helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype(np.float32), k))
              for k, v in consts.items()), *_bn_params_for_input(rng),
            helper.make_node("BatchNormalization", ["x", "ig", "ib", "im", "iv"], ["n"], name="bn"), gemm]
    value = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}[attr]
    f = _function("G", body, attributes=[attr])
    graph = helper.make_graph([_call("G", "z1", **{attr: value})], "g", [helper.make_tensor_value_info("x", F, [3, 2])],
                              [helper.make_tensor_value_info("z1", F, [3, C])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[f], ir_version=10)
    check_full(model)
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    reasons = " ".join(r.reason for r in result.refusals)
    assert f"{attr} of Gemm 'gemm' comes from the function's attribute" in reasons


def test_a_constant_value_from_the_function_is_not_a_constant():
    rng = np.random.default_rng(4)
    body = _conv_bn_body(rng)
    eps = helper.make_node("Constant", [], ["g"], name="gamma_from_call")
    eps.attribute.append(_ref("value_floats", A.FLOATS))
    body = [eps] + [n for n in body if n.output[0] != "g"]
    model = _model([_function("F", body, attributes=["value_floats"])], [_call("F", "z1", value_floats=[1.0] * C)])
    result = bnfold.fold(model)
    assert result.folds == []
    [refusal] = result.refusals
    assert "its scale is not a constant" in refusal.reason
    assert "value_floats comes from the function's attribute" in refusal.reason


# -- overloads -----------------------------------------------------------------------------------------------


def test_every_overload_is_a_scope_of_its_own():
    rng = np.random.default_rng(6)
    foldable = _function("F", _conv_bn_body(rng), overload="plain")
    refused = _function("F", _conv_bn_body(rng, bn_refs=[("epsilon", A.FLOAT)]), overload="eps",
                        attributes=["epsilon"])
    model = _model([foldable, refused],
                   [_call("F", "z1", overload="plain"), _call("F", "z2", overload="eps", epsilon=1e-5)])
    result = bnfold.fold(model)
    assert [(f.node, f.graph) for f in result.folds] == [("bn", "function local.F:plain")]
    assert [(r.node, r.graph) for r in result.refusals] == [("bn", "function local.F:eps")]
    assert "epsilon" in result.refusals[0].reason
    folded = result.model
    check_full(folded)
    assert [n.op_type for n in folded.functions[0].node if n.op_type != "Constant"] == ["Conv"]
    assert [n.op_type for n in folded.functions[1].node if n.op_type != "Constant"] == ["Conv", "BatchNormalization"]
    assert_same_outputs(model, folded)
    assert bnfold.fold(folded).folds == []  # a second fold changes nothing


# -- subgraphs inside function bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("branch", ["then", "else"])
def test_a_conv_bn_in_an_if_inside_a_function_is_folded(branch):
    rng = np.random.default_rng(7)
    inner = [*_constants(rng, "t_"), helper.make_node("Conv", ["x", "t_W"], ["ty"], name="tconv"),
             helper.make_node("BatchNormalization", ["ty", "t_g", "t_b", "t_m", "t_v"], ["tz"], name="tbn")]
    folding = helper.make_graph(inner, "fold", [], [helper.make_tensor_value_info("tz", F, None)])
    plain = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("Concat", ["r", "r"], ["rz"], axis=1)],
                              "plain", [], [helper.make_tensor_value_info("rz", F, None)])
    then_g, else_g = (folding, plain) if branch == "then" else (plain, folding)
    body = [helper.make_node("If", ["cond"], ["z"], name="choose", then_branch=then_g, else_branch=else_g)]
    model = _model([_function("G", body, inputs=("x", "cond"))], [_call("G", "z1", inputs=("x", "cond"))],
                   extra_inputs=[helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])])
    result = bnfold.fold(model)
    assert [(f.node, f.graph) for f in result.folds] == [("tbn", f"function local.G/choose/{branch}_branch")]
    check_full(result.model)
    for cond in (True, False):
        feeds = {**_feeds(), "cond": np.array(cond)}
        assert_same_outputs(model, result.model, feeds)


def test_a_loop_body_inside_a_function_is_scanned_and_outer_function_constants_count():
    """The Loop body reads the Conv weight and BN parameters from the function body (its outer scope)."""
    rng = np.random.default_rng(8)
    inner = [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Conv", ["x", "W"], ["y"], name="lconv"),
             helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["lz"], name="lbn")]
    loop_body = helper.make_graph(
        inner, "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("lz", F, None)])
    trips = numpy_helper.from_array(np.array(1, np.int64), "n")
    body = [*_constants(rng), helper.make_node("Constant", [], ["n"], value=trips),
            helper.make_node("Loop", ["n", ""], ["scan_z"], name="loop", body=loop_body),
            helper.make_node("Squeeze", ["scan_z", "axis0"], ["z"]),
            helper.make_node("Constant", [], ["axis0"], value=numpy_helper.from_array(np.array([0], np.int64), "a"))]
    body = body[:-2] + [body[-1], body[-2]]  # axis0 before the Squeeze that reads it
    model = _model([_function("L", body)], [_call("L", "z1")])
    result = bnfold.fold(model)
    assert [(f.node, f.graph) for f in result.folds] == [("lbn", "function local.L/loop/body")]
    check_full(result.model)
    assert_same_outputs(model, result.model)


def test_a_gemm_without_c_folds_even_when_its_beta_is_a_reference():
    """beta only scales C: without one its value does not matter, and the new C needs beta = 1,
    written over the reference (reading it in the rewrite escaped as an exception)."""
    rng = np.random.default_rng(10)
    gemm = helper.make_node("Gemm", ["x", "B"], ["y"], name="gemm")
    gemm.attribute.append(_ref("beta", A.FLOAT))
    consts = {"B": rng.standard_normal((2, C)), "g": rng.uniform(0.5, 1.5, C), "b": rng.standard_normal(C),
              "m": rng.standard_normal(C), "v": rng.uniform(0.5, 2.0, C)}
    body = [*(helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v.astype(np.float32), k))
              for k, v in consts.items()),
            gemm, helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["z"], name="bn")]
    graph = helper.make_graph([_call("G", "z1", beta=0.5)], "g", [helper.make_tensor_value_info("x", F, [3, 2])],
                              [helper.make_tensor_value_info("z1", F, [3, C])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[_function("G", body, attributes=["beta"])], ir_version=10)
    check_full(model)
    result = bnfold.fold(model)
    assert [(f.rule, f.node) for f in result.folds] == [("gemm-bn", "bn")]
    folded = result.model
    check_full(folded)
    [gemm] = [n for n in folded.functions[0].node if n.op_type == "Gemm"]
    beta = next(a for a in gemm.attribute if a.name == "beta")
    assert not beta.ref_attr_name and beta.f == 1.0 and len(gemm.input) == 3
    feeds = {"x": np.random.default_rng(11).standard_normal((3, 2)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(folded, feeds)["z1"], run_ort(model, feeds)["z1"], atol=1e-5, rtol=1e-4)
