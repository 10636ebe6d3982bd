"""The rewrite rules bnfold applies. ``DEFAULT_RULES`` is the order they run in.

Every module here without a leading underscore holds one rule, or one family of rules, and is named
after it (``linear_bn.py``: conv-bn, convtranspose-bn, gemm-bn, matmul-bn; ``qdq.py``: qdq-bn,
qdq-affine); ``base.py`` is what a rule is. The ``_`` modules are what rules share: ``_linear.py``
where each linear op keeps its channels, ``_site.py`` the path from a linear op to what follows it,
``_batchnorm.py`` BN as an affine map, ``_elementwise.py`` Mul/Add/Sub/Div as one, ``_rank.py`` the
rank of a tensor, ``_layout.py`` and ``_layout_axes.py`` a channel axis through layout ops,
``_qdq.py`` DequantizeLinear.
"""

from .activation_scale import ScaleAfterActivationRule
from .affine_linear import AffineAfterLinearRule
from .base import Fold, Refusal, Rule
from .bn_layout_linear import BatchNormLayoutLinearRule
from .bn_linear import BatchNormLinearRule
from .bn_scale import BatchNormScaleRule
from .concat_bn import ConcatBatchNormRule
from .linear_bn import ConvBatchNormRule, ConvTransposeBatchNormRule, GemmBatchNormRule, MatMulBatchNormRule
from .qdq import QuantizedAffineRule, QuantizedBatchNormRule

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
