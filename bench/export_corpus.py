"""Export the real-architecture benchmark corpus: torchvision models with random weights, BN kept.

    pip install '.[bench]'            # torch 2.14.1 / torchvision 0.29.1 (builds on this machine's disk)
    python bench/export_corpus.py OUT_DIR [NAME ...]

``torch.onnx.export(..., dynamo=False, training=TrainingMode.PRESERVE)`` keeps BatchNormalization
(PyTorch folds it in eval-mode exports). Seeded: the same command writes the same weights.

BN statistics are made to look trained: γ ~ U(0.5, 1.5) and β ~ N(0, 0.1) per channel, then the
running mean and variance are measured on two random batches (BN layers alone in training mode,
cumulative average). With torchvision's initial statistics (γ=1, β=0, mean 0, var 1) every BN is
nearly an identity, the outputs of several of these networks shrink to 1e-9 or below on random
inputs (an error comparison then proves nothing), and the exporter deduplicates the identical
parameter tensors and routes them through Identity nodes. That last case is real too (a model
exported before training): ``NAME_default_stats`` exports NAME with the initial statistics.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODELS = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
    "regnet_y_400mf", "shufflenet_v2_x1_0", "mnasnet1_0", "googlenet", "resnext50_32x4d",
    "deeplabv3_mobilenet_v3_large", "resnet50_default_stats",
)


def build(name: str):
    import torchvision

    name = name.removesuffix("_default_stats")
    if name.startswith("deeplabv3"):
        return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=False)
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **extra)


def calibrate(model, seed: int = 0) -> None:
    """Random BN affine parameters, then running statistics measured on random batches."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.normal_(0.0, 0.1, generator=gen)
            bn.reset_running_stats()
            bn.momentum = None          # cumulative average over the calibration batches
        model.eval()
        for bn in bns:
            bn.train()                  # only BN: dropout and stochastic depth stay off
        for _ in range(2):
            model(torch.randn(4, 3, 224, 224, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def export(name: str, out_dir: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = build(name).eval()
    if not name.endswith("_default_stats"):
        calibrate(model)
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
