"""The rewrite rules bnfold applies, one per file. ``DEFAULT_RULES`` is the order they run in."""

from .base import Fold, Refusal, Rule
from .conv_bn import ConvBatchNormRule

DEFAULT_RULES: tuple[Rule, ...] = (ConvBatchNormRule(),)

__all__ = ["DEFAULT_RULES", "Fold", "Refusal", "Rule", "ConvBatchNormRule"]
