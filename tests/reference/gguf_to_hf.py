#!/usr/bin/env python3
"""Writes a Hugging Face-style checkpoint (config.json + safetensors, optionally sharded with
model.safetensors.index.json) from a float GGUF written by make_synthetic.py, undoing the
llama.cpp converter's Q/K row permutation for arch `llama` so the HF copy uses rotate-half
RoPE as HF checkpoints do. Used to check that the engine computes the same logits from both.

    python3 gguf_to_hf.py IN.gguf OUT_DIR [--shards 2] [--dtype F32|F16|BF16]
        [--llama3-rope FACTOR:LOW:HIGH:ORIGINAL_CTX]

RoPE scaling keys (linear, YaRN) become the config's `rope_scaling`; a `rope_freqs.weight`
tensor (llama3 factors) is dropped and `--llama3-rope` gives the constants HF computes the same
factors from.
"""
import argparse
import json
import struct
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def meta(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else value[0].item()


def unpermute(w, n_head):
    """Inverse of the converter's permute: rows back to HF order."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
PARTS = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}


def rope_scaling(reader, arch, llama3):
    """HF `rope_scaling` from the GGUF's rope.scaling.* keys, or from `--llama3-rope`."""
    if llama3:
        factor, low, high, original = llama3.split(":")
        return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": float(low),
                "high_freq_factor": float(high), "original_max_position_embeddings": int(original)}
    if f"{arch}.rope.scaling.type" not in reader.fields:
        return None
    kind = meta(reader, f"{arch}.rope.scaling.type")
    factor = float(meta(reader, f"{arch}.rope.scaling.factor"))
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        original = meta(reader, f"{arch}.rope.scaling.original_context_length")
        return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    raise SystemExit(f"rope.scaling.type {kind!r} has no HF form here")


def hf_name(name):
    if name in HF:
        return HF[name]
    _, layer, part, suffix = name.split(".")
    return f"model.layers.{layer}.{PARTS[part]}.{suffix}"


def write_safetensors(path, tensors, dtype):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors:
        if dtype == "BF16":
            data = (arr.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            data = arr.astype(np.float16 if dtype == "F16" else np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--dtype", default="F32", choices=["F32", "F16", "BF16"])
    ap.add_argument("--llama3-rope", default=None, metavar="FACTOR:LOW:HIGH:ORIGINAL_CTX",
                    help="llama3 rope_scaling for the config (the GGUF's rope_freqs.weight is dropped)")
    args = ap.parse_args()
    reader = GGUFReader(args.gguf)
    arch = meta(reader, "general.architecture")
    n_head = meta(reader, f"{arch}.attention.head_count")
    n_kv = meta(reader, f"{arch}.attention.head_count_kv")
    tensors = []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            if not args.llama3_rope:
                raise SystemExit("rope_freqs.weight needs --llama3-rope (its constants)")
            continue
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        if arch == "llama" and t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        if arch == "llama" and t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        tensors.append((hf_name(t.name), w))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    embd = next(w for n, w in tensors if n == "model.embed_tokens.weight")
    config = {
        "model_type": arch,
        "hidden_size": meta(reader, f"{arch}.embedding_length"),
        "intermediate_size": meta(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": meta(reader, f"{arch}.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "vocab_size": int(embd.shape[0]),
        "max_position_embeddings": meta(reader, f"{arch}.context_length"),
        "rope_theta": float(meta(reader, f"{arch}.rope.freq_base")),
        "rms_norm_eps": float(meta(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": not any(n == "lm_head.weight" for n, _ in tensors),
        "rope_scaling": rope_scaling(reader, arch, args.llama3_rope),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if args.shards == 1:
        write_safetensors(out / "model.safetensors", tensors, args.dtype)
        return
    per = -(-len(tensors) // args.shards)
    weight_map = {}
    for i in range(args.shards):
        name = f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
        chunk = tensors[i * per:(i + 1) * per]
        write_safetensors(out / name, chunk, args.dtype)
        weight_map.update({n: name for n, _ in chunk})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


if __name__ == "__main__":
    main()
