#!/usr/bin/env python3
"""LoRA training speed side by side: `mlx-engine finetune` against mlx-lm's `mlx_lm lora` on
MLX's CPU backend, same model, data and settings (rank 8 on q, k, v, o of every layer, batch 1,
sequences of --seq-len tokens), alternating rounds. Not part of the test suite.

mlx-lm needs the model as a Hugging Face directory; it is made here from the GGUF (every tensor
dequantized to float32 with the `gguf` package, the tokenizer through transformers' GGUF
reader), for Qwen2-family models. Run with a Python that has `mlx[cpu]`, `mlx-lm`,
`transformers`, `safetensors` and `gguf`:

    python3 benches/compare/finetune_compare.py MODEL.gguf --steps 10 --rounds 2
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

HF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def convert(gguf_path: Path, out: Path) -> None:
    """A float32 Hugging Face Qwen2 directory from a Qwen2 GGUF."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]][0].item()

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "qwen2":
        raise SystemExit(f"{gguf_path}: only qwen2 GGUFs are converted here, not {arch}")
    tensors = {}
    for t in reader.tensors:
        value = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        name = t.name
        if name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = value
        elif name == "output_norm.weight":
            tensors["model.norm.weight"] = value
        elif name == "output.weight":
            tensors["lm_head.weight"] = value
        else:
            _, layer, part, kind = name.split(".")
            tensors[f"model.layers.{layer}.{HF_NAMES[part]}.{kind}"] = value
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": field("qwen2.embedding_length"),
        "intermediate_size": field("qwen2.feed_forward_length"),
        "num_hidden_layers": field("qwen2.block_count"),
        "num_attention_heads": field("qwen2.attention.head_count"),
        "num_key_value_heads": field("qwen2.attention.head_count_kv"),
        "rms_norm_eps": field("qwen2.attention.layer_norm_rms_epsilon"),
        "rope_theta": field("qwen2.rope.freq_base"),
        "max_position_embeddings": field("qwen2.context_length"),
        "vocab_size": tensors["model.embed_tokens.weight"].shape[0],
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(reader, out)


# Qwen2's pre-tokenizer split (a fact of its tokenizer.json).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_tokenizer(reader, out: Path) -> None:
    """tokenizer.json (byte-level BPE from the GGUF's tokens and merges) and its config."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    def contents(key):
        return reader.fields[key].contents()

    tokens, types = contents("tokenizer.ggml.tokens"), contents("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in contents("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    tok.save(str(out / "tokenizer.json"))
    eos = tokens[contents("tokenizer.ggml.eos_token_id")]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos,
              "chat_template": contents("tokenizer.chat_template")}
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def make_data(dirpath: Path, n: int, chars: int) -> None:
    """train.jsonl / valid.jsonl of {"text"} cut from this repository's Rust sources."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "src").rglob("*.rs")))
    rng = random.Random(0)
    for name, count in (("train", n), ("valid", 2)):
        with open(dirpath / f"{name}.jsonl", "w") as f:
            for _ in range(count):
                start = rng.randrange(0, len(text) - chars)
                f.write(json.dumps({"text": text[start:start + chars]}) + "\n")


def run_mlx_lm(model: Path, data: Path, args, work: Path) -> float:
    config = work / "lora.yaml"
    config.write_text(
        "lora_parameters:\n  rank: 8\n  scale: 2.0\n  dropout: 0.0\n"
        "  keys: [self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj]\n")
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", str(model), "--train",
           "--data", str(data), "--iters", str(args.steps), "--batch-size", "1",
           "--num-layers", "-1", "--max-seq-length", str(args.seq_len),
           "--steps-per-report", str(args.steps), "--steps-per-eval", "100000",
           "--val-batches", "1", "--learning-rate", "1e-4",
           "--adapter-path", str(work / "mlx-lm-adapters"), "-c", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    # Older mlx-lm: "Iter N: Train loss L, ..., Tokens/sec T"; newer: a table row
    # "N  L ▼  T  0.8k" (iteration, train loss, trend, tokens/s, tokens so far).
    rates = re.findall(r"Tokens/sec ([0-9.]+)", out) or re.findall(
        r"^\s*\d+\s+[0-9.]+\s+\S\s+([0-9.]+)\s+[0-9.]+k?\s*$", out, re.M)
    if not rates:
        raise SystemExit(f"no Tokens/sec in mlx_lm output:\n{out}")
    return float(rates[-1])


def run_ours(binary: Path, gguf: Path, data: Path, args, work: Path) -> float:
    cmd = [str(binary), "finetune", "--model", str(gguf), "--data", str(data / "train.jsonl"),
           "--steps", str(args.steps), "--batch", "1", "--seq-len", str(args.seq_len),
           "--rank", "8", "--alpha", "16", "--targets", "q,k,v,o", "--lr", "1e-4",
           "--threads", str(args.threads), "--out", str(work / "ours")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"([0-9.]+) training tokens/s", out).group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/mlx-engine")
    ap.add_argument("--hf-dir", type=Path, help="reuse (or write) the converted model here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf = args.hf_dir or work / "hf"
        if not (hf / "config.json").exists():
            convert(args.gguf, hf)
        data = work / "data"
        data.mkdir()
        # Enough characters that every example fills --seq-len tokens.
        make_data(data, max(args.steps, 4), args.seq_len * 6)
        rows = []
        for r in range(args.rounds):
            ours = run_ours(args.binary, args.gguf, data, args, work)
            theirs = run_mlx_lm(hf, data, args, work)
            rows.append((ours, theirs))
            print(f"round {r + 1}: mlx-engine {ours:.1f} tok/s, mlx-lm {theirs:.1f} tok/s, "
                  f"ratio {ours / theirs:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
