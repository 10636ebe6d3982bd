"""The rewrite rules bnfold applies, one per file. ``DEFAULT_RULES`` is the order they run in."""

from .activation import ScaleAfterActivationRule
from .affine_chain import AffineAfterLinearRule
from .base import Fold, Refusal, Rule
from .bn_scale import BatchNormScaleRule
from .bn_linear import BatchNormLinearRule
from .concat import ConcatBatchNormRule
from .conv_bn import ConvBatchNormRule
from .convtranspose_bn import ConvTransposeBatchNormRule
from .gemm_bn import GemmBatchNormRule
from .layout import BatchNormLayoutLinearRule
from .matmul_bn import MatMulBatchNormRule
from .quantized import QuantizedAffineRule, QuantizedBatchNormRule

DEFAULT_RULES: tuple[Rule, ...] = (
    ConvBatchNormRule(),
    ConvTransposeBatchNormRule(),
    GemmBatchNormRule(),
    MatMulBatchNormRule(),
    QuantizedBatchNormRule(),  # the same after a linear op whose weight comes through DequantizeLinear
    ConcatBatchNormRule(),  # BN over a channel Concat of linear outputs: one fold per producer
    BatchNormLayoutLinearRule(),  # BN -> Transpose/Reshape/... -> linear op(s); before bn-linear, whose refusal
    #                               ("also feeds Transpose, which is not a Conv...") would hide its reason
    BatchNormLinearRule(),  # after the rules above: folding a BN into what feeds it is preferred
    AffineAfterLinearRule(),  # Mul/Add/Sub/Div by per-channel constants after a linear op
    QuantizedAffineRule(),  # ... whose weight comes through DequantizeLinear
    BatchNormScaleRule(),  # ... or after a BN that stays (Caffe2 "scale" layers)
    ScaleAfterActivationRule(),  # a positive scale (Mul, Div, shift-free BN) after Relu/LeakyRelu/PRelu
)

__all__ = [
    "DEFAULT_RULES", "Fold", "Refusal", "Rule", "ConvBatchNormRule", "ConvTransposeBatchNormRule",
    "GemmBatchNormRule", "MatMulBatchNormRule", "BatchNormLinearRule",
    "AffineAfterLinearRule", "BatchNormScaleRule",
]
