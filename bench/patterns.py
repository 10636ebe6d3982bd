"""BN that the peers leave: one small model per pattern bnfold's newer rules fold, through bnfold
and every peer, counted (BatchNormalization + Mul left / nodes) in a markdown table.

Usage: python bench/patterns.py OUT_DIR [--peer-python PYTHON]

The models come from the test builders (tests/*builders.py, tests/test_*.py); the peers run
through bench/tools/*_tool.py with ``--peer-python`` (an interpreter that has the ``bench``
extra's peers installed; default: this one). A tool that fails shows ``fail``.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("onnxoptimizer", "onnxsim", "onnxslim", "onnxscript_optimizer", "onnxscript_rules", "ort_offline")


def models() -> dict[str, onnx.ModelProto]:
    sys.path.insert(0, str(ROOT / "tests"))
    from layout_builders import (ACTIVATIONS, bn_transpose_model, conv_act_scale, conv_concat, matmul_transpose_bn,
                                 rng_for, weight)
    from qdq_builders import qat_stack

    return {
        "qat_stack (DQ weight → Conv → BN → Q → DQ, ×3)": qat_stack(3, 64, 56),
        "MatMul [B, T, C] → Transpose → BN": matmul_transpose_bn(),
        "BN → Transpose → MatMul": bn_transpose_model("[matmul] Y = MatMul (t, W)", {"W": weight(rng_for(3), (6, 3))}),
        "Conv → Relu → Mul (positive)": conv_act_scale(*ACTIVATIONS["relu"], "conv2d"),
        "Conv, Conv, Conv → Concat → BN": conv_concat(),
    }


def left(path: Path) -> str:
    if not path.exists():
        return "fail"
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return f"{ops['BatchNormalization'] + ops['Mul']} / {sum(ops.values())}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--peer-python", default=sys.executable)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (label, model) in enumerate(models().items()):
        src = args.out / f"m{k}.onnx"
        onnx.save(model, str(src))
        cells = [left(src)]
        dst = args.out / f"m{k}.bnfold.onnx"
        subprocess.run([sys.executable, "-m", "bnfold", "optimize", str(src), "-o", str(dst)],
                       capture_output=True, check=False)
        cells.append(left(dst))
        for peer in PEERS:
            dst = args.out / f"m{k}.{peer}.onnx"
            subprocess.run([args.peer_python, str(ROOT / "bench" / "tools" / f"{peer}_tool.py"), str(src), str(dst)],
                           capture_output=True, check=False, timeout=600)
            cells.append(left(dst))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    print("| model | original | bnfold | " + " | ".join(PEERS) + " |")
    print("| --- |" + " ---: |" * (2 + len(PEERS)))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
