"""Writes ONNX's operator conformance cases with the generators Debian's python3-onnx ships.

Usage: generate_node_tests.py OUTDIR   (skips the work when OUTDIR/node already holds the cases)
ONNX 1.12's generators use NumPy aliases that NumPy 1.24 removed; restore them first.
"""
import os
import runpy
import sys

import numpy as np

out = sys.argv[1]
if os.path.isdir(os.path.join(out, "node")) and len(os.listdir(os.path.join(out, "node"))) > 100:
    sys.exit(0)
for alias, target in dict(float=float, int=int, bool=bool, object=object, complex=complex,
                          str=str).items():
    if not hasattr(np, alias):
        setattr(np, alias, target)
np.random.seed(0)
sys.argv = ["onnx.backend.test.cmd_tools", "generate-data", "-o", out]
runpy.run_module("onnx.backend.test.cmd_tools", run_name="__main__")
