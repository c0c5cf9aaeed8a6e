#!/usr/bin/env python3
"""Write golden files of llama.cpp's own logits for tests/llama_cpp_goldens.rs.

For every model in GOLDENS (deterministic synthetic GGUFs written by make_synthetic.py, and
the real models of the registry), llama.cpp decodes the golden's token ids teacher-forced
(one batch, logits at every position, float32 KV cache; `llama_logits.c`, compiled here
against the llama.cpp build) and this script keeps, per position, the top-20 token ids with
their log-probabilities (log-softmax of llama.cpp's logits, in float64). Each golden is a
small JSON file in tests/data/goldens/: the llama.cpp version, the model (make_synthetic.py
arguments or a registry name), its sha256, the token ids and the top-20 rows.

The tests need neither llama.cpp nor this script: they regenerate the synthetic models (the
sha256 in the golden checks that the bytes are the same) and compare our logits.

Usage (the lead's build of the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist)::

    PYTHONPATH=target/pydeps python3 tests/reference/llama_cpp_goldens.py \\
        --llama-cpp-src /work/llama.cpp/llama_cpp_python-0.3.36 \\
        --llama-cpp-lib /work/llama.cpp/build/bin [--only NAME ...]

Real models are read from ~/.cache/mlx-engine/models/NAME/ (`mlx-engine pull NAME`); a real
model that is not there is skipped with a message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import make_synthetic  # noqa: E402

TOP_K = 20
GOLDEN_DIR = ROOT / "tests" / "data" / "goldens"

# 102 tokens of Python source: the Qwen tokenization of the Fibonacci text in tests/data
# (QWEN_PROMPT of tests/model_fidelity.rs).
QWEN_PROMPT = [
    750, 75698, 1445, 982, 262, 4210, 5598, 279, 308, 7563, 79683, 1372, 1667, 458, 86875, 6337,
    14442, 262, 264, 11, 293, 284, 220, 15, 11, 220, 16, 198, 262, 369, 716, 304, 2088, 1445, 982,
    286, 264, 11, 293, 284, 293, 11, 264, 488, 293, 198, 262, 470, 264, 1406, 2, 576, 8500, 27715,
    6157, 25, 75698, 7, 16, 15, 8, 374, 220, 20, 20, 323, 75698, 7, 17, 15, 8, 374, 220, 21, 22,
    21, 20, 624, 333, 1304, 606, 563, 621, 13265, 3817, 21082, 262, 369, 600, 304, 2088, 7, 16, 17,
    982, 286, 1173, 1956, 11, 75698, 1956, 1171,
]


def synthetic_tokens(n: int = 48, vocab: int = 512, seed: int = 7) -> list[int]:
    """n token ids drawn uniformly from 3..vocab with a fixed seed (ids 0-2 are specials)."""
    return [int(t) for t in np.random.default_rng(seed).integers(3, vocab, size=n)]


@dataclass
class Golden:
    """One golden: a model and the tokens it is run on."""

    name: str
    what: str  # one line for the file: which feature the golden checks
    synthetic: list[str] = field(default_factory=list)  # make_synthetic.py arguments
    registry: str = ""  # or a registry model name
    tokens: list[int] = field(default_factory=synthetic_tokens)
    greedy: int = 0  # extend `tokens` by this many of llama.cpp's greedy (argmax) tokens first


GOLDENS = [
    Golden("llama-mix", "llama, untied output, every quant type in turn",
           synthetic=["--arch", "llama", "--quant", "mix", "--seed", "1"]),
    Golden("qwen2-mix", "qwen2: Q/K/V biases, RoPE on halves",
           synthetic=["--arch", "qwen2", "--quant", "mix", "--seed", "2"]),
    Golden("gemma3-window4", "gemma3: Q/K norms, post norms, GEGLU, sliding window of 4 in layers 0-4",
           synthetic=["--arch", "gemma3", "--quant", "mix", "--layers", "6", "--sliding-window", "4",
                      "--seed", "4"]),
    Golden("llama-rope-linear4", "llama with linear RoPE scaling, factor 4",
           synthetic=["--arch", "llama", "--quant", "Q8_0", "--seed", "5", "--rope-scale", "4"]),
    Golden("qwen2-yarn4", "qwen2 with YaRN RoPE scaling, factor 4 over an original context of 16",
           synthetic=["--arch", "qwen2", "--quant", "Q8_0", "--seed", "6", "--yarn", "4:16"]),
    Golden("llama32-style", "Llama 3.2-style: tied embeddings, llama3 RoPE factors (rope_freqs.weight; "
           "factor 32, low 1, high 4 over an original context of 16)",
           synthetic=["--arch", "llama", "--quant", "Q4_K", "--tied", "--seed", "8",
                      "--rope-base", "500000", "--llama3-rope", "32:1:4:16"]),
    Golden("qwen3-mix", "qwen3: per-head Q/K RMSNorm, no Q/K/V biases",
           synthetic=["--arch", "qwen3", "--quant", "mix", "--seed", "9"]),
    Golden("phi3-mix", "phi3: fused attn_qkv and gate/up (ffn_up holds both)",
           synthetic=["--arch", "phi3", "--quant", "mix", "--seed", "10"]),
    Golden("gemma3-4b-style", "Gemma 3 4B-style: linear RoPE scaling 8 on the global layers only",
           synthetic=["--arch", "gemma3", "--quant", "Q8_0", "--layers", "6", "--sliding-window", "4",
                      "--seed", "11", "--rope-scale", "8"]),
    Golden("qwen2.5-coder-0.5b", "the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
           registry="qwen2.5-coder-0.5b", tokens=QWEN_PROMPT),
    Golden("qwen2.5-coder-1.5b", "the real Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
           registry="qwen2.5-coder-1.5b", tokens=QWEN_PROMPT),
]
# Greedy continuations: two prompts cut from QWEN_PROMPT, continued by llama.cpp's argmax.
for _model in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
    for _i, (_a, _b) in enumerate(((0, 20), (46, 62))):
        GOLDENS.append(Golden(f"{_model}-greedy{_i + 1}",
                              f"llama.cpp's 24 greedy tokens after QWEN_PROMPT[{_a}:{_b}]",
                              registry=_model, tokens=QWEN_PROMPT[_a:_b], greedy=24))


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def llama_cpp_version(src: Path, lib: Path) -> str:
    """`llama-cpp-python X (vendored llama.cpp, ggml Y)`, from the sdist and the library names."""
    init = (src / "llama_cpp" / "__init__.py").read_text()
    version = re.search(r'__version__ = "([^"]+)"', init)
    ggml = sorted(p.name for p in lib.glob("libggml.so.*.*"))
    ggml_version = ggml[-1].removeprefix("libggml.so.") if ggml else "unknown"
    return f"llama-cpp-python {version.group(1) if version else '?'} (vendored llama.cpp, ggml {ggml_version})"


def build_helper(src: Path, lib: Path, out_dir: Path) -> Path:
    """Compiles llama_logits.c against the llama.cpp headers and libllama."""
    vendor = src / "vendor" / "llama.cpp"
    exe = out_dir / "llama_logits"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "llama_logits.c"),
                    f"-I{vendor / 'include'}", f"-I{vendor / 'ggml' / 'include'}",
                    f"-L{lib}", "-lllama", f"-Wl,-rpath,{lib}"], check=True)
    return exe


def llama_cpp_logits(exe: Path, model: Path, tokens: list[int], work: Path) -> np.ndarray:
    """llama.cpp's logits [len(tokens), vocab] for `tokens`, teacher-forced."""
    out = work / "logits.f32"
    subprocess.run([str(exe), str(model), str(out), ",".join(map(str, tokens))], check=True)
    logits = np.fromfile(out, dtype="<f4")
    return logits.reshape(len(tokens), -1)


def top_rows(logits: np.ndarray) -> list[list[list[float]]]:
    """Per position, the top-20 [id, logprob] pairs (log-softmax in float64), best first."""
    rows = []
    for row in logits.astype(np.float64):
        logprobs = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        top = np.argsort(-logprobs, kind="stable")[:TOP_K]
        rows.append([[int(i), round(float(logprobs[i]), 6)] for i in top])
    return rows


def registry_path(name: str) -> Path | None:
    """The cached GGUF of a registry model, or None."""
    folder = Path(os.path.expanduser("~/.cache/mlx-engine/models")) / name
    files = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    return files[0] if files else None


def write_golden(g: Golden, exe: Path, version: str, work: Path) -> None:
    """Runs llama.cpp on one golden's model and writes tests/data/goldens/NAME.json."""
    if g.synthetic:
        model = work / f"{g.name}.gguf"
        make_synthetic.main([str(model)] + g.synthetic)
        source = {"synthetic": g.synthetic}
    else:
        model = registry_path(g.registry)
        if model is None:
            print(f"skipping {g.name}: {g.registry} is not cached (mlx-engine pull {g.registry})")
            return
        source = {"registry": g.registry, "file": model.name}
    tokens = list(g.tokens)
    for _ in range(g.greedy):
        tokens.append(int(np.argmax(llama_cpp_logits(exe, model, tokens, work)[-1])))
    logits = llama_cpp_logits(exe, model, tokens, work)
    golden = {
        "name": g.name,
        "checks": g.what,
        "llama_cpp": version,
        "llama_cpp_settings": "CPU, one batch of all tokens, logits at every position, float32 KV cache",
        "model": source,
        "sha256": sha256(model),
        "vocab": int(logits.shape[1]),
        "tokens": tokens,
        "prompt_tokens": len(g.tokens),
        "top": top_rows(logits),
    }
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    path = GOLDEN_DIR / f"{g.name}.json"
    path.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp-src", type=Path, required=True,
                    help="the llama-cpp-python sdist (holds vendor/llama.cpp)")
    ap.add_argument("--llama-cpp-lib", type=Path, required=True, help="folder holding libllama.so")
    ap.add_argument("--only", nargs="*", default=None, help="golden names to write (default all)")
    args = ap.parse_args(argv)
    wanted = [g for g in GOLDENS if args.only is None or g.name in args.only]
    if args.only and len(wanted) != len(args.only):
        raise SystemExit(f"unknown golden among {args.only}; known: {[g.name for g in GOLDENS]}")
    version = llama_cpp_version(args.llama_cpp_src, args.llama_cpp_lib)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_helper(args.llama_cpp_src, args.llama_cpp_lib, work)
        for g in wanted:
            write_golden(g, exe, version, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
