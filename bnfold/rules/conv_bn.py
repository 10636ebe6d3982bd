"""Conv → BatchNormalization.

The Conv weight is ``[M, C/group, k1, ..., kn]``: output channel m is row m whatever the group
count, so ``W'[m] = s[m] * W[m]``, ``b' = s * b + t`` covers 1-D/2-D/3-D, grouped and depthwise
convs, with any strides, dilations, pads or auto_pad (those act on the input side; the BN acts
per output channel). A missing bias is created. Preconditions: see ``linear_bn.py``.
"""

from .linear_bn import LinearBatchNormRule


class ConvBatchNormRule(LinearBatchNormRule):
    name = "conv-bn"
    linear_op = "Conv"
