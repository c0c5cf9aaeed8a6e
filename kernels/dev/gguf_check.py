"""Check our dequantization against the gguf Python package (independent reference).

Usage: python3 gguf_check.py DIR   (DIR written by `$(OUT)/test --dump DIR`, see the Makefile; OUT defaults to /tmp/mlxe-kernels-dev)
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


def main(d):
    bad = 0
    for name in TYPES:
        ours = np.fromfile(f"{d}/{name}.f32", dtype=np.float32)
        raw = np.fromfile(f"{d}/{name}.blocks", dtype=np.uint8)
        qt = T[name]
        if name == "F32":
            ref = raw.view(np.float32)
        elif name == "F16":
            ref = raw.view(np.float16).astype(np.float32)
        else:
            ref = dequantize(raw, qt).reshape(-1)
        ok = ref.shape == ours.shape and np.array_equal(ref, ours)
        err = float(np.max(np.abs(ref - ours))) if ref.shape == ours.shape else float("inf")
        print(f"{name:5s} {ours.size:6d} values  max|ours-gguf| = {err:.3g}  {'OK' if ok else 'MISMATCH'}")
        bad += not ok
    print(f"{len(TYPES) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
