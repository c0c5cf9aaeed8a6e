#!/usr/bin/env python3
"""Independent float32 numpy reference forward pass for Llama-family GGUF models.

The script reads a GGUF file with ``gguf.GGUFReader``, dequantizes the weights
to float32 with ``gguf.quants.dequantize`` and runs a plain, teacher-forced
transformer forward pass over a whole token sequence at once (causal mask).
It writes the logits of every position (or only the last one) as raw
little-endian float32, row-major ``[rows, vocab]``, and with ``--dump`` the
per-layer intermediates as a NumPy ``.npz`` under llama.cpp's names, the same
names and layout as the engine's ``MLX_ENGINE_DUMP`` (see ``diff_dump.py``).

Supported architectures (``general.architecture``): ``llama``, ``qwen2`` and
``gemma3`` (RMS-normalised Q/K, norms after attention and MLP, GELU-tanh MLP,
embedding scaled by sqrt(hidden), sliding-window attention with RoPE base
10,000 in every layer but each sixth; GGUF norm weights already include
Gemma's +1).  Gemma 3 follows llama.cpp's reading of the metadata: optional
``gemma3.attention.sliding_window_pattern`` (a period, or one bool per
layer), ``gemma3.rope.freq_base_swa`` (default 10,000), linear
``gemma3.rope.scaling.factor`` (global layers only) and
``gemma3.final_logit_softcapping``.

Shape convention (checked at load time): GGUF records tensor dimensions
fastest-varying first, so a linear layer ``y = W x`` with ``in`` inputs and
``out`` outputs is stored with ``ne = [in, out]``.  ``GGUFReader`` reverses
that into numpy order, and after ``dequantize`` a weight is a float32 numpy
array of shape ``[out, in]``; a projection is therefore ``x @ W.T``.

Usage::

    python3 forward.py MODEL.gguf --tokens 785,6722,315 --out OUT.bin [--last-only]
    python3 forward.py MODEL.gguf --tokens 785,6722,315,9625,374 --greedy 8
    python3 forward.py MODEL.gguf --tokens 785,6722,315 --dump REF.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

# RoPE pairing per architecture.  llama.cpp's converter permutes the Q/K rows
# of `llama` checkpoints so that rotation acts on adjacent pairs
# (x[2i], x[2i+1]); `qwen2` keeps the "NEOX" layout pairing x[i] with
# x[i + head_dim/2].
ROPE_STYLE = {"llama": "adjacent", "qwen2": "neox", "gemma3": "neox"}

# Gemma 3: layer i attends over a sliding window unless (i + 1) % pattern == 0;
# windowed layers rotate with their own RoPE base (llama.cpp's defaults when
# the file has no `sliding_window_pattern` / `rope.freq_base_swa` keys).
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0

# Rows of the output projection dequantized at a time (bounds peak memory).
OUTPUT_CHUNK_ROWS = 16384

_MISSING = object()


@dataclass(frozen=True)
class HParams:
    """Model hyperparameters read from the GGUF metadata."""

    arch: str
    n_layers: int
    hidden: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    eps: float
    ctx: int
    vocab: int
    sliding_window: int = 0  # 0: none
    swa_layers: tuple[bool, ...] = ()  # gemma3: whether layer i is windowed
    rope_base_swa: float = GEMMA3_LOCAL_ROPE_BASE  # gemma3: RoPE base of windowed layers
    rope_pos_scale: float = 1.0  # gemma3: position multiplier of global layers (1 / linear factor)
    logit_softcap: float = 0.0  # gemma3: logits = cap * tanh(logits / cap) when > 0

    def window_of(self, layer: int) -> int:
        """Keys a query of `layer` sees (itself included), 0 for all."""
        if self.sliding_window and self.swa_layers[layer]:
            return self.sliding_window
        return 0

    def rope_of(self, layer: int) -> tuple[float, float]:
        """(RoPE base, position scale) of `layer`: Gemma 3's windowed layers use their own."""
        if self.window_of(layer):
            return self.rope_base_swa, 1.0
        return self.rope_base, self.rope_pos_scale


def field_value(reader: GGUFReader, key: str, default=_MISSING):
    """Return the scalar/string value of metadata `key`, or `default` if absent."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise KeyError(f"missing GGUF metadata key {key!r}")
        return default
    return field.contents()


def gemma3_swa_layers(pattern, n_layers: int) -> tuple[bool, ...]:
    """Per-layer sliding flags from `sliding_window_pattern` (llama.cpp's rule).

    A list is taken as one flag per layer; an integer period p makes layer i
    windowed when i % p < p - 1 (every layer when p == 0).
    """
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise SystemExit(f"sliding_window_pattern has {len(pattern)} entries for {n_layers} layers")
        return tuple(bool(flag) for flag in pattern)
    period = int(pattern)
    return tuple(period == 0 or i % period < period - 1 for i in range(n_layers))


def gemma3_rope_pos_scale(key) -> float:
    """Position multiplier of Gemma 3's global layers from the rope.scaling.* keys."""
    kind = key("rope.scaling.type", "linear")
    factor = float(key("rope.scaling.factor", key("rope.scale_linear", 0.0)))
    if kind == "none" or factor in (0.0, 1.0):
        return 1.0
    if kind != "linear":
        raise SystemExit(f"gemma3: rope scaling type {kind!r} is not supported (only linear)")
    return 1.0 / factor


def read_hparams(reader: GGUFReader) -> HParams:
    """Collect the hyperparameters of a llama/qwen2/gemma3 model from its metadata."""
    arch = field_value(reader, "general.architecture")
    if arch not in ROPE_STYLE:
        raise SystemExit(f"unsupported architecture {arch!r} (expected one of {sorted(ROPE_STYLE)})")

    def key(name, default=_MISSING):
        return field_value(reader, f"{arch}.{name}", default)

    hidden = int(key("embedding_length"))
    n_heads = int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", hidden // n_heads))
    n_layers = int(key("block_count"))
    gemma = {}
    if arch == "gemma3":
        if int(key("attention.value_length", head_dim)) != head_dim:
            raise SystemExit("gemma3: attention.value_length != attention.key_length is not supported")
        gemma = dict(
            sliding_window=int(key("attention.sliding_window", 0)),
            swa_layers=gemma3_swa_layers(key("attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN),
                                         n_layers),
            rope_base_swa=float(key("rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE)),
            rope_pos_scale=gemma3_rope_pos_scale(key),
            logit_softcap=float(key("final_logit_softcapping", 0.0)),
        )
    embd = tensor_by_name(reader, "token_embd.weight")
    return HParams(
        arch=arch,
        n_layers=n_layers,
        hidden=hidden,
        ffn=int(key("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rope_base=float(key("rope.freq_base", 10000.0)),
        eps=float(key("attention.layer_norm_rms_epsilon")),
        ctx=int(key("context_length")),
        vocab=int(embd.shape[1]),  # ne = [hidden, vocab]
        **gemma,
    )


def tensor_by_name(reader: GGUFReader, name: str):
    """Return the ReaderTensor called `name`, or None if the file lacks it."""
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    return None


class Weights:
    """Dequantizes GGUF tensors to float32 on demand, optionally caching them."""

    def __init__(self, reader: GGUFReader, keep: bool = False):
        """Index the tensors of `reader`; with `keep`, cache dequantized arrays."""
        self.tensors = {t.name: t for t in reader.tensors}
        self.keep = keep
        self.cache: dict[str, np.ndarray] = {}

    def has(self, name: str) -> bool:
        """Whether the file contains a tensor called `name`."""
        return name in self.tensors

    def _raw(self, name: str):
        """Return the ReaderTensor `name` or fail with a clear message."""
        if name not in self.tensors:
            raise KeyError(f"tensor {name!r} not found in GGUF file")
        return self.tensors[name]

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Dequantize tensor `name` to float32 and check its numpy `shape`."""
        if name in self.cache:
            return self.cache[name]
        tensor = self._raw(name)
        # numpy order after dequantize: [out, in] for matrices, [n] for vectors
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if array.shape != shape:
            raise ValueError(f"{name}: expected numpy shape {shape}, got {array.shape} "
                             f"(GGUF ne={list(map(int, tensor.shape))})")
        if self.keep:
            self.cache[name] = array
        return array

    def rows(self, name: str, ids: np.ndarray, cols: int) -> np.ndarray:
        """Dequantize only rows `ids` of the [rows, cols] matrix `name` (embedding lookup)."""
        tensor = self._raw(name)
        if name in self.cache:
            return self.cache[name][ids]
        picked = np.ascontiguousarray(tensor.data[ids])
        array = np.asarray(dequantize(picked, tensor.tensor_type), dtype=np.float32)
        if array.shape != (len(ids), cols):
            raise ValueError(f"{name}: row lookup gave shape {array.shape}, expected {(len(ids), cols)}")
        return array

    def project_chunked(self, x: np.ndarray, name: str, rows: int, cols: int) -> np.ndarray:
        """Compute x @ W.T for the [rows, cols] matrix `name`, dequantizing in row chunks."""
        if name in self.cache:
            return x @ self.cache[name].T
        tensor = self._raw(name)
        if tensor.data.shape[0] != rows:
            raise ValueError(f"{name}: expected {rows} rows, file has {tensor.data.shape[0]}")
        out = np.empty((x.shape[0], rows), dtype=np.float32)
        parts = []
        for start in range(0, rows, OUTPUT_CHUNK_ROWS):
            stop = min(rows, start + OUTPUT_CHUNK_ROWS)
            w = np.asarray(dequantize(np.ascontiguousarray(tensor.data[start:stop]), tensor.tensor_type),
                           dtype=np.float32)
            if w.shape != (stop - start, cols):
                raise ValueError(f"{name}: chunk shape {w.shape}, expected {(stop - start, cols)}")
            out[:, start:stop] = x @ w.T
            if self.keep:
                parts.append(w)
        if self.keep:
            self.cache[name] = np.concatenate(parts, axis=0)
        return out


class Taps:
    """Intermediates of one forward pass under llama.cpp's names (``NAME-LAYER`` per block).

    Each is stored as float32 ``[rows, features]`` (rows = positions), the layout of the
    engine's dump; a disabled instance records nothing.
    """

    def __init__(self, enabled: bool):
        """Record when `enabled`, else ignore every `put`."""
        self.tensors: dict[str, np.ndarray] | None = {} if enabled else None

    def put(self, name: str, value: np.ndarray, layer: int | None = None) -> None:
        """Record `value` [rows, ...] as `name` (or `name-layer`), flattened to two dimensions."""
        if self.tensors is None:
            return
        key = name if layer is None else f"{name}-{layer}"
        self.tensors[key] = np.ascontiguousarray(value.reshape(value.shape[0], -1), dtype="<f4")

    def save(self, path: str) -> None:
        """Write the recorded tensors, in recording order, as an uncompressed ``.npz``."""
        with open(path, "wb") as f:
            np.savez(f, **(self.tensors or {}))


NO_TAPS = Taps(False)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
    mean_sq = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(mean_sq + np.float32(eps)) * weight


def rope_tables(n_pos: int, head_dim: int, base: float,
                pos_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [n_pos, head_dim/2] for positions 0..n_pos-1, inv_freq_i = base^(-2i/head_dim).

    Angles are computed in float64 and rounded to float32 once, so the
    reference does not inherit float32 error in position * inv_freq.
    `pos_scale` != 1 multiplies the positions (linear RoPE scaling).
    """
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    positions = np.arange(n_pos, dtype=np.float64)
    if pos_scale != 1.0:
        positions = positions * pos_scale
    angles = positions[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """Rotate x [heads, n_pos, head_dim] by position.

    style "adjacent" rotates pairs (x[2i], x[2i+1]) (GGML "normal", MLX
    traditional=True); "neox" rotates pairs (x[i], x[i + head_dim/2])
    (GGML NEOX, MLX traditional=False).
    """
    if style == "adjacent":
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out
    if style == "neox":
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]
        return np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
    raise ValueError(f"unknown rope style {style!r}")


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int = 0) -> np.ndarray:
    """Grouped-query causal attention.

    q: [n_heads, n, head_dim]; k, v: [n_kv_heads, n, head_dim].  KV head j
    serves query heads j*group .. (j+1)*group-1.  With `window` > 0, query i
    sees only keys i-window+1 .. i.  Returns [n, n_heads*head_dim].
    """
    n_heads, n_pos, head_dim = q.shape
    group = n_heads // k.shape[0]
    k = np.repeat(k, group, axis=0)
    v = np.repeat(v, group, axis=0)
    scores = (q @ k.transpose(0, 2, 1)) * np.float32(1.0 / np.sqrt(head_dim))
    future = np.triu(np.ones((n_pos, n_pos), dtype=bool), k=1)
    if window:
        future |= np.tril(np.ones((n_pos, n_pos), dtype=bool), k=-window)  # i - j >= window
    scores[:, future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs @ v  # [n_heads, n, head_dim]
    return out.transpose(1, 0, 2).reshape(n_pos, n_heads * head_dim)


def linear(w: Weights, name: str, x: np.ndarray, out_dim: int, in_dim: int, bias: bool = False) -> np.ndarray:
    """y = x @ W.T (+ b) for the GGUF weight `name` of numpy shape [out_dim, in_dim]."""
    y = x @ w.get(f"{name}.weight", (out_dim, in_dim)).T
    if bias:
        y = y + w.get(f"{name}.bias", (out_dim,))
    return y


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def forward(hp: HParams, tokens: list[int], weights: Weights, last_only: bool = False,
            taps: Taps = NO_TAPS) -> np.ndarray:
    """Teacher-forced float32 forward; returns logits [n_tokens, vocab] (or [1, vocab]).

    `taps` records the intermediates (inp_embd, attn_norm-L, Qcur-L, ..., result_output).
    """
    if hp.arch == "gemma3":
        return forward_gemma3(hp, tokens, weights, last_only, taps)
    n = len(tokens)
    ids = np.asarray(tokens, dtype=np.int64)
    x = weights.rows("token_embd.weight", ids, hp.hidden)  # [n, hidden]
    taps.put("inp_embd", x)
    q_dim, kv_dim, hd = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.head_dim
    has_bias = hp.arch == "qwen2"
    cos, sin = rope_tables(n, hd, hp.rope_base)
    style = ROPE_STYLE[hp.arch]

    for layer in range(hp.n_layers):
        p = f"blk.{layer}"
        h = rms_norm(x, weights.get(f"{p}.attn_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("attn_norm", h, layer)
        q = linear(weights, f"{p}.attn_q", h, q_dim, hp.hidden, has_bias)
        k = linear(weights, f"{p}.attn_k", h, kv_dim, hp.hidden, has_bias)
        v = linear(weights, f"{p}.attn_v", h, kv_dim, hp.hidden, has_bias)
        taps.put("Qcur", q, layer)
        taps.put("Kcur", k, layer)
        taps.put("Vcur", v, layer)
        q = apply_rope(q.reshape(n, hp.n_heads, hd).transpose(1, 0, 2), cos, sin, style)
        k = apply_rope(k.reshape(n, hp.n_kv_heads, hd).transpose(1, 0, 2), cos, sin, style)
        v = v.reshape(n, hp.n_kv_heads, hd).transpose(1, 0, 2)
        attn = causal_attention(q, k, v)
        taps.put("kqv_out", attn, layer)
        x = x + linear(weights, f"{p}.attn_output", attn, hp.hidden, q_dim)
        taps.put("ffn_inp", x, layer)

        h = rms_norm(x, weights.get(f"{p}.ffn_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("ffn_norm", h, layer)
        gate = linear(weights, f"{p}.ffn_gate", h, hp.ffn, hp.hidden)
        up = linear(weights, f"{p}.ffn_up", h, hp.ffn, hp.hidden)
        act = gate / (np.float32(1.0) + np.exp(-gate)) * up  # silu(gate) * up
        taps.put("ffn_swiglu", act, layer)
        x = x + linear(weights, f"{p}.ffn_down", act, hp.hidden, hp.ffn)
        taps.put("l_out", x, layer)

    if last_only:
        x = x[-1:]
    x = rms_norm(x, weights.get("output_norm.weight", (hp.hidden,)), hp.eps)
    taps.put("result_norm", x)
    out_name = "output.weight" if weights.has("output.weight") else "token_embd.weight"
    logits = weights.project_chunked(x, out_name, hp.vocab, hp.hidden)
    taps.put("result_output", logits)
    return logits


def forward_gemma3(hp: HParams, tokens: list[int], weights: Weights, last_only: bool,
                   taps: Taps = NO_TAPS) -> np.ndarray:
    """Gemma 3's forward (llama.cpp's graph): logits [n_tokens, vocab] (or [1, vocab])."""
    n = len(tokens)
    ids = np.asarray(tokens, dtype=np.int64)
    x = weights.rows("token_embd.weight", ids, hp.hidden)  # [n, hidden]
    taps.put("inp_embd", x)
    x = x * np.float32(np.sqrt(hp.hidden))
    taps.put("inp_scaled", x)
    q_dim, kv_dim, hd = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim, hp.head_dim
    tables = {rope: rope_tables(n, hd, *rope) for rope in {hp.rope_of(i) for i in range(hp.n_layers)}}

    for layer in range(hp.n_layers):
        p = f"blk.{layer}"
        cos, sin = tables[hp.rope_of(layer)]
        h = rms_norm(x, weights.get(f"{p}.attn_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("attn_norm", h, layer)
        q = linear(weights, f"{p}.attn_q", h, q_dim, hp.hidden).reshape(n, hp.n_heads, hd)
        k = linear(weights, f"{p}.attn_k", h, kv_dim, hp.hidden).reshape(n, hp.n_kv_heads, hd)
        v = linear(weights, f"{p}.attn_v", h, kv_dim, hp.hidden).reshape(n, hp.n_kv_heads, hd)
        taps.put("Qcur", q, layer)
        taps.put("Kcur", k, layer)
        taps.put("Vcur", v, layer)
        q = rms_norm(q, weights.get(f"{p}.attn_q_norm.weight", (hd,)), hp.eps)  # per head
        k = rms_norm(k, weights.get(f"{p}.attn_k_norm.weight", (hd,)), hp.eps)
        q = apply_rope(q.transpose(1, 0, 2), cos, sin, "neox")  # [n_heads, n, hd]
        k = apply_rope(k.transpose(1, 0, 2), cos, sin, "neox")
        attn = causal_attention(q, k, v.transpose(1, 0, 2), hp.window_of(layer))  # [n, q_dim]
        taps.put("kqv_out", attn, layer)
        out = linear(weights, f"{p}.attn_output", attn, hp.hidden, q_dim)
        out = rms_norm(out, weights.get(f"{p}.post_attention_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("attn_post_norm", out, layer)
        x = x + out
        taps.put("ffn_inp", x, layer)

        h = rms_norm(x, weights.get(f"{p}.ffn_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("ffn_norm", h, layer)
        gate = linear(weights, f"{p}.ffn_gate", h, hp.ffn, hp.hidden)
        up = linear(weights, f"{p}.ffn_up", h, hp.ffn, hp.hidden)
        act = gelu_tanh(gate) * up
        taps.put("ffn_geglu", act, layer)
        out = linear(weights, f"{p}.ffn_down", act, hp.hidden, hp.ffn)
        out = rms_norm(out, weights.get(f"{p}.post_ffw_norm.weight", (hp.hidden,)), hp.eps)
        taps.put("ffn_post_norm", out, layer)
        x = x + out
        taps.put("l_out", x, layer)

    if last_only:
        x = x[-1:]
    x = rms_norm(x, weights.get("output_norm.weight", (hp.hidden,)), hp.eps)
    taps.put("result_norm", x)
    out_name = "output.weight" if weights.has("output.weight") else "token_embd.weight"
    logits = weights.project_chunked(x, out_name, hp.vocab, hp.hidden)  # [rows, vocab]
    if hp.logit_softcap > 0:
        cap = np.float32(hp.logit_softcap)
        logits = cap * np.tanh(logits / cap)
    taps.put("result_output", logits)
    return logits


def gpt2_byte_decoder() -> dict[str, int]:
    """Map GPT-2 byte-level characters back to byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
                 + list(range(0xAE, 0xFF + 1)))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def detokenize(reader: GGUFReader, ids: list[int]) -> str | None:
    """Best-effort decoding of `ids` using the file's vocabulary (for display only)."""
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        return None
    model = field_value(reader, "tokenizer.ggml.model", "llama")
    pieces = [field.contents(i) for i in ids]
    if model == "gpt2":
        table = gpt2_byte_decoder()
        data = bytes(table.get(c, ord("?")) for piece in pieces for c in piece)
        return data.decode("utf-8", errors="replace")
    out = bytearray()
    for piece in pieces:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(int(piece[3:5], 16))
        else:
            out += piece.replace("\u2581", " ").encode("utf-8")
    return out.decode("utf-8", errors="replace")


def parse_tokens(text: str) -> list[int]:
    """Parse a comma-separated list of token ids."""
    try:
        tokens = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad token list {text!r}: {exc}") from exc
    if not tokens:
        raise argparse.ArgumentTypeError("token list is empty")
    return tokens


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="path to a .gguf file (arch llama, qwen2 or gemma3)")
    ap.add_argument("--tokens", required=True, type=parse_tokens, help="comma-separated token ids")
    ap.add_argument("--out", help="write logits here as raw little-endian float32 [rows, vocab]")
    ap.add_argument("--last-only", action="store_true", help="write only the last position's logits")
    ap.add_argument("--dump", metavar="PATH",
                    help="write the per-layer intermediates of the forward over --tokens to PATH (.npz)")
    ap.add_argument("--greedy", type=int, default=0, metavar="N",
                    help="also decode N tokens greedily (full re-run per step) and print their ids")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    reader = GGUFReader(args.model)
    hp = read_hparams(reader)
    tokens = list(args.tokens)
    bad = [t for t in tokens if not 0 <= t < hp.vocab]
    if bad:
        raise SystemExit(f"token ids out of range [0, {hp.vocab}): {bad}")
    if len(tokens) + args.greedy > hp.ctx:
        print(f"warning: {len(tokens) + args.greedy} positions exceed context_length {hp.ctx}",
              file=sys.stderr)

    # Greedy decoding re-runs the forward every step, so keep dequantized weights.
    weights = Weights(reader, keep=args.greedy > 0)
    taps = Taps(args.dump is not None)
    logits = forward(hp, tokens, weights, last_only=args.last_only, taps=taps)
    if args.dump:
        taps.save(args.dump)
    if args.out:
        np.ascontiguousarray(logits, dtype="<f4").tofile(args.out)
    summary = {
        "n_tokens": len(tokens),
        "vocab": hp.vocab,
        "arch": hp.arch,
        "rows_written": int(logits.shape[0]) if args.out else 0,
        "last_argmax": int(np.argmax(logits[-1])),
    }

    if args.greedy > 0:
        generated = []
        step_logits = logits
        for step in range(args.greedy):
            if step > 0:
                step_logits = forward(hp, tokens + generated, weights, last_only=True)
            generated.append(int(np.argmax(step_logits[-1])))
        summary["greedy"] = generated
        summary["greedy_text"] = detokenize(reader, generated)

    summary["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
