"""The Conv → BatchNormalization rule, end to end through ``bnfold.fold``.

Every variant that folds is checked twice: the exact structure of the result (which nodes,
which tensors, which names) and its numbers (original and folded model run on the same inputs
agree within ``bnfold.tolerances``). Every precondition has a negative test: nothing folds, the
input comes back untouched, and the refusal says why.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import bnfold
from bnfold.rules import Fold
from builders import bn_after_relu_model, conv_bn_model, two_branch_model
from conftest import (
    assert_equivalent,
    check_full,
    fold_expecting,
    initializer,
    initializer_array,
    initializer_names,
    input_names,
    node_named,
    op_types,
    random_feeds,
    refusal_for,
    run_ort,
)

CONV_BN_FOLD = Fold("conv-bn", "bn", "BatchNormalization", "conv", "Conv")
BN_PARAMS = ("bn_scale", "bn_bias", "bn_mean", "bn_var")


# -- local model edits -----------------------------------------------------------------------


def set_node_attr(model: onnx.ModelProto, node: str, name: str, value) -> onnx.ModelProto:
    """``model`` with attribute ``name`` of ``node`` set to ``value`` (in place; returned for chaining)."""
    target = node_named(model, node)
    kept = [a for a in target.attribute if a.name != name]
    del target.attribute[:]
    target.attribute.extend(kept + [helper.make_attribute(name, value)])
    return model


def declare_inputs(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    """List initializers ``names`` as graph inputs too: with IR >= 4 that makes them overridable."""
    for name in names:
        t = initializer(model, name)
        model.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return model


def bn_affine64(model: onnx.ModelProto, prefix: str = "bn", eps: float = 1e-5):
    """``(s, t)`` of BN ``prefix`` computed in float64 from its initializers."""
    gamma, beta, mean, var = (initializer_array(model, f"{prefix}_{p}").astype(np.float64)
                              for p in ("scale", "bias", "mean", "var"))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def with_if(model: onnx.ModelProto, nodes: list[onnx.NodeProto], rank: int) -> onnx.ModelProto:
    """Add ``if_out = If(cond)`` to ``model``; each branch runs a copy of ``nodes``, whose last output is
    the branch's output. Branch nodes may read main-graph tensors (outer scope)."""

    def branch(name: str) -> onnx.GraphProto:
        copies = []
        for node in nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{name}_{node.name or node.op_type}"
            copies.append(copy)
        copies[-1].output[0] = f"{name}_z"
        out = helper.make_tensor_value_info(f"{name}_z", onnx.TensorProto.FLOAT, [None] * rank)
        return helper.make_graph(copies, name, [], [out])

    model.graph.input.append(helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["cond"], ["if_out"], name="if",
                                             then_branch=branch("then"), else_branch=branch("else")))
    model.graph.output.append(helper.make_tensor_value_info("if_out", onnx.TensorProto.FLOAT, [None] * rank))
    check_full(model)
    return model


# -- variants that fold ------------------------------------------------------------------------

CONV_VARIANTS = {
    "rank1": dict(rank=1),
    "rank2": dict(rank=2),
    "rank3": dict(rank=3, spatial=5),
    "group2": dict(group=2),
    "depthwise": dict(group=4, c_in=4, c_out=4),
    "rank1-depthwise": dict(rank=1, group=8, c_in=8, c_out=8),
    "depthwise-multiplier-2": dict(group=4, c_in=4, c_out=8),
    "pointwise": dict(kernel=1),
    "rank3-group2": dict(rank=3, group=2, spatial=5),
    "strides": dict(strides=[2, 1]),
    "dilations": dict(dilations=[2, 1]),
    "explicit-pads": dict(pads=[1, 0, 2, 1]),
    "auto_pad-SAME_UPPER": dict(auto_pad="SAME_UPPER", strides=2),
    "auto_pad-SAME_LOWER": dict(auto_pad="SAME_LOWER", strides=2),
    "auto_pad-VALID": dict(auto_pad="VALID"),
    "rank3-everything": dict(rank=3, spatial=7, group=2, strides=[1, 2, 1], dilations=[2, 1, 1], pads=1),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("variant", CONV_VARIANTS.values(), ids=CONV_VARIANTS.keys())
def test_conv_variant_folds_into_a_single_conv(variant, bias):
    model = conv_bn_model(bias=bias, **variant)
    result = fold_expecting(model)
    folded = result.model

    assert result.folds == [CONV_BN_FOLD]
    assert op_types(folded) == ["Conv"]
    conv, original_conv = node_named(folded, "conv"), node_named(model, "conv")
    assert list(conv.attribute) == list(original_conv.attribute)
    assert list(conv.output) == ["Y"]
    assert list(conv.input[:2]) == ["X", "W"]  # a private weight keeps its name
    assert len(conv.input) == 3
    bias_name = conv.input[2]
    if bias:
        assert bias_name == "B"
    else:  # a new bias tensor, with a name the original did not use, of the weight's dtype
        assert bias_name not in initializer_names(model) | {"X", "Y", "conv_out"}
    assert initializer_names(folded) == {"W", bias_name}
    new_bias = initializer(folded, bias_name)
    assert list(new_bias.dims) == [variant.get("c_out", 8)]
    assert new_bias.data_type == initializer(model, "W").data_type
    assert_equivalent(model, folded)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_folded_tensors_are_the_float64_fold_cast_once(bias):
    """W' = s·W along the output channels, b' = s·b + t, computed in float64 and cast once."""
    model = conv_bn_model(bias=bias)
    folded = fold_expecting(model).model
    conv = node_named(folded, "conv")
    assert conv.input[1] == "W"  # a private weight keeps its name, with the folded values
    s, t = bn_affine64(model)
    w = initializer_array(model, "W").astype(np.float64)
    b = initializer_array(model, "B").astype(np.float64) if bias else np.zeros(8)

    expected_w = (w * s[:, None, None, None]).astype(np.float32)
    np.testing.assert_array_equal(initializer_array(folded, conv.input[1]), expected_w)
    np.testing.assert_array_equal(initializer_array(folded, conv.input[2]), (b * s + t).astype(np.float32))


PARAM_FEEDERS = {"initializer": set(), "constant": {"Constant"}, "identity": {"Identity"},
                 "constant_of_shape": {"ConstantOfShape"}}


@pytest.mark.parametrize("params, feeders", PARAM_FEEDERS.items(), ids=PARAM_FEEDERS.keys())
def test_bn_parameter_sources_fold_and_leave_nothing_behind(params, feeders):
    model = conv_bn_model(params=params)
    assert set(op_types(model)) == {"Conv", "BatchNormalization"} | feeders
    folded = fold_expecting(model).model

    assert op_types(folded) == ["Conv"]  # no dead Identity, Constant or ConstantOfShape
    assert initializer_names(folded) == {"W", "B"}  # the BN statistics (and their feeders) are gone
    assert_equivalent(model, folded)


@pytest.mark.parametrize("opset", [7, 9, 11, 14, 15, 17, 21, 22, 24])
def test_every_bn_opset_folds(opset):
    ir_version = max(8, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    model = conv_bn_model(opset=opset, ir_version=ir_version)
    result = fold_expecting(model)
    assert op_types(result.model) == ["Conv"]
    assert result.model.opset_import == model.opset_import
    assert_equivalent(model, result.model)


def test_bn_without_epsilon_uses_the_default():
    model = conv_bn_model(var=np.full(8, 2e-5))  # small enough for epsilon to matter
    bn = node_named(model, "bn")
    kept = [a for a in bn.attribute if a.name != "epsilon"]
    del bn.attribute[:]
    bn.attribute.extend(kept)
    folded = fold_expecting(model).model
    assert_equivalent(model, folded)


def test_opset6_bn_with_is_test_folds():
    """onnxruntime has no BatchNormalization-6 kernel: the reference evaluator checks the numbers."""
    model = conv_bn_model(opset=6, ir_version=3)
    result = fold_expecting(model)
    assert op_types(result.model) == ["Conv"]
    assert_equivalent(model, result.model, backend="reference")


# -- IR version 3: every initializer is also a graph input, and a constant ------------------------

IR3_VARIANTS = {
    "plain": dict(),
    "no-bias": dict(bias=False),
    "shared-weight": dict(share_weight=True),
    "identity-params": dict(params="identity"),
    "chain": dict(bn_count=2),
}


@pytest.mark.parametrize("variant", IR3_VARIANTS.values(), ids=IR3_VARIANTS.keys())
def test_ir3_model_folds_and_lists_exactly_its_initializers_as_inputs(variant):
    model = conv_bn_model(ir_version=3, opset=8, **variant)
    result = fold_expecting(model, folds=variant.get("bn_count", 1))
    folded = result.model

    assert folded.ir_version == 3
    assert "BatchNormalization" not in op_types(folded)
    inputs = input_names(folded)
    assert len(inputs) == len(set(inputs))
    assert set(inputs) == {"X"} | initializer_names(folded)
    assert not set(inputs) & set(BN_PARAMS)
    assert_equivalent(model, folded)


# -- chains, branches, empty optional outputs ----------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_chain_of_bns_folds_every_bn_into_the_conv(count):
    model = conv_bn_model(bn_count=count)
    result = fold_expecting(model, folds=count)
    assert [(f.node, f.into) for f in result.folds] == [
        ("bn" if i == 0 else f"bn{i + 1}", "conv") for i in range(count)
    ]
    assert op_types(result.model) == ["Conv"]
    assert list(node_named(result.model, "conv").output) == ["Y"]
    assert initializer_names(result.model) == {"W", "B"}
    assert_equivalent(model, result.model)


def test_two_branches_fold_both():
    model = two_branch_model()
    result = fold_expecting(model, folds=2)
    assert {(f.node, f.into) for f in result.folds} == {("b1", "c1"), ("b2", "c2")}
    assert [n.name for n in result.model.graph.node] == ["c1", "r1", "c2", "add"]
    assert list(node_named(result.model, "c1").output) == ["b1_out"]
    assert list(node_named(result.model, "c2").output) == ["b2_out"]
    assert_equivalent(model, result.model)


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_bn_declaring_empty_optional_outputs_folds(opset):
    """``["Y", "", "", "", ""]`` is legal before opset 14. onnxruntime crashes on it in-process, so
    the numerical check (``assert_equivalent``) runs it with the empty names stripped."""
    model = conv_bn_model(opset=opset, bn_extra_outputs="empty")
    assert list(node_named(model, "bn").output) == ["Y", "", "", "", ""]
    result = fold_expecting(model)
    assert op_types(result.model) == ["Conv"]
    assert list(node_named(result.model, "conv").output) == ["Y"]
    assert_equivalent(model, result.model)


def test_bn_with_empty_optional_outputs_validates_in_a_child_process():
    model = conv_bn_model(opset=9, bn_extra_outputs="empty")
    folded = fold_expecting(model).model
    check = bnfold.validate(model, folded)
    assert check.passed, check
    assert check.backend.startswith("onnxruntime")


def test_conv_with_an_empty_bias_input_gets_a_bias():
    model = conv_bn_model(bias=False)
    node_named(model, "conv").input.append("")  # an omitted optional input, spelled out
    folded = fold_expecting(model).model
    conv = node_named(folded, "conv")
    assert len(conv.input) == 3 and conv.input[2] in initializer_names(folded)
    assert_equivalent(model, folded)


def test_float16_conv_with_float32_bn_statistics_folds_into_float16_weights():
    """From opset 15 the BN statistics may have another dtype than X."""
    model = conv_bn_model(dtype=np.float16, opset=15)
    for name in BN_PARAMS:
        tensor = initializer(model, name)
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), name))
    check_full(model)
    folded = fold_expecting(model).model
    assert {t.data_type for t in folded.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert_equivalent(model, folded)


def test_bns_sharing_deduplicated_statistics_both_fold():
    """Exporters deduplicate identical tensors: both BNs read b1's statistics."""
    model = two_branch_model()
    node_named(model, "b2").input[1:] = ["b1_scale", "b1_bias", "b1_mean", "b1_var"]
    kept = [t for t in model.graph.initializer if not t.name.startswith("b2_")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    result = fold_expecting(model, folds=2)
    assert initializer_names(result.model) == {"c1_W", "c1_B", "c2_W", "c2_B"}
    assert_equivalent(model, result.model)


# -- shared and private weights ------------------------------------------------------------------


@pytest.mark.parametrize("bn_count", [1, 2], ids=["one-bn", "bn-chain"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_shared_weights_get_new_names_and_the_other_conv_keeps_the_originals(bias, bn_count):
    model = conv_bn_model(share_weight=True, bias=bias, bn_count=bn_count)
    folded = fold_expecting(model, folds=bn_count).model
    conv, shared = node_named(folded, "conv"), node_named(folded, "conv_shared")

    assert list(shared.input) == list(node_named(model, "conv_shared").input)  # X, W (, B)
    new_names = list(conv.input[1:])
    assert len(new_names) == 2 and len(set(new_names)) == 2
    taken = initializer_names(model) | {"X", "Y", "Z", "conv_out"}
    assert not set(new_names) & taken
    for name in shared.input[1:]:  # the shared tensors keep their exact bytes
        assert initializer(folded, name) == initializer(model, name)
    assert initializer_names(folded) == set(shared.input[1:]) | set(new_names)

    got = assert_equivalent(model, folded)
    expected = run_ort(model, random_feeds(model))
    np.testing.assert_array_equal(got["Z"], expected["Z"])  # the shared conv is untouched


def names_bnfold_picks() -> list[str]:
    """The names of the new weight and bias of a folded Conv whose tensors are shared."""
    return list(node_named(fold_expecting(conv_bn_model(share_weight=True)).model, "conv").input[1:])


def taking_names(where: str, names: list[str]) -> onnx.ModelProto:
    """A shared-weight model in which ``names`` are already taken, in one of several places."""
    model = conv_bn_model(share_weight=True)
    nodes = [helper.make_node("Relu", ["X"], [names[0]], name="taken0"),
             helper.make_node("Neg", [names[0]], [names[1]], name="taken1")]
    if where == "subgraph":
        return with_if(model, [*nodes, helper.make_node("Identity", [names[1]], ["z"])], rank=4)
    if where == "main-graph":
        model.graph.node.extend(nodes)
        model.graph.output.append(helper.make_tensor_value_info(names[1], onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    elif where == "value_info":  # descriptions of tensors that do not exist (stale, but legal)
        model.graph.value_info.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3]) for n in names)
    elif where == "unused-initializer":
        model.graph.initializer.extend(numpy_helper.from_array(np.zeros(3, np.float32), n) for n in names)
    check_full(model)
    return model


@pytest.mark.parametrize("where", ["main-graph", "subgraph", "value_info", "unused-initializer"])
def test_new_names_avoid_every_name_already_in_the_model(where):
    """Whatever names bnfold picks for new tensors, it picks others when those are taken."""
    picked = names_bnfold_picks()
    model = taking_names(where, picked)
    folded = fold_expecting(model).model  # the full check fails on a name defined twice
    assert not set(node_named(folded, "conv").input[1:]) & set(picked)
    assert_equivalent(model, folded)


def two_convs_sharing_weights_each_with_bn() -> onnx.ModelProto:
    """``conv`` → ``bn`` → Y and ``conv_shared`` → ``bn_shared`` → Z, both convs reading W and B."""
    model = conv_bn_model(share_weight=True)
    rng = np.random.default_rng(7)
    node_named(model, "conv_shared").output[0] = "z_conv"
    values = {"scale": rng.uniform(0.5, 1.5, 8), "bias": rng.standard_normal(8),
              "mean": rng.standard_normal(8), "var": rng.uniform(0.5, 2.0, 8)}
    names = [f"bn_shared_{k}" for k in values]
    model.graph.initializer.extend(
        numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, values.values())
    )
    model.graph.node.append(helper.make_node("BatchNormalization", ["z_conv", *names], ["Z"], name="bn_shared"))
    check_full(model)
    return model


def test_two_convs_sharing_weights_both_fold_with_their_own_tensors():
    model = two_convs_sharing_weights_each_with_bn()
    result = fold_expecting(model, folds=2)
    folded = result.model
    assert {(f.node, f.into) for f in result.folds} == {("bn", "conv"), ("bn_shared", "conv_shared")}
    assert op_types(folded) == ["Conv", "Conv"]
    a, b = (node_named(folded, n).input[1:] for n in ("conv", "conv_shared"))
    assert not set(a) & set(b)
    assert_equivalent(model, folded)


def test_weight_from_a_constant_node_folds_and_the_node_goes():
    model = conv_bn_model()
    weight = initializer(model, "W")
    kept = [t for t in model.graph.initializer if t.name != "W"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = [helper.make_node("Constant", [], ["W"], value=weight, name="w_const"), *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    check_full(model)
    folded = fold_expecting(model).model
    assert op_types(folded) == ["Conv"]
    assert_equivalent(model, folded)


def test_weight_shared_through_an_identity_stays_intact_for_the_other_conv():
    model = conv_bn_model(share_weight=True)
    nodes = [helper.make_node("Identity", ["W"], ["W_id"], name="w_id"), *model.graph.node]
    for node in nodes:
        if node.op_type == "Conv":
            node.input[1] = "W_id"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    folded = fold_expecting(model).model
    assert list(node_named(folded, "conv_shared").input) == ["X", "W_id", "B"]
    assert list(node_named(folded, "w_id").input) == ["W"]
    assert initializer(folded, "W") == initializer(model, "W")
    got = assert_equivalent(model, folded)
    np.testing.assert_array_equal(got["Z"], run_ort(model, random_feeds(model))["Z"])


# -- subgraphs (If/Loop bodies) and functions ---------------------------------------------------------

SUBGRAPH_READS = {
    "conv-weights": (helper.make_node("Conv", ["X", "W", "B"], ["z"], kernel_shape=[3, 3]), 4, ("W", "B")),
    "bn-statistic": (helper.make_node("Add", ["bn_mean", "bn_mean"], ["z"]), 1, ("bn_mean",)),
}


@pytest.mark.parametrize("node, rank, read", SUBGRAPH_READS.values(), ids=SUBGRAPH_READS.keys())
def test_tensors_read_by_subgraphs_stay_in_the_main_graph(node, rank, read):
    """Folding must not copy outer-scope initializers into every branch that reads them: the
    model would grow by one copy per branch. (Weights a branch shares with the folded conv are
    shared weights: the conv gets new ones, the branch keeps the originals.)"""
    model = with_if(conv_bn_model(), [node], rank)
    result = fold_expecting(model)
    folded = result.model
    branch_initializers = {a.name: [t.name for t in a.g.initializer] for a in node_named(folded, "if").attribute}
    assert branch_initializers == {"then_branch": [], "else_branch": []}
    for name in read:  # the branches still read the original tensors, from the main graph
        assert initializer(folded, name) == initializer(model, name)
    assert initializer_names(folded) == set(read) | set(node_named(folded, "conv").input[1:])
    assert_equivalent(model, folded)


def test_conv_output_read_by_a_subgraph_is_another_consumer():
    model = with_if(conv_bn_model(), [helper.make_node("Relu", ["conv_out"], ["z"])], rank=4)
    refusal = refusal_for(model)
    assert "output 'conv_out' also feeds Relu" in refusal.reason


def with_if_running_conv_bn(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add an If whose branches each run their own Conv(X, W_in, B_in) → BN (all tensors local to the branch)."""
    inner = conv_bn_model(seed=3)
    model.graph.initializer.extend(
        numpy_helper.from_array(numpy_helper.to_array(t), f"{t.name}_in") for t in inner.graph.initializer
    )
    nodes = []
    for node in inner.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [i if i == "X" else f"{i}_in" for i in node.input]
        copy.output[:] = [f"{o}_in" for o in node.output]
        nodes.append(copy)
    return with_if(model, nodes, rank=4)


def test_bn_inside_a_subgraph_is_folded_or_reported():
    """Nothing is skipped silently: a BN in an If branch appears in the folds or in the refusals."""
    model = with_if_running_conv_bn(conv_bn_model())
    result = bnfold.fold(model)
    seen = {(f.node, f.graph) for f in result.folds} | {(r.node, r.graph) for r in result.refusals}
    assert ("bn", "main") in seen
    assert {node for node, graph in seen if graph != "main"} == {"then_bn", "else_bn"}


def test_bn_inside_a_model_local_function_is_reported():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[1, 2, 4] X, float[2, 2, 1] W, float[2] s, float[2] b, float[2] m, float[2] v) => (float[1, 2, 4] Y) {
            Y = local.conv_bn (X, W, s, b, m, v)
        }
        <domain: "local", opset_import: ["" : 17]>
        conv_bn (x, w, s, b, m, v) => (y) {
            c = Conv (x, w)
            y = BatchNormalization (c, s, b, m, v)
        }
    """)
    check_full(model)
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    assert [r.op for r in result.refusals] == ["BatchNormalization"]
    assert result.refusals[0].graph != "main"


# -- what the result keeps from the original ------------------------------------------------------

PRESERVATION_MODELS = {
    "plain": lambda: conv_bn_model(),
    "no-bias": lambda: conv_bn_model(bias=False),
    "symbolic-batch": lambda: conv_bn_model(symbolic_batch=True),
    "shared-weight": lambda: conv_bn_model(share_weight=True),
    "constant-params": lambda: conv_bn_model(params="constant"),
    "chain": lambda: conv_bn_model(bn_count=2),
    "two-branch": two_branch_model,
    "float16": lambda: conv_bn_model(dtype=np.float16),
}


@pytest.mark.parametrize("make", PRESERVATION_MODELS.values(), ids=PRESERVATION_MODELS.keys())
def test_fold_keeps_model_properties_inputs_and_outputs(make):
    model = make()
    folded = bnfold.fold(model).model
    assert folded is not model and "BatchNormalization" not in op_types(folded)

    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(folded, field) == getattr(model, field), field
    assert folded.doc_string and folded.metadata_props  # the builders set them: the check is not vacuous
    assert list(folded.opset_import) == list(model.opset_import)
    assert list(folded.metadata_props) == list(model.metadata_props)
    assert list(folded.graph.input) == list(model.graph.input)
    assert list(folded.graph.output) == list(model.graph.output)  # names, elem_types and shapes
    check_full(folded)


@pytest.mark.parametrize("name", ["r1", "add", "c1"], ids=["untouched-relu", "untouched-add", "folded-conv"])
def test_nodes_keep_their_doc_string_and_metadata(name):
    """Exporters record provenance on nodes (TorchScript: doc_string; dynamo: metadata_props)."""
    model = two_branch_model()
    node = node_named(model, name)
    node.doc_string = f"{name} doc"
    node.metadata_props.add(key="origin", value=f"{name} layer")
    folded = fold_expecting(model, folds=2).model
    kept = node_named(folded, name)
    assert (kept.doc_string, list(kept.metadata_props)) == (node.doc_string, list(node.metadata_props))


def test_value_info_keeps_surviving_tensors_and_drops_vanished_ones():
    model = onnx.shape_inference.infer_shapes(two_branch_model())
    original = {vi.name: vi for vi in model.graph.value_info}
    assert set(original) == {"c1_out", "b1_out", "r1_out", "c2_out", "b2_out"}
    folded = fold_expecting(model, folds=2).model  # the convs now produce b1_out and b2_out
    assert {vi.name: vi for vi in folded.graph.value_info} == {n: original[n] for n in ("b1_out", "r1_out", "b2_out")}


def test_value_info_of_removed_statistics_goes_with_them():
    model = conv_bn_model()
    model.graph.value_info.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [8]) for n in BN_PARAMS)
    check_full(model)
    folded = fold_expecting(model).model
    assert [vi.name for vi in folded.graph.value_info] == []


def test_fold_does_not_modify_its_input():
    model = conv_bn_model(share_weight=True, params="identity")
    before = model.SerializeToString()
    bnfold.fold(model)
    assert model.SerializeToString() == before


def test_fold_in_place_edits_the_given_model():
    model = conv_bn_model()
    original = onnx.ModelProto.FromString(model.SerializeToString())
    result = bnfold.fold(model, in_place=True)
    assert result.model is model
    assert op_types(model) == ["Conv"]
    assert_equivalent(original, model)


def test_folding_a_folded_model_is_a_no_op():
    folded = fold_expecting(two_branch_model(), folds=2).model
    again = bnfold.fold(folded)
    assert again.folds == [] and again.refusals == []
    assert again.model is folded


def test_fold_accepts_a_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(), path)
    result = bnfold.fold(path)
    assert result.folds == [CONV_BN_FOLD]
    assert op_types(result.model) == ["Conv"]


# -- dtypes --------------------------------------------------------------------------------------

DTYPES = {
    # onnxruntime has float16 Conv and BN on CPU, but no float64 or bfloat16 Conv.
    "float16": (dict(dtype=np.float16), "onnxruntime"),
    "float64": (dict(dtype=np.float64), "reference"),
    "bfloat16": (dict(dtype="bfloat16", opset=22, ir_version=10), "reference"),
}


@pytest.mark.parametrize("params", ["initializer", "constant"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("kwargs, backend", DTYPES.values(), ids=DTYPES.keys())
def test_dtype_folds_and_keeps_the_weight_dtype(kwargs, backend, bias, params):
    model = conv_bn_model(bias=bias, params=params, **kwargs)
    folded = fold_expecting(model).model
    conv = node_named(folded, "conv")
    elem = initializer(model, "W").data_type
    assert initializer(folded, conv.input[1]).data_type == elem
    assert initializer(folded, conv.input[2]).data_type == elem
    assert_equivalent(model, folded, backend=backend)


def test_bfloat16_weight_values_are_the_rounded_float64_fold():
    model = conv_bn_model(dtype="bfloat16", opset=22, ir_version=10)
    folded = fold_expecting(model).model
    s, _ = bn_affine64(model)
    w = initializer_array(model, "W").astype(np.float64)
    got = initializer_array(folded, "W")
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got, (w * s[:, None, None, None]).astype(ml_dtypes.bfloat16))


def test_validate_uses_the_reference_backend_where_onnxruntime_has_no_kernel():
    model = conv_bn_model(dtype=np.float64)
    check = bnfold.validate(model, fold_expecting(model).model)
    assert check.passed, check
    assert "reference" in check.backend


# -- preconditions: each one refuses, and says why --------------------------------------------------


def fp16_tiny_variance_model() -> onnx.ModelProto:
    """s = 1/sqrt(1e-11) ≈ 3e5, so the folded weights far exceed float16's 65504."""
    return conv_bn_model(dtype=np.float16, gamma=np.ones(8), var=np.zeros(8), eps=1e-11)


def declared_but_unused_statistics_model() -> onnx.ModelProto:
    """Opset 11 BN declaring named statistics outputs that nothing reads: still training mode."""
    model = conv_bn_model(opset=11, bn_extra_outputs="used")
    del model.graph.output[1:]
    return model


def nan_mean_model() -> onnx.ModelProto:
    mean = np.zeros(8)
    mean[3] = np.nan
    return conv_bn_model(mean=mean)


REFUSALS = {
    "training-mode": (
        lambda: conv_bn_model(training_mode=1, bn_extra_outputs="used"), "training_mode=1"),
    "running-mean-is-a-graph-output": (
        lambda: conv_bn_model(opset=11, bn_extra_outputs="used"), "running_mean output 'bn_running_mean' is used"),
    "statistics-outputs-declared-before-opset-14": (
        declared_but_unused_statistics_model,
        "declares its running_mean output 'bn_running_mean', which means training mode"),
    "conv-output-is-a-graph-output": (
        lambda: conv_bn_model(conv_out_is_graph_output=True), "'conv_out' is also a graph output"),
    "conv-output-has-another-consumer": (
        lambda: conv_bn_model(conv_out_extra_consumer=True), "'conv_out' also feeds Relu 'relu_side'"),
    "bn-param-is-a-graph-input": (
        lambda: conv_bn_model(params="graph_input"), "'bn_scale' is a graph input"),
    "bn-params-overridable": (
        lambda: conv_bn_model(params="overridable"), "'bn_scale' is an initializer also listed as a graph input"),
    "conv-weight-overridable": (
        lambda: declare_inputs(conv_bn_model(), "W"), "'W' is an initializer also listed as a graph input"),
    "conv-bias-overridable": (
        lambda: declare_inputs(conv_bn_model(), "B"), "'B' is an initializer also listed as a graph input"),
    "spatial-0-at-opset-7": (
        lambda: conv_bn_model(opset=7, spatial_attr=0), "spatial=0"),
    "is_test-0-at-opset-6": (
        lambda: set_node_attr(conv_bn_model(opset=6, ir_version=3), "bn", "is_test", 0), "is_test=0"),
    "float16-overflow": (fp16_tiny_variance_model, "folded weight of Conv 'conv' overflows float16"),
    "float16-underflow": (
        lambda: conv_bn_model(dtype=np.float16, gamma=np.full(8, 1e-5)),
        "folded weight of Conv 'conv' underflows float16"),
    "float16-bias-overflow": (
        lambda: conv_bn_model(dtype=np.float16, gamma=np.full(8, 1e4), var=np.ones(8), mean=np.full(8, 10.0)),
        "folded bias of Conv 'conv' overflows float16"),
    "variance-plus-eps-not-positive": (
        lambda: conv_bn_model(var=np.full(8, -1.0)), "variance + epsilon is not positive"),
    "bn-param-wrong-shape": (
        lambda: conv_bn_model(gamma=np.ones(4)), "'bn_scale' has shape [4], expected [8]"),
    "non-finite-statistics": (nan_mean_model, "mean has non-finite values"),
}


@pytest.mark.parametrize("make, reason", REFUSALS.values(), ids=REFUSALS.keys())
def test_precondition_refuses_with_its_reason(make, reason):
    model = make()
    refusal = refusal_for(model)
    assert (refusal.rule, refusal.node, refusal.op, refusal.stage) == ("conv-bn", "bn", "BatchNormalization", "check")
    assert reason in refusal.reason


def test_float16_overflow_leaves_no_inf_in_the_model():
    model = fp16_tiny_variance_model()
    result = bnfold.fold(model)
    assert result.folds == []
    for tensor in result.model.graph.initializer:
        assert np.all(np.isfinite(numpy_helper.to_array(tensor).astype(np.float64))), tensor.name


def conv_transpose_bn_model() -> onnx.ModelProto:
    model = conv_bn_model(c_in=8, c_out=8)  # W [8, 8, 3, 3] is a valid ConvTranspose weight too
    node_named(model, "conv").op_type = "ConvTranspose"
    check_full(model)
    return model


MATCH_REFUSALS = {
    "bn-after-relu": (bn_after_relu_model, "its input 'relu_out' comes from Relu 'relu', not a linear op"),
    "bn-on-a-graph-input": (
        lambda: onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[1, 2, 4] X, float[2] s, float[2] b, float[2] m, float[2] v) => (float[1, 2, 4] Y) {
                Y = BatchNormalization <epsilon = 1e-5> (X, s, b, m, v)
            }"""
        ),
        "is an input of the graph, not the output of a linear op",
    ),
}


@pytest.mark.parametrize("make, reason", MATCH_REFUSALS.values(), ids=MATCH_REFUSALS.keys())
def test_bn_without_a_conv_before_it_is_refused_at_match(make, reason):
    refusal = refusal_for(make())
    assert refusal.stage == "match"
    assert reason in refusal.reason


def test_two_bns_on_one_conv_output_are_both_refused():
    model = conv_bn_model()
    twin = onnx.NodeProto()
    twin.CopyFrom(node_named(model, "bn"))
    twin.name, twin.output[0] = "bn_twin", "Y2"
    model.graph.node.append(twin)
    model.graph.output.append(helper.make_tensor_value_info("Y2", onnx.TensorProto.FLOAT, [1, 8, None, None]))
    check_full(model)
    result = bnfold.fold(model)
    assert result.folds == [] and result.model is model
    assert sorted(r.node for r in result.refusals) == ["bn", "bn_twin"]
    assert all("also feeds BatchNormalization" in r.reason for r in result.refusals)


def test_refused_overridable_branch_keeps_its_inputs_while_the_other_folds():
    model = declare_inputs(two_branch_model(), "b1_scale", "b1_bias", "b1_mean", "b1_var")
    result = bnfold.fold(model)
    folded = result.model
    assert [(f.node, f.into) for f in result.folds] == [("b2", "c2")]
    assert [(r.node, r.stage) for r in result.refusals] == [("b1", "check")]
    assert "callers may override" in result.refusals[0].reason

    assert input_names(folded) == input_names(model) == ["X", "b1_scale", "b1_bias", "b1_mean", "b1_var"]
    for name in ("b1_scale", "b1_bias", "b1_mean", "b1_var"):
        assert initializer(folded, name) == initializer(model, name)
    assert op_types(folded) == ["Conv", "BatchNormalization", "Relu", "Conv", "Add"]
    check_full(folded)
    assert_equivalent(model, folded)


def test_unused_overridable_input_survives_folding():
    model = conv_bn_model()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.float32), "knob"))
    declare_inputs(model, "knob")
    folded = fold_expecting(model).model
    assert input_names(folded) == ["X", "knob"]
    assert initializer(folded, "knob") == initializer(model, "knob")


def test_refusal_is_reported_once_after_other_folds():
    """Conv → bn → bn2 where bn's output is also a graph output: bn folds, bn2 stays, reported once."""
    model = conv_bn_model(bn_count=2)
    model.graph.output.append(helper.make_tensor_value_info("bn_out", onnx.TensorProto.FLOAT, [1, 8, None, None]))
    result = bnfold.fold(model)
    assert [(f.node, f.into) for f in result.folds] == [("bn", "conv")]
    assert [(r.node, r.stage) for r in result.refusals] == [("bn2", "check")]
    assert "'bn_out' is also a graph output" in result.refusals[0].reason
    assert op_types(result.model) == ["Conv", "BatchNormalization"]
    assert_equivalent(model, result.model)


# -- the numerical check itself can fail ------------------------------------------------------------


def test_assert_equivalent_catches_a_wrong_fold():
    model = conv_bn_model()
    folded = fold_expecting(model).model
    bias = initializer(folded, "B")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), "B"))
    with pytest.raises(AssertionError, match="changed by folding"):
        assert_equivalent(model, folded)


@pytest.mark.parametrize("ir_version, opset", [(3, 8), (8, 17)], ids=["ir3", "ir8"])
def test_a_fold_inside_a_subgraph_keeps_the_model_valid(ir_version, opset):
    """New constants of a subgraph are initializers of the subgraph, except in IR 3, where every
    initializer must also be a graph input and an If/Loop body's inputs are fixed: Constant nodes."""
    base = conv_bn_model(ir_version=ir_version, opset=opset)
    if ir_version < 4:  # the branch weights, initializers of the main graph, are its inputs too
        listed = {i.name for i in base.graph.input}
        inner = conv_bn_model(seed=3)
        base.graph.input.extend(helper.make_tensor_value_info(f"{t.name}_in", t.data_type, list(t.dims))
                                for t in inner.graph.initializer if f"{t.name}_in" not in listed)
    model = with_if_running_conv_bn(base)
    result = bnfold.fold(model)
    assert {(f.node, f.graph) for f in result.folds} == {("bn", "main"), ("then_bn", "if/then_branch"),
                                                       ("else_bn", "if/else_branch")}
    folded = result.model
    check_full(folded)
    if_node = next(n for n in folded.graph.node if n.op_type == "If")
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    if ir_version < 4:
        assert len(then.initializer) == 0
        assert [n.op_type for n in then.node] == ["Constant", "Constant", "Conv"]
    else:
        assert len(then.initializer) == 2 and [n.op_type for n in then.node] == ["Conv"]
    for cond in (True, False):
        feeds = {**random_feeds(model), "cond": np.array(cond)}
        expected, got = run_ort(model, feeds), run_ort(folded, feeds)
        np.testing.assert_allclose(got["if_out"], expected["if_out"], rtol=1e-3, atol=1e-4)
