"""``bnfold.constant_ops``: the numpy versions of the common constant-subgraph ops give exactly what
``onnx.reference`` gives (same dtype, shape and values) at every opset whose signature they handle,
and decline (None) what they do not handle with certainty, so that the reference decides."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from bnfold import constant_ops

OPSETS = (9, 11, 13, 14, 17, 21)


def reference(op: str, inputs: list, attrs: dict, opset: int):
    """The output of a one-node model at ``opset`` (the exception, if the reference raises)."""
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    node = helper.make_node(op, names, ["o"], **attrs)
    feeds = {n: v for n, v in zip(names, inputs) if n}
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), None)
                      for n, v in feeds.items()],
        [helper.make_tensor_value_info("o", onnx.TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        return ReferenceEvaluator(model).run(None, feeds)[0]
    except Exception as exc:
        return exc


def runtime(op: str, inputs: list, attrs: dict, opset: int):
    """The same one-node model through onnxruntime (the exception, if it refuses the model)."""
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    feeds = {n: v for n, v in zip(names, inputs) if n}
    graph = helper.make_graph(
        [helper.make_node(op, names, ["o"], **attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
        [helper.make_tensor_value_info("o", helper.np_dtype_to_tensor_dtype(inputs[0].dtype), None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    except Exception as exc:
        return exc


def assert_agrees(op: str, inputs: list, attrs: dict, opset: int) -> None:
    ours = constant_ops.evaluate(op, inputs, attrs, opset)
    theirs = reference(op, inputs, attrs, opset)
    if ours is None:
        return  # declined: the reference decides (it may also fail: the node is invalid)
    if isinstance(theirs, Exception):
        # onnx.reference has bugs of its own (Squeeze before opset 13 removes unsorted axes one by
        # one in reverse order: [1, 1, 1] with axes [2, 0] fails); onnxruntime is then the arbiter
        theirs = runtime(op, inputs, attrs, opset)
        assert not isinstance(theirs, Exception), f"we computed what the reference and onnxruntime refuse: {theirs}"
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4)
dtypes = st.sampled_from([np.float32, np.float16, np.int64, np.float64])


def array(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)


def axes_arg(op, axes, opset):
    """(inputs tail, attrs) for the axes of Squeeze/Unsqueeze at ``opset``."""
    if opset < 13:
        return [], ({} if axes is None else {"axes": axes})
    return ([] if axes is None else [np.array(axes, np.int64)]), {}


@settings(max_examples=200, deadline=None)
@given(shapes, dtypes, st.lists(st.integers(-6, 5), min_size=1, max_size=3), st.sampled_from(OPSETS))
def test_unsqueeze(shape, dtype, axes, opset):
    tail, attrs = axes_arg("Unsqueeze", axes, opset)
    assert_agrees("Unsqueeze", [array(shape, dtype), *tail], attrs, opset)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=4), dtypes,
       st.one_of(st.none(), st.lists(st.integers(-4, 3), min_size=1, max_size=3)), st.sampled_from(OPSETS))
@example([1, 1, 1], np.float32, [2, 0], 11)  # the reference refuses it (see assert_agrees), onnxruntime does not
def test_squeeze(shape, dtype, axes, opset):
    tail, attrs = axes_arg("Squeeze", axes, opset)
    assert_agrees("Squeeze", [array(shape, dtype), *tail], attrs, opset)


@settings(max_examples=150, deadline=None)
@given(shapes, dtypes, st.booleans(), st.randoms(use_true_random=False), st.sampled_from(OPSETS))
def test_transpose(shape, dtype, default, rnd, opset):
    perm = list(range(len(shape)))
    rnd.shuffle(perm)
    assert_agrees("Transpose", [array(shape, dtype)], {} if default or not perm else {"perm": perm}, opset)


@settings(max_examples=250, deadline=None)
@given(shapes, dtypes, st.lists(st.integers(-2, 6), min_size=0, max_size=4), st.booleans(),
       st.sampled_from(OPSETS))
def test_reshape(shape, dtype, target, allowzero, opset):
    attrs = {"allowzero": 1} if allowzero and opset >= 14 else {}
    assert_agrees("Reshape", [array(shape, dtype), np.array(target, np.int64)], attrs, opset)


@settings(max_examples=150, deadline=None)
@given(shapes, dtypes, st.integers(-5, 5), st.sampled_from(OPSETS))
def test_flatten(shape, dtype, axis, opset):
    assert_agrees("Flatten", [array(shape, dtype)], {"axis": axis}, opset)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), st.lists(st.integers(1, 3), min_size=1, max_size=3),
       st.integers(-4, 3), dtypes, st.sampled_from(OPSETS))
def test_concat(shape, sizes, axis, dtype, opset):
    k = axis % len(shape) if -len(shape) <= axis < len(shape) else 0
    parts = [array(shape[:k] + [n] + shape[k + 1:], dtype, seed=i) for i, n in enumerate(sizes)]
    assert_agrees("Concat", parts, {"axis": axis}, opset)


def test_each_op_is_computed_not_declined_on_the_shapes_exporters_use():
    """The light zoo's Unsqueeze@9 of a [C] parameter to [C, 1, 1], and its kin, are computed here."""
    c = np.arange(4, dtype=np.float32)
    cases = [
        ("Unsqueeze", [c], {"axes": [1, 2]}, 9, (4, 1, 1)),
        ("Unsqueeze", [c, np.array([0, -1], np.int64)], {}, 13, (1, 4, 1)),
        ("Squeeze", [c.reshape(1, 4, 1)], {}, 13, (4,)),
        ("Transpose", [c.reshape(2, 2)], {}, 13, (2, 2)),
        ("Reshape", [c, np.array([0 + 2, -1], np.int64)], {}, 13, (2, 2)),
        ("Flatten", [c.reshape(1, 2, 2)], {"axis": -1}, 13, (2, 2)),
        ("Concat", [c, c], {"axis": 0}, 13, (8,)),
    ]
    for op, inputs, attrs, opset, shape in cases:
        out = constant_ops.evaluate(op, inputs, attrs, opset)
        assert out is not None and out.shape == shape, op
        assert_agrees(op, inputs, attrs, opset)


@pytest.mark.parametrize("op, inputs, attrs, opset", [
    ("Unsqueeze", [np.zeros(3, np.float32), np.array([0, 0], np.int64)], {}, 13),  # repeated axis
    ("Unsqueeze", [np.zeros(3, np.float32)], {"axes": [5]}, 11),  # out of range
    ("Squeeze", [np.zeros((2, 1), np.float32), np.array([0], np.int64)], {}, 13),  # not a 1-dim
    ("Reshape", [np.zeros(6, np.float32), np.array([4, -1], np.int64)], {}, 13),  # does not divide
    ("Reshape", [np.zeros(6, np.float32), np.array([-1, -1], np.int64)], {}, 13),  # two -1
    ("Reshape", [np.zeros(6, np.float32)], {"shape": [2, 3]}, 4),  # opset 1-4: shape as attribute
    ("Flatten", [np.zeros((2, 3), np.float32)], {"axis": -1}, 9),  # negative axis before opset 11
    ("Concat", [np.zeros(2, np.float32), np.zeros(2, np.int64)], {"axis": 0}, 13),  # mixed dtypes
    ("Transpose", [np.zeros((2, 3), np.float32)], {"perm": [0, 0]}, 13),  # not a permutation
])
def test_invalid_or_unusual_nodes_are_left_to_the_reference(op, inputs, attrs, opset):
    assert constant_ops.evaluate(op, inputs, attrs, opset) is None


def test_evaluate_node_uses_numpy_for_these_ops(monkeypatch):
    """FoldGraph's constant walk on a light-zoo-like Unsqueeze@9 never builds a reference model."""
    import onnx.reference

    from bnfold.constants import evaluate_node

    def fail(*args, **kwargs):
        raise AssertionError("onnx.reference was used")

    monkeypatch.setattr(onnx.reference, "ReferenceEvaluator", fail)
    import onnx_graphsurgeon as gs

    x = gs.Variable("x")
    node = gs.Node("Unsqueeze", inputs=[x], outputs=[gs.Variable("y")], attrs={"axes": [1, 2]})
    [out] = evaluate_node(node, [np.arange(3, dtype=np.float32)], 9)
    assert out.shape == (3, 1, 1)
