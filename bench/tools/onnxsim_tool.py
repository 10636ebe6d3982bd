"""onnxsim with its defaults (constant folding, shape inference, its optimizer passes including
fuse_bn_into_conv; no random-input check, check_n=0).  Usage: onnxsim_tool.py IN OUT"""

import sys

import onnx
import onnxsim

model, _ = onnxsim.simplify(onnx.load(sys.argv[1]))
onnx.save(model, sys.argv[2])
