"""onnxslim with its defaults, its own load and save (``onnxslim.slim(IN, OUT)``, as its CLI does).
Usage: onnxslim_tool.py IN OUT"""

import sys

import onnxslim

onnxslim.slim(sys.argv[1], output_model=sys.argv[2])
