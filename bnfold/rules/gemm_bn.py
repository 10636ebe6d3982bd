"""Gemm → BatchNormalization (BN over [N, C]).

``y = alpha * A' B' + beta * C``: B's output-channel axis is 1 (0 with transB=1) and is scaled;
the new C is ``s * beta * C + t`` with beta set to 1, so alpha, beta != 1 and C given as scalar,
[C], [1, C] or [M, C] (or absent) all fold. Preconditions: see ``linear_bn.py``.
"""

from .linear_bn import LinearBatchNormRule


class GemmBatchNormRule(LinearBatchNormRule):
    name = "gemm-bn"
    linear_op = "Gemm"
