"""The rank of a tensor, as the rules need it: declared, or from the producers that fix it.

Which axis a constant lands on, or whether a MatMul's channels sit on BN's axis 1, depends on the
rank of the tensor. A model without value_info (the light model zoo, many hand-made exports)
declares it for its inputs and outputs only, so ``rank_of`` walks back through producers whose
output rank follows from their inputs: elementwise and pooling ops (the rank of their first input),
Concat (any input's), broadcasting ops (the largest, when every input's is known), Flatten and Gemm
(2), Reshape (the length of its constant shape), QuantizeLinear / DequantizeLinear (their input's),
and constants computed by nodes (their value's). Anything else is unknown (None), and a rule that
needs the rank refuses with that reason.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..constants import ONNX_DOMAINS
from ..errors import NoFold
from ..graph import FoldGraph

#: Ops whose (first) output has the rank of their first input.
_SAME_RANK = frozenset(
    {
        "Abs", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Conv", "ConvTranspose",
        "DequantizeLinear", "Dropout", "Elu", "Erf", "Exp", "Floor", "GlobalAveragePool", "GlobalLpPool",
        "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LRN", "LeakyRelu",
        "Log", "LogSoftmax", "LpNormalization", "LpPool", "MaxPool", "Neg", "PRelu", "QuantizeLinear",
        "Reciprocal", "Relu", "Selu", "Sigmoid", "Softmax", "Softplus", "Softsign", "Sqrt", "Tanh",
        "ThresholdedRelu",
    }
)
#: Ops with numpy broadcasting: the output rank is the largest input rank.
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where"})
#: Ops with a rank-2 output.
_RANK_2 = frozenset({"Flatten", "Gemm"})
#: Give up following producers further back than this (one Python frame each; DenseNet-121 needs ~100).
MAX_RANK_DEPTH = 200


def rank_of(tensor: gs.Tensor, graph: FoldGraph) -> int | None:
    """The rank of ``tensor``: declared, or from producers that fix it (None when unknown)."""
    memo: dict[int, int | None] = {}

    def visit(t: gs.Tensor, depth: int) -> int | None:
        if t.shape is not None:
            return len(t.shape)
        if id(t) in memo:
            return memo[id(t)]
        rank = None
        node = graph.producer(t)
        if node is not None and node.domain in ONNX_DOMAINS and node.outputs and node.outputs[0] is t \
                and depth < MAX_RANK_DEPTH:
            inputs = [i for i in node.inputs if i.name]
            if node.op in _SAME_RANK and inputs:
                rank = visit(inputs[0], depth + 1)
            elif node.op == "Concat":  # every input has the output's rank: the first one known
                for i in inputs:
                    rank = visit(i, depth + 1)
                    if rank is not None:
                        break
            elif node.op in _BROADCAST and inputs:  # the largest, if every input's is known
                rank = 0
                for i in inputs:
                    r = visit(i, depth + 1)
                    if r is None:
                        rank = None
                        break
                    rank = max(rank, r)
            elif node.op in _RANK_2:
                rank = 2
            elif node.op == "Reshape" and len(node.inputs) > 1:
                try:
                    rank = int(np.asarray(graph.constant(node.inputs[1])).size)
                except NoFold:
                    rank = None
        if rank is None and isinstance(t, gs.Variable):
            rank = _constant_rank(t, graph)
        memo[id(t)] = rank
        return rank

    return visit(tensor, 0)


def _constant_rank(tensor: gs.Tensor, graph: FoldGraph) -> int | None:
    """The rank of a constant computed by nodes (an Unsqueeze of a ConstantOfShape, say)."""
    if not graph.looks_constant(tensor):
        return None
    return int(np.ndim(graph.constant(tensor)))
