"""Export the real-architecture benchmark corpus: torchvision models with random weights, BN kept.

    pip install '.[bench]'            # torch 2.14.1 / torchvision 0.29.1 (builds on this machine's disk)
    python bench/export_corpus.py OUT_DIR [NAME ...]

``torch.onnx.export(..., dynamo=False, training=TrainingMode.PRESERVE)`` keeps BatchNormalization
(PyTorch folds it in eval-mode exports) and routes deduplicated parameters through Identity
nodes, as users' exports do. Seeded: the same command writes the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODELS = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
    "regnet_y_400mf", "shufflenet_v2_x1_0", "mnasnet1_0", "googlenet", "resnext50_32x4d",
    "deeplabv3_mobilenet_v3_large",
)


def build(name: str):
    import torchvision

    if name.startswith("deeplabv3"):
        return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=False)
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **extra)


def export(name: str, out_dir: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = build(name).eval()
    path = out_dir / f"{name}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"])
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in argv[1:] or MODELS:
        print(export(name, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
