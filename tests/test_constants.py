"""Constant resolution: ``FoldGraph.constant`` on a graph made by ``bnfold.graph.import_model``.

A BN parameter is a constant when it is an initializer (not overridable), or the output of a small
deterministic subgraph of constants (Constant, Identity, ConstantOfShape, Cast, Reshape, ...).
Everything else — graph inputs, overridable initializers, random or foreign ops — is refused with
a reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.errors import NoFold
from bnfold.graph import MAX_CONSTANT_DEPTH, import_model
from builders import conv_bn_model
from conftest import assert_equivalent, check_full, fold_expecting, initializer_names, op_types, refusal_for

HEADER = '<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>'


def parse(body: str, header: str = HEADER) -> onnx.ModelProto:
    return onnx.parser.parse_model(header + "\n" + body)


def constant_of(model: onnx.ModelProto, name: str) -> np.ndarray:
    graph = import_model(model).main
    return graph.constant(graph.graph.tensors()[name])


def refusal_of_constant(model: onnx.ModelProto, name: str) -> str:
    with pytest.raises(NoFold) as info:
        constant_of(model, name)
    return info.value.reason


def assert_same(value: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and values."""
    assert value.dtype == expected.dtype and value.shape == expected.shape, (value.dtype, value.shape)
    np.testing.assert_array_equal(value, expected)


# -- what is a constant ---------------------------------------------------------------------------

CONSTANTS = parse("""
g (float[3] X) => (float[3] Y)
<float[3] init = {1.0, 2.0, 3.0}, int64[1] shape3 = {3}>
{
    tensor = Constant <value = float[2] {4.0, 5.0}> ()
    scalar = Constant <value_float = 2.5> ()
    floats = Constant <value_floats = [1.0, 2.0]> ()
    ints = Constant <value_ints = [1, 2]> ()
    one_int = Constant <value_int = 7> ()
    ones = ConstantOfShape <value = float[1] {1.5}> (shape3)
    zeros = ConstantOfShape (shape3)
    id1 = Identity (init)
    id2 = Identity (id1)
    id3 = Identity (id2)
    Y = Add (X, id3)
}
""")

EXPECTED = {
    "init": np.array([1, 2, 3], np.float32),
    "tensor": np.array([4, 5], np.float32),
    "scalar": np.array(2.5, np.float32),
    "floats": np.array([1, 2], np.float32),
    "ints": np.array([1, 2], np.int64),
    "one_int": np.array(7, np.int64),
    "ones": np.full(3, 1.5, np.float32),
    "zeros": np.zeros(3, np.float32),  # ConstantOfShape without a value: float32 zeros
    "id3": np.array([1, 2, 3], np.float32),  # through an Identity chain
}


@pytest.mark.parametrize("name, expected", EXPECTED.items(), ids=EXPECTED.keys())
def test_constant_values(name, expected):
    assert_same(constant_of(CONSTANTS, name), expected)


def test_constant_of_shape_keeps_the_fill_dtype():
    fill = numpy_helper.from_array(np.array([0.25], np.float16), "fill")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["Y"], value=fill)], "g", [],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [4])],
        initializer=[numpy_helper.from_array(np.array([4], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert_same(constant_of(model, "Y"), np.full(4, 0.25, np.float16))


def cast_reshape_unsqueeze() -> str:
    """A constant subgraph: float64 ``raw`` [8] → Unsqueeze [1, 8] → Reshape [8] → Cast float32 ``out``."""
    return """
    axes0 = Constant <value_ints = [0]> ()
    row = Unsqueeze (raw, axes0)
    flat = Reshape (row, shape8)
    out = Cast <to = 1> (flat)
    """


def test_cast_reshape_unsqueeze_subgraph_is_a_constant():
    raw = np.linspace(0.5, 2.0, 8)
    model = parse(f"""
    g (float[8] X) => (float[8] Y)
    <double[8] raw = {{{", ".join(map(str, raw))}}}, int64[1] shape8 = {{8}}>
    {{
        {cast_reshape_unsqueeze()}
        Y = Add (X, out)
    }}
    """)
    assert_same(constant_of(model, "out"), raw.astype(np.float32))


def test_initializer_listed_as_input_is_a_constant_in_ir3():
    model = parse(
        """
        g (float[3] X, float[3] init) => (float[3] Y)
        <float[3] init = {1.0, 2.0, 3.0}>
        { Y = Add (X, init) }
        """,
        header='<ir_version: 3, opset_import: ["" : 8]>',
    )
    assert_same(constant_of(model, "init"), np.array([1, 2, 3], np.float32))


# -- what is not ----------------------------------------------------------------------------------

NOT_CONSTANT = parse("""
g (float[3] X, float[3] knob) => (float[3] Y)
<float[3] knob = {1.0, 2.0, 3.0}, float[3] fixed = {1.0, 2.0, 3.0}, int64[2] bad_shape = {2, 2}>
{
    random = RandomNormal <shape = [3]> ()
    random_id = Identity (random)
    foreign = com.example.Foo (fixed)
    from_input = Identity (X)
    reshaped = Reshape (fixed, bad_shape)
    text = Constant <value_string = "abc"> ()
    Y = Add (X, knob)
}
""")

NOT_CONSTANT_REASONS = {
    "X": "'X' is a graph input, not a constant",
    "from_input": "'X' is a graph input, not a constant",
    "knob": "'knob' is an initializer also listed as a graph input, so callers may override it",
    "random": "RandomNormal node, not a constant",
    "random_id": "RandomNormal node, not a constant",
    "foreign": "com.example::Foo node, not a constant",
    "reshaped": "could not evaluate Reshape",
    "text": "value_string value bnfold does not read",
}


@pytest.mark.parametrize("name, reason", NOT_CONSTANT_REASONS.items(), ids=NOT_CONSTANT_REASONS.keys())
def test_non_constants_are_refused_with_a_reason(name, reason):
    assert reason in refusal_of_constant(NOT_CONSTANT, name)


@pytest.mark.parametrize("name", ["random", "foreign"])
def test_refusal_names_the_tensor_even_when_its_producer_is_unnamed(name):
    """The parser leaves nodes unnamed, as many exporters do: the reason must still say which tensor."""
    assert f"'{name}'" in refusal_of_constant(NOT_CONSTANT, name)


def test_constant_chain_deeper_than_the_limit_is_refused():
    nodes = [helper.make_node("Identity", [f"t{k}"], [f"t{k + 1}"]) for k in range(MAX_CONSTANT_DEPTH + 2)]
    last = f"t{MAX_CONSTANT_DEPTH + 2}"
    graph = helper.make_graph(
        nodes, "g", [], [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "t0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert f"deeper than {MAX_CONSTANT_DEPTH}" in refusal_of_constant(model, last)
    assert_same(constant_of(model, f"t{MAX_CONSTANT_DEPTH - 1}"), np.ones(1, np.float32))


@pytest.mark.parametrize("op, inputs", [("Identity", [""]), ("ConstantOfShape", [""]), ("ConstantOfShape", [])],
                         ids=["identity-empty-name", "constant-of-shape-empty-name", "constant-of-shape-no-input"])
def test_required_input_missing_is_refused_not_a_crash(op, inputs):
    """onnx.checker rejects these, but ``bnfold.fold`` does not run it: ConstantOfShape raised a
    TypeError out of ``fold``, and Identity passed None on as the constant's value."""
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["S"])], "g", [], [helper.make_tensor_value_info("S", TensorProto.FLOAT, [8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert f"'S' comes from {'an' if op == 'Identity' else 'a'} {op} node without its input" in refusal_of_constant(
        model, "S")
    bn = with_bn_param_from(conv_bn_model(), "scale", [helper.make_node(op, inputs, ["out"])], [], check=False)
    assert "its scale is not a constant" in refusal_for(bn).reason


# -- the same rules decide whether a BN folds --------------------------------------------------


def with_bn_param_from(model: onnx.ModelProto, param: str, nodes: list[onnx.NodeProto],
                       initializers: list[onnx.TensorProto], check: bool = True) -> onnx.ModelProto:
    """``model`` whose BN reads ``param`` from the output ``out`` of ``nodes`` instead of ``bn_<param>``."""
    name = f"bn_{param}"
    kept = [t for t in model.graph.initializer if t.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + initializers)
    for node in model.graph.node:
        node.input[:] = ["out" if i == name else i for i in node.input]
    everything = [*nodes, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(everything)
    if check:
        check_full(model)
    return model


def test_bn_folds_through_a_cast_reshape_unsqueeze_subgraph():
    raw = np.linspace(0.5, 2.0, 8)
    subgraph = parse(f"""
    g (double[8] raw) => (float[8] out)
    <int64[1] shape8 = {{8}}>
    {{ {cast_reshape_unsqueeze()} }}
    """)
    model = with_bn_param_from(
        conv_bn_model(), "var", list(subgraph.graph.node),
        [numpy_helper.from_array(raw, "raw"), *subgraph.graph.initializer],
    )
    folded = fold_expecting(model).model
    assert op_types(folded) == ["Conv"]  # the subgraph went with the BN
    assert initializer_names(folded) == {"W", "B"}
    assert_equivalent(model, folded)


def test_bn_with_a_random_parameter_does_not_fold():
    model = with_bn_param_from(
        conv_bn_model(), "mean",
        [helper.make_node("RandomNormal", [], ["out"], shape=[8], name="noise")], [],
    )
    reason = refusal_for(model).reason
    assert "its mean is not a constant" in reason and "RandomNormal" in reason


def test_fold_leaves_a_constant_subgraph_that_something_else_still_reads():
    """The Identity feeding the BN scale also feeds a graph output: it must stay."""
    model = conv_bn_model(params="identity")
    model.graph.output.append(helper.make_tensor_value_info("bn_scale_identity_out", TensorProto.FLOAT, [8]))
    result = bnfold.fold(model)
    assert len(result.folds) == 1
    assert {n.name for n in result.model.graph.node} == {"conv", "bn_scale_identity"}
    assert "bn_scale" in initializer_names(result.model)
    assert_equivalent(model, result.model)
