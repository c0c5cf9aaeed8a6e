#!/usr/bin/env python3
"""Compare two per-layer dumps tensor by tensor and name the first that differs.

A dump is a NumPy ``.npz`` of float32 tensors under llama.cpp's names
(``inp_embd``, ``attn_norm-0``, ``Qcur-0``, ..., ``l_out-N``, ``result_norm``,
``result_output``), as written by the engine with ``MLX_ENGINE_DUMP=DIR`` or by
``forward.py --dump``.  Tensors are compared in the order of the first dump;
names in only one of them are listed and skipped (a path that fuses a step has
no tensor for it).  A tensor mismatches when its shapes differ or when
``max |a - b| > tol + rtol * max |b|`` (NaN counts as a mismatch).

Prints one line per compared tensor, then one JSON line::

    {"compared": [...], "only_in_a": [...], "only_in_b": [...],
     "first_mismatch": "l_out-3" or null, "max_abs_diff": {"inp_embd": 0.0, ...}}

Exit status: 0 when every common tensor agrees, 1 at a mismatch, 2 when the
dumps have no tensor in common.

Usage::

    python3 diff_dump.py ENGINE.npz REF.npz [--tol 1e-4] [--rtol 0]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def load(path: str) -> dict[str, np.ndarray]:
    """The tensors of the dump at `path`, in archive order."""
    try:
        with np.load(path) as archive:
            return {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: not a readable .npz dump ({exc})") from exc


def compare(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| for equally shaped tensors (inf for different shapes, 0 for empty ones)."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="first dump (.npz), e.g. the engine's")
    ap.add_argument("b", help="second dump (.npz), e.g. forward.py's")
    ap.add_argument("--tol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    ap.add_argument("--rtol", type=float, default=0.0,
                    help="tolerance relative to max |b| of each tensor (default 0)")
    args = ap.parse_args(argv)

    a, b = load(args.a), load(args.b)
    common = [name for name in a if name in b]
    summary = {
        "compared": common,
        "only_in_a": [name for name in a if name not in b],
        "only_in_b": [name for name in b if name not in a],
        "first_mismatch": None,
        "max_abs_diff": {},
    }
    for name in common:
        diff = compare(a[name], b[name])
        limit = args.tol + args.rtol * (float(np.max(np.abs(b[name]))) if b[name].size else 0.0)
        bad = not diff <= limit
        summary["max_abs_diff"][name] = diff if np.isfinite(diff) else str(diff)
        shapes = f"{list(a[name].shape)}" + ("" if a[name].shape == b[name].shape else f" vs {list(b[name].shape)}")
        print(f"{name:24} {shapes:24} max|d| {diff:.3e}{'  MISMATCH' if bad else ''}")
        if bad and summary["first_mismatch"] is None:
            summary["first_mismatch"] = name
    if summary["only_in_a"] or summary["only_in_b"]:
        print(f"skipped: only in {args.a}: {summary['only_in_a']}; only in {args.b}: {summary['only_in_b']}")
    first = summary["first_mismatch"]
    if first is not None:
        print(f"first mismatch: {first} (max |d| = {summary['max_abs_diff'][first]}, tolerance {args.tol}"
              f"{f' + {args.rtol} * max|b|' if args.rtol else ''})")
    print(json.dumps(summary))
    if not common:
        print("the dumps have no tensor in common", file=sys.stderr)
        return 2
    return 1 if first is not None else 0


if __name__ == "__main__":
    sys.exit(main())
