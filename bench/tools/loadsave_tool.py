"""The floor: onnx.load + onnx.save of the same model, nothing else.  Usage: loadsave_tool.py IN OUT"""

import sys

import onnx

onnx.save(onnx.load(sys.argv[1]), sys.argv[2])
