"""Central finite differences in float64 of the scalar functions through which
tests/finetune_gradients.rs checks each training primitive's backward pass.

usage: primitive_fd.py REQUEST.json OUT.json

REQUEST is one of
    {"kind": "qmatmul", "gguf": PATH, "tensor": NAME, "x": [...], "m": M, "c": [...]}
        L(x) = sum(c * (x @ W.T)), W dequantized from the GGUF with the `gguf` package;
        gradient with respect to x [M, K]
    {"kind": "matmul", "a": [...], "b": [...], "c": [...], "batch", "m", "k", "n"}
        L(a, b) = sum(c * (a @ b)); gradients with respect to a and b
    {"kind": "cross_entropy", "z": [...], "t": [...], "w": [...], "g": [...], "m", "v"}
        L(z) = sum_r g[r] * w[r] * (logsumexp(z[r]) - z[r, t[r]]); gradient with respect to z
and OUT is {"grads": [[...], ...]} in that order, each flat row-major. Step 1e-6.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

STEP = 1e-6


def fd(f, params):
    """Central differences of the scalar f(params) with respect to every element of each."""
    grads = []
    for p in params:
        g = np.empty(p.size)
        flat = p.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + STEP
            up = f(params)
            flat[i] = keep - STEP
            down = f(params)
            flat[i] = keep
            g[i] = (up - down) / (2 * STEP)
        grads.append(g.tolist())
    return grads


def main() -> int:
    req = json.load(open(sys.argv[1]))
    kind = req["kind"]
    if kind == "qmatmul":
        reader = GGUFReader(req["gguf"])
        t = next(t for t in reader.tensors if t.name == req["tensor"])
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)  # [N, K]
        x = np.asarray(req["x"], dtype=np.float64).reshape(req["m"], w.shape[1])
        c = np.asarray(req["c"], dtype=np.float64).reshape(req["m"], w.shape[0])
        grads = fd(lambda p: float(np.sum(c * (p[0] @ w.T))), [x])
    elif kind == "matmul":
        bt, m, k, n = req["batch"], req["m"], req["k"], req["n"]
        a = np.asarray(req["a"], dtype=np.float64).reshape(bt, m, k)
        b = np.asarray(req["b"], dtype=np.float64).reshape(bt, k, n)
        c = np.asarray(req["c"], dtype=np.float64).reshape(bt, m, n)
        grads = fd(lambda p: float(np.sum(c * (p[0] @ p[1]))), [a, b])
    elif kind == "cross_entropy":
        m, v = req["m"], req["v"]
        z = np.asarray(req["z"], dtype=np.float64).reshape(m, v)
        t = np.asarray(req["t"], dtype=np.int64)
        w = np.asarray(req["w"], dtype=np.float64)
        g = np.asarray(req["g"], dtype=np.float64)

        def loss(p):
            zz = p[0]
            mx = zz.max(axis=1, keepdims=True)
            lse = (mx + np.log(np.exp(zz - mx).sum(axis=1, keepdims=True)))[:, 0]
            return float(np.sum(g * w * (lse - zz[np.arange(m), t])))

        grads = fd(loss, [z])
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    json.dump({"grads": grads}, open(sys.argv[2], "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
