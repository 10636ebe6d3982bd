"""onnxruntime offline optimization: a CPU session at ORT_ENABLE_BASIC (constant folding, Conv+BN
fusion and the other basic, portable rewrites) that saves its optimized graph to OUT.
Usage: ort_offline_tool.py IN OUT"""

import sys

import onnxruntime as ort

options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath = sys.argv[2]
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
