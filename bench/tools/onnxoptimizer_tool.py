"""onnxoptimizer's fuse_bn_into_conv, then onnxsim's constant folding.  Usage: onnxoptimizer_tool.py IN OUT

The recipe as it has to be run on today's exports: onnxoptimizer's ``fuse_bn_into_conv`` no
longer computes the folded weights itself, it inserts the arithmetic (Sqrt, Div, Mul, Sub, Add,
Unsqueeze, Cast per BN) and leaves it to a constant folder, and it only matches BN parameters
that are initializers, so ``eliminate_identity`` must first remove the Identity nodes through
which PyTorch's PRESERVE exports route them. onnxsim with ``perform_optimization=False`` then
folds the inserted arithmetic (constant folding and shape inference only, no optimizer passes:
it is not onnxsim's own BN fusion that is measured here; see onnxsim_tool.py for that).
"""

import sys

import onnx
import onnxoptimizer
import onnxsim

model = onnxoptimizer.optimize(onnx.load(sys.argv[1]), ["eliminate_identity", "fuse_bn_into_conv"])
model, _ = onnxsim.simplify(model, perform_optimization=False)
onnx.save(model, sys.argv[2])
