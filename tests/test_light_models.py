"""Real-world structures: the onnx package's "light" model zoo (onnx/backend/test/data/light/).

These are IR-version-3 exports of real architectures whose every BN parameter and weight is made
by a ConstantOfShape node, and whose initializers are all listed as graph inputs (the IR-3 rule).
They ship with onnx, a runtime dependency, so they are always here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_equivalent, check_full, op_types

import bnfold

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
#: BNs that have no Conv in front of them (they follow MaxPool or Concat, as in DenseNet).
EXPECTED_LEFT = {"light_densenet121.onnx": 62}


def light_models() -> list[Path]:
    return sorted(p for p in LIGHT.glob("light_*.onnx") if "BatchNormalization" in op_types(onnx.load(p)))


def test_the_light_zoo_is_installed():
    assert {p.name for p in light_models()} >= {"light_resnet50.onnx", "light_densenet121.onnx"}


def unread_outputs(model: onnx.ModelProto) -> set[str]:
    """Node outputs that no node reads and that are not graph outputs."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    return {o for node in graph.node for o in node.output if o and o not in read}


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light models fill every tensor with one constant, so every channel computes the same
    thing and the outputs are constant: a numerical check would prove nothing. Replace the
    ConstantOfShape that makes each Conv/Gemm weight with a random initializer (listed as an input,
    as IR 3 wants); BN parameters keep coming from ConstantOfShape, which is what is under test."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm")}
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.output[0] in weights:
            shape = [int(d) for d in shapes[node.input[0]]]
            fan_in = int(np.prod(shape[1:]))
            values = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            graph.initializer.append(onnx.numpy_helper.from_array(values, node.output[0]))
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


@pytest.mark.parametrize("path", light_models(), ids=lambda p: p.stem)
def test_light_model_folds_every_bn_behind_a_conv(path):
    model = randomize_weights(onnx.load(path))
    bn_before = op_types(model).count("BatchNormalization")
    result = bnfold.fold(model)
    left = op_types(result.model).count("BatchNormalization")
    assert left == EXPECTED_LEFT.get(path.name, 0)
    bn_folds = [f for f in result.folds if f.op == "BatchNormalization"]
    bn_refusals = [r for r in result.refusals if r.op == "BatchNormalization"]
    assert len(bn_folds) == bn_before - left
    assert len(bn_refusals) == left
    assert all("not a linear op" in r.reason for r in bn_refusals)
    assert unread_outputs(result.model) <= unread_outputs(model)  # folding left nothing dead behind
    # IR 3: every initializer is listed as an input, and no input names a removed initializer
    assert result.model.ir_version == 3
    inits = {t.name for t in result.model.graph.initializer}
    inputs = {i.name for i in result.model.graph.input}
    assert inits <= inputs
    assert inputs - inits == {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    check_full(result.model)
    out = assert_equivalent(model, result.model)
    assert all(np.std(v) > 0 for v in out.values())  # the check compared outputs that vary
