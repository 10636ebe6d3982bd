"""MatMul (constant 2-D weight [K, C], optional bias Add) → BatchNormalization.

The weight's columns are the output channels; the bias Add's constant becomes ``s * b + t`` (an
Add is created when there was none). BN normalizes axis 1 while MatMul puts its channels on the
last axis: the fold is only valid when they coincide, i.e. for a 2-D activation [N, C] (rank
known from shapes or producers), or through a Reshape to [N, C, 1, ...]. On a 3-D [B, T, K]
input axis 1 is T, not C: refused, even when the sizes happen to match.
Preconditions: see ``linear_bn.py``.
"""

from .linear_bn import LinearBatchNormRule


class MatMulBatchNormRule(LinearBatchNormRule):
    name = "matmul-bn"
    linear_op = "MatMul"
