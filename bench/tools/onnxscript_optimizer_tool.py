"""onnxscript's optimizer with its defaults (``onnxscript.optimizer.optimize``: constant folding,
the default rewrite rules, which include the BatchNormalization fusions, dead-node removal),
loaded and saved with onnx_ir.  Usage: onnxscript_optimizer_tool.py IN OUT"""

import sys

import onnx_ir as ir
import onnxscript.optimizer

model = ir.load(sys.argv[1])
onnxscript.optimizer.optimize(model)
ir.save(model, sys.argv[2])
