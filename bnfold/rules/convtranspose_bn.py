"""ConvTranspose → BatchNormalization.

The weight is ``[C_in, C_out/group, k...]``: output channel ``j * C_out/group + m`` of group j is
column m of rows ``j * C_in/group ...``, so the scale runs along axis 1 within each group (where
onnxoptimizer never merged and PyTorch's fx fuser broke on group > 1). Every rank, any group.
Preconditions: see ``linear_bn.py``.
"""

from .linear_bn import LinearBatchNormRule


class ConvTransposeBatchNormRule(LinearBatchNormRule):
    name = "convtranspose-bn"
    linear_op = "ConvTranspose"
