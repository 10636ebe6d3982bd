"""``bnfold.latency.interface``: what a folded model must share with the original to be benched.

Pure onnx protos, no runtime: the declared inputs (names, element types, ranks, static dims
against the shapes the inputs are made with), the declared outputs (names, element types), the
one-line refusal naming the folded model, and the phrases for outputs that disagree on a run.
"""

from __future__ import annotations

import numpy as np
import pytest

import builders
from bnfold.errors import BnfoldError
from bnfold.inputs import resolve_shapes
from bnfold.latency import interface

MADE = {"X": [1, 4, 8, 8]}  # what resolve_shapes gives for conv_bn_model()


def test_a_model_and_its_twin_have_the_same_interface():
    a, b = builders.conv_bn_model(), builders.conv_bn_model(seed=3)  # other weights: values are the run's concern
    assert resolve_shapes("a", a, {}) == MADE
    assert interface.input_differences(a, b, MADE) == []
    assert interface.declared_output_differences(a, b) == []
    interface.check_interface("a.onnx", a, "b.onnx", b, MADE)


def test_missing_and_extra_inputs():
    a, b = builders.conv_bn_model(), builders.conv_bn_model()
    b.graph.input[0].name = "image"
    b.graph.node[0].input[0] = "image"
    assert interface.input_differences(a, b, MADE) == ["it has no input 'X'",
                                                       "it has input 'image' that the original lacks"]


def test_element_type_rank_and_static_dims():
    a = builders.conv_bn_model()
    assert interface.input_differences(a, builders.conv_bn_model(dtype=np.float16), MADE) == [
        "input 'X' is float16, not float"]
    assert interface.input_differences(a, builders.conv_bn_model(rank=1), MADE) == [
        "input 'X' has rank 3 [1, 4, 8], not 4"]
    assert interface.input_differences(a, builders.conv_bn_model(spatial=16), MADE) == [
        "input 'X' is [1, 4, 16, 16], and the inputs are made 1x4x8x8"]


def test_symbolic_dims_take_what_the_inputs_are_made_with():
    static, symbolic = builders.conv_bn_model(), builders.conv_bn_model(symbolic_batch=True)
    assert interface.input_differences(static, symbolic, MADE) == []  # a symbolic batch takes 1
    made = resolve_shapes("m", symbolic, {"X": [2, 4, 8, 8]})  # --input-shape X=2x4x8x8 on the original
    assert interface.input_differences(symbolic, static, made) == [
        "input 'X' is [1, 4, 8, 8], and the inputs are made 2x4x8x8"]


def test_a_folded_input_without_a_shape_is_not_held_against_it():
    a, b = builders.conv_bn_model(), builders.conv_bn_model()
    b.graph.input[0].type.tensor_type.ClearField("shape")
    assert interface.input_differences(a, b, MADE) == []


def test_declared_outputs():
    a = builders.conv_bn_model()
    renamed = builders.conv_bn_model()
    renamed.graph.output[0].name = "Z"
    assert interface.declared_output_differences(a, renamed) == ["it has no output 'Y'",
                                                                 "it has output 'Z' that the original lacks"]
    half = builders.conv_bn_model(dtype=np.float16)
    assert interface.declared_output_differences(a, half) == ["output 'Y' is float16, not float"]
    untyped = builders.conv_bn_model()
    untyped.graph.output[0].ClearField("type")  # left to shape inference: not a difference
    assert interface.declared_output_differences(a, untyped) == []


def test_the_refusal_names_the_folded_model_and_offers_the_opt_out_only_for_outputs():
    a, half = builders.conv_bn_model(), builders.conv_bn_model(dtype=np.float16)
    with pytest.raises(BnfoldError) as inputs:
        interface.check_interface("a.onnx", a, "b.onnx", half, MADE, outputs=False)
    assert str(inputs.value) == ("b.onnx: not comparable with a.onnx: input 'X' is float16, not float (bench times a "
                                 "model against its folded version, on the same inputs)")
    renamed = builders.conv_bn_model()
    renamed.graph.output[0].name = "Z"
    with pytest.raises(BnfoldError) as outputs:
        interface.check_interface("a.onnx", a, "b.onnx", renamed, MADE)
    assert str(outputs.value).startswith("b.onnx: not comparable with a.onnx: it has no output 'Y'")
    assert str(outputs.value).endswith(f"; {interface.OPT_OUT})")
    interface.check_interface("a.onnx", a, "b.onnx", renamed, MADE, outputs=False)  # told to time it anyway


def test_output_differences_of_a_run():
    base = {"dtype": "float32", "shape": [1, 8], "atol": 1e-4, "rtol": 1e-3, "max_abs": 0.0, "passed": True}
    same = {**base, "name": "Y", "folded_shape": [1, 8], "folded_dtype": "float32"}
    assert interface.output_differences([same]) == []
    assert interface.output_differences([
        {"name": "A", "missing": True, "passed": False},
        {**base, "name": "B", "passed": False, "folded_shape": [1, 4], "folded_dtype": "float32"},
        {**base, "name": "C", "passed": False, "folded_shape": [1, 8], "folded_dtype": "float16"},
        {**base, "name": "D", "passed": False, "max_abs": 0.25, "folded_shape": [1, 8], "folded_dtype": "float32"},
    ]) == ["it produces no output 'A'", "output 'B' has shape [1, 4], not [1, 8]", "output 'C' is float16, not float32",
           "output 'D' differs by up to 0.25 (tolerance 0.0001 + 0.001·|original|)"]
    assert interface.outputs_refusal("b.onnx", "a.onnx", ["output 'D' differs by up to 0.25"]) == (
        "b.onnx: not comparable with a.onnx: on the same seeded input output 'D' differs by up to 0.25 (bench times a "
        f"model against its folded version; {interface.OPT_OUT})")
