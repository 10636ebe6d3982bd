"""The onnx package's "light" model zoo (``onnx/backend/test/data/light/light_*.onnx``), made usable.

    python bench/light_zoo.py OUT_DIR          # writes OUT_DIR/light_NAME.onnx for each model with BN

These are IR-version-3 structures of real architectures (resnet50, densenet121, inception_v2,
shufflenet) whose every tensor is a ``ConstantOfShape`` of one value: every channel computes the
same thing, so an error comparison would prove nothing. Each Conv/Gemm weight is replaced by a
seeded random initializer (listed as a graph input, as IR 3 requires); BN parameters keep coming
from ``ConstantOfShape`` nodes, which is part of what the benchmark exercises.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_paths() -> list[Path]:
    """The light models that contain a BatchNormalization."""
    return sorted(p for p in LIGHT.glob("light_*.onnx")
                  if any(n.op_type == "BatchNormalization" for n in onnx.load(p).graph.node))


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose Conv/Gemm weights are He-scaled seeded random initializers."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm")}
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.output[0] in weights and node.input[0] in shapes:
            shape = [int(d) for d in shapes[node.input[0]]]
            fan_in = int(np.prod(shape[1:]))
            values = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def write_light(out_dir: Path, seed: int = 0) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in light_paths():
        dst = out_dir / src.name
        onnx.save(randomize_weights(onnx.load(src), seed), dst)
        written.append(dst)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    for path in write_light(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
