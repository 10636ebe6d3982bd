"""The rewrite rules bnfold applies, one per file. ``DEFAULT_RULES`` is the order they run in."""

from .affine_chain import AffineAfterLinearRule
from .base import Fold, Refusal, Rule
from .bn_scale import BatchNormScaleRule
from .bn_linear import BatchNormLinearRule
from .conv_bn import ConvBatchNormRule
from .convtranspose_bn import ConvTransposeBatchNormRule
from .gemm_bn import GemmBatchNormRule
from .matmul_bn import MatMulBatchNormRule

DEFAULT_RULES: tuple[Rule, ...] = (
    ConvBatchNormRule(),
    ConvTransposeBatchNormRule(),
    GemmBatchNormRule(),
    MatMulBatchNormRule(),
    BatchNormLinearRule(),  # after the rules above: folding a BN into what feeds it is preferred
    AffineAfterLinearRule(),  # Mul/Add/Sub/Div by per-channel constants after a linear op
    BatchNormScaleRule(),  # ... or after a BN that stays (Caffe2 "scale" layers)
)

__all__ = [
    "DEFAULT_RULES", "Fold", "Refusal", "Rule", "ConvBatchNormRule", "ConvTransposeBatchNormRule",
    "GemmBatchNormRule", "MatMulBatchNormRule", "BatchNormLinearRule",
    "AffineAfterLinearRule", "BatchNormScaleRule",
]
