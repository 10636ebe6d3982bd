"""The rewrite rules bnfold applies, one per file. ``DEFAULT_RULES`` is the order they run in."""

from .base import Fold, Refusal, Rule
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
)

__all__ = [
    "DEFAULT_RULES", "Fold", "Refusal", "Rule", "ConvBatchNormRule", "ConvTransposeBatchNormRule",
    "GemmBatchNormRule", "MatMulBatchNormRule", "BatchNormLinearRule",
]
