"""Independent float64 numpy reference of one LoRA training step's loss and gradients.

Reads a Llama/Qwen2 GGUF (weights dequantized with the `gguf` package, through
forward.py's loader) and a JSON request written by tests/finetune.rs:

    {"tokens": [[...], ...], "targets": [[...]], "weights": [[...]],
     "rank": r, "scale": alpha/r, "slots": [[layer, "q"], ...],
     "params": [[A0...], [B0...], ...]}      # A [r, K], B [N, r], row-major, flat

and writes {"loss": L, "grads": [[...], ...]} where L is the summed cross-entropy
sum_{b,t} w[b,t] * (logsumexp(logits[b,t]) - logits[b,t,target[b,t]]) of a forward pass in
float64 with y = W x + scale * B (A x) on every adapted projection, and each gradient is a
central finite difference of L (step 1e-6) with respect to that parameter. Nothing here
shares code with the engine's forward or backward pass.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader

import forward as ref

STEP = 1e-6


def lora_forward(hp, w, tokens, adapters, scale):
    """Logits [B, L, V] in float64 for token rows `tokens` with adapters {(layer, t): (A, B)}."""
    q_dim, kv_dim, hd = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.head_dim
    bias = hp.arch == "qwen2"
    style = ref.ROPE_STYLE[hp.arch]
    out = []
    for row in tokens:
        n = len(row)
        cos, sin = (t.astype(np.float64) for t in ref.rope_tables(n, hd, hp.rope_base))
        x = w.rows("token_embd.weight", np.asarray(row, dtype=np.int64), hp.hidden).astype(np.float64)

        def proj(layer, target, name, h, n_out, n_in, with_bias=False):
            y = h @ w.get(f"{name}.weight", (n_out, n_in)).astype(np.float64).T
            if with_bias:
                y = y + w.get(f"{name}.bias", (n_out,))
            if (layer, target) in adapters:
                a, b = adapters[(layer, target)]
                y = y + scale * ((h @ a.T) @ b.T)
            return y

        def norm(v, name):
            g = w.get(name, (hp.hidden,)).astype(np.float64)
            return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + hp.eps) * g

        for layer in range(hp.n_layers):
            p = f"blk.{layer}"
            h = norm(x, f"{p}.attn_norm.weight")
            q = proj(layer, "q", f"{p}.attn_q", h, q_dim, hp.hidden, bias)
            k = proj(layer, "k", f"{p}.attn_k", h, kv_dim, hp.hidden, bias)
            v = proj(layer, "v", f"{p}.attn_v", h, kv_dim, hp.hidden, bias)
            q = ref.apply_rope(q.reshape(n, hp.n_heads, hd).transpose(1, 0, 2), cos, sin, style)
            k = ref.apply_rope(k.reshape(n, hp.n_kv_heads, hd).transpose(1, 0, 2), cos, sin, style)
            v = v.reshape(n, hp.n_kv_heads, hd).transpose(1, 0, 2)
            group = hp.n_heads // hp.n_kv_heads
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
            s = (q @ k.transpose(0, 2, 1)) / np.sqrt(hd)
            s[:, np.triu(np.ones((n, n), dtype=bool), k=1)] = -np.inf
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            attn = (s @ v).transpose(1, 0, 2).reshape(n, q_dim)
            x = x + proj(layer, "o", f"{p}.attn_output", attn, hp.hidden, q_dim)
            h = norm(x, f"{p}.ffn_norm.weight")
            gate = proj(layer, "gate", f"{p}.ffn_gate", h, hp.ffn, hp.hidden)
            up = proj(layer, "up", f"{p}.ffn_up", h, hp.ffn, hp.hidden)
            x = x + proj(layer, "down", f"{p}.ffn_down", gate / (1.0 + np.exp(-gate)) * up,
                         hp.hidden, hp.ffn)
        x = norm(x, "output_norm.weight")
        head = "output.weight" if w.has("output.weight") else "token_embd.weight"
        out.append(x @ w.get(head, (hp.vocab, hp.hidden)).astype(np.float64).T)
    return np.stack(out)


def loss_of(hp, w, req, params):
    """The summed weighted cross-entropy of the request at `params`."""
    shapes = req["shapes"]
    adapters = {}
    for j, (layer, target) in enumerate(req["slots"]):
        a = params[2 * j].reshape(shapes[2 * j])
        b = params[2 * j + 1].reshape(shapes[2 * j + 1])
        adapters[(layer, target)] = (a, b)
    logits = lora_forward(hp, w, req["tokens"], adapters, req["scale"])
    m = logits.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(logits, np.asarray(req["targets"])[..., None], axis=-1)[..., 0]
    return float(np.sum(np.asarray(req["weights"], dtype=np.float64) * (lse - tgt)))


def main() -> int:
    model, request, out = sys.argv[1:4]
    reader = GGUFReader(model)
    hp = ref.read_hparams(reader)
    if hp.arch not in ("llama", "qwen2"):
        raise SystemExit(f"lora_step.py supports llama and qwen2, not {hp.arch}")
    w = ref.Weights(reader, keep=True)
    req = json.load(open(request))
    params = [np.asarray(p, dtype=np.float64) for p in req["params"]]
    loss = loss_of(hp, w, req, params)
    grads = []
    for p in params:
        g = np.empty_like(p)
        for i in range(p.size):
            keep = p[i]
            p[i] = keep + STEP
            up = loss_of(hp, w, req, params)
            p[i] = keep - STEP
            down = loss_of(hp, w, req, params)
            p[i] = keep
            g[i] = (up - down) / (2 * STEP)
        grads.append(g.tolist())
    json.dump({"loss": loss, "grads": grads}, open(out, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
