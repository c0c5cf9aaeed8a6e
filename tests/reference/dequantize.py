#!/usr/bin/env python3
"""Reference dequantizer for tests/quant_reference.rs, using the `gguf` package.

    dequantize.py TYPE_NAME in.bin ROWS COLS out.bin   # raw ggml rows -> little-endian f32
    dequantize.py --sizes                              # {"NAME": [id, block, bytes], ...}

Exits 2 with a one-line message when numpy or gguf is missing.
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError as exc:  # the Rust test turns this into a clear failure
    print(f"missing Python package: {exc.name} (python3 -m pip install --user numpy gguf)", file=sys.stderr)
    sys.exit(2)


def sizes() -> None:
    table = {t.name: [int(t), *gguf.GGML_QUANT_SIZES[t]] for t in gguf.GGMLQuantizationType}
    print(json.dumps(table))


def main(argv: list[str]) -> None:
    if argv == ["--sizes"]:
        sizes()
        return
    if len(argv) != 5:
        sys.exit(__doc__)
    type_name, src, rows, cols, dst = argv
    qtype = gguf.GGMLQuantizationType[type_name]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = int(rows), int(cols)
    raw = np.fromfile(src, dtype=np.uint8).reshape(rows, cols // block * type_size)
    values = dequantize(raw, qtype).astype("<f4", copy=False)
    assert values.shape == (rows, cols), values.shape
    values.tofile(dst)


if __name__ == "__main__":
    main(sys.argv[1:])
