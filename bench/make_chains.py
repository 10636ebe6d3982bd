"""Synthetic scaling models: a chain of N Conv+BatchNormalization pairs.

    python bench/make_chains.py OUT_DIR N [N ...]      # writes OUT_DIR/chain_N.onnx

Each pair is a 1x1 Conv without bias (8 → 8 channels) followed by a BatchNormalization, on a
``[1, 8, 4, 4]`` float32 input, opset 17, every parameter an initializer. The weights are seeded
and chosen so that 20,000 pairs neither blow the activations up nor shrink them to zero (the
error comparison would then prove nothing): each Conv weight is a random orthogonal 8x8 matrix
and each BN is close to an identity map (its scale ``γ/√(var+ε)`` is ``exp(N(0, 0.005))``, its
shift ``N(0, 0.01)``), while its raw statistics are ordinary (mean ``N(0, 0.1)``, var in
``[0.5, 2]``), so folding has real arithmetic to do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8
SPATIAL = 4
OPSET = 17
EPSILON = 1e-5


def make_chain(pairs: int, seed: int = 0) -> onnx.ModelProto:
    """A model of ``pairs`` Conv(1x1, no bias) → BatchNormalization pairs; input ``x``, output ``y``."""
    if pairs < 1:
        raise ValueError("a chain needs at least one pair")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i in range(pairs):
        q, r = np.linalg.qr(rng.standard_normal((CHANNELS, CHANNELS)))
        weight = (q * np.sign(np.diag(r))).astype(np.float32).reshape(CHANNELS, CHANNELS, 1, 1)
        mean = rng.normal(0.0, 0.1, CHANNELS)
        var = rng.uniform(0.5, 2.0, CHANNELS)
        scale = np.exp(rng.normal(0.0, 0.005, CHANNELS))
        gamma = scale * np.sqrt(var + EPSILON)
        beta = scale * mean + rng.normal(0.0, 0.01, CHANNELS)
        names = [f"conv{i}.weight", f"bn{i}.weight", f"bn{i}.bias", f"bn{i}.running_mean", f"bn{i}.running_var"]
        for name, value in zip(names, (weight, gamma, beta, mean, var)):
            inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        conv_out, bn_out = f"conv{i}_out", ("y" if i == pairs - 1 else f"bn{i}_out")
        nodes.append(helper.make_node("Conv", [current, names[0]], [conv_out], name=f"conv{i}", kernel_shape=[1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [conv_out, *names[1:]], [bn_out], name=f"bn{i}",
                                      epsilon=EPSILON))
        current = bn_out
    shape = [1, CHANNELS, SPATIAL, SPATIAL]
    graph = helper.make_graph(
        nodes, f"chain_{pairs}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                              producer_name="bnfold-bench")
    return model


def exact_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The chain's output for input ``x`` computed in float64 from its own parameters: the exact
    answer that every float32 run (the original's included) only approximates."""
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    h = np.asarray(x, dtype=np.float64)
    for node in model.graph.node:
        if node.op_type == "Conv":
            h = np.einsum("oc,nchw->nohw", params[node.input[1]][:, :, 0, 0], h)
        else:
            gamma, beta, mean, var = (params[name].reshape(1, -1, 1, 1) for name in node.input[1:])
            h = (h - mean) * (gamma / np.sqrt(var + EPSILON)) + beta
    return h


def write_chain(pairs: int, out_dir: Path, seed: int = 0) -> Path:
    path = Path(out_dir) / f"chain_{pairs}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(make_chain(pairs, seed), path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    for n in argv[1:]:
        print(write_chain(int(n.replace(",", "").replace("_", "")), Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
