"""Reading a BatchNormalization node as an inference-time per-channel affine map.

Shared by every rule that folds a BN: it checks the BN-side preconditions once, the same way,
with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..attributes import float_attr, int_attr
from ..errors import NoFold
from ..foldmath import bn_affine
from ..constants import ONNX_DOMAINS
from ..graph import FoldGraph

_PARAM_NAMES = ("scale", "bias", "mean", "variance")
#: BN's default epsilon is the float attribute 1e-5: its float32 value, 9.99999974738e-06, is what
#: a runtime adds (the Python 1e-5 differs by 2.5e-13: visible at float64 precision).
DEFAULT_EPSILON = float(np.float32(1e-5))
_EXTRA_OUTPUTS = ("running_mean", "running_var", "saved_mean", "saved_var")


@dataclass(frozen=True)
class BatchNormAffine:
    """BN(x) = s * x + t along axis 1, with s and t in float64."""

    node: gs.Node
    s: np.ndarray
    t: np.ndarray


def check_inference_only(bn: gs.Node, graph: FoldGraph) -> None:
    """Refuse BN nodes that do not compute a fixed affine map at inference (structure and attributes)."""
    if bn.domain not in ONNX_DOMAINS:
        raise NoFold(f"BatchNormalization in domain '{bn.domain}' is not the ONNX operator")
    if int_attr(bn, "training_mode", 0) == 1:
        raise NoFold("training_mode=1: it normalizes with batch statistics, not an inference op")
    if graph.opset < 7 and int_attr(bn, "is_test", 0) == 0:
        raise NoFold("is_test=0 (opset < 7): it normalizes with batch statistics, not an inference op")
    if int_attr(bn, "spatial", 1) == 0:
        raise NoFold("spatial=0: statistics are per activation, not per channel")
    if len(bn.inputs) < 5 or any(not t.name for t in bn.inputs[:5]):
        raise NoFold("it does not have its five inputs")
    for label, out in zip(_EXTRA_OUTPUTS, bn.outputs[1:]):
        if out.name and graph.is_used(out):
            raise NoFold(f"its {label} output '{out.name}' is used")
        if out.name and graph.opset < 14:
            # Before opset 14 the number of outputs selects the mode: declaring the statistics
            # outputs means training mode (batch statistics), and onnxruntime computes it so.
            raise NoFold(f"it declares its {label} output '{out.name}', which means training mode before opset 14")


def read_affine(bn: gs.Node, graph: FoldGraph, channels: int) -> BatchNormAffine:
    """BN's constant statistics as (s, t) over ``channels`` channels; NoFold when they are not constants of that shape."""
    values = []
    for label, tensor in zip(_PARAM_NAMES, bn.inputs[1:5]):
        try:
            value = graph.constant(tensor)
        except NoFold as exc:
            raise NoFold(f"its {label} is not a constant: {exc.reason}") from None
        if value.shape != (channels,):
            raise NoFold(f"its {label} '{tensor.name}' has shape {list(value.shape)}, expected [{channels}]")
        precise = graph.precise(tensor)  # a scale or bias bn-scale wrote in float16: its unrounded values
        values.append(value if precise is None else precise)
    gamma, beta, mean, var = values  # check_inference_only saw BN's five inputs
    s, t = bn_affine(gamma, beta, mean, var, float_attr(bn, "epsilon", DEFAULT_EPSILON))
    return BatchNormAffine(bn, s, t)
