"""onnxscript's BatchNormalization fusion rules alone (Conv, ConvTranspose, Gemm), applied with
``onnxscript.rewriter.rewrite`` on an onnx_ir model, loaded and saved with onnx_ir.
Usage: onnxscript_rules_tool.py IN OUT

The rules read BN parameters only from constants: through an Identity (PyTorch PRESERVE exports)
they do not match. onnxscript_optimizer_tool.py runs them after constant folding.
"""

import sys

import onnx_ir as ir
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

model = ir.load(sys.argv[1])
model = rewrite(model, pattern_rewrite_rules=[
    fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule])
ir.save(model, sys.argv[2])
