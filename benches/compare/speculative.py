#!/usr/bin/env python3
"""Speculative decoding speed: decode tokens/s of `mlx-engine --speculative ...` against the same
command without it, same model, same prompt, same thread count, runs alternating in one
invocation (not part of CI; not a timed test).

Workloads (chat template on, temperature 0 unless --temp is given):
  edit  the source file benches/compare/data/edit_source.py (~380 tokens) and "return it with
        one small change" (prompt lookup's best case: the answer repeats the prompt);
  story free text, nothing to copy (speculation must not cost what it does not win).
Configurations: `lookup` on the Qwen 0.5B and 1.5B, `draft` (1.5B target, 0.5B draft).

    cargo build --release
    python3 benches/compare/speculative.py --threads 2 --reps 2 -n 200

Prints one line per run and a table: median decode t/s without and with speculation, their
ratio, the acceptance rate, and whether the texts were identical (at temperature 0 they may
part only at a near-tie).

With --llama-cpp DIR (the `build/bin` of llama.cpp, built as compare.py's docstring says, with
the targets llama-lookup and llama-speculative), llama.cpp runs the same cases in the same
rounds: `llama-lookup` (its n-gram lookup) for the lookup cases, `llama-speculative -md` for
the draft cases, and `llama-lookup --spec-draft-n-max 0` as its plain decode; the prompt is
the same chat rendered as Qwen's ChatML with its default system prompt.
"""
import argparse
import re
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EDIT_SOURCE = ROOT / "benches/compare/data/edit_source.py"
STATS = re.compile(r"generated (\d+) tokens, ([\d.]+) t/s")
DRAFTS = re.compile(r"drafted (\d+), accepted (\d+)")


def prompts():
    source = EDIT_SOURCE.read_text()
    return {
        "edit": source + "\nReturn this file unchanged except that the method total_value is "
        "renamed to value. Output only the code.",
        "story": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    }


def run(binary, model, prompt, args, extra):
    cmd = [str(binary), "--model", model, "--chat", "--temp", str(args.temp), "-n", str(args.n),
           "--threads", str(args.threads), "--seed", "1", "--prompt", prompt] + extra
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = out.stderr.strip().splitlines()[-1]
    m = STATS.search(line)
    d = DRAFTS.search(line)
    return {
        "text": out.stdout,
        "tokens": int(m.group(1)),
        "tps": float(m.group(2)),
        "drafted": int(d.group(1)) if d else 0,
        "accepted": int(d.group(2)) if d else 0,
    }


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+[\d.]+ seconds, speed:\s+([\d.]+) t/s")
LLAMA_COUNT = re.compile(r"n_(drafted|accept)\s*=\s*(\d+)")


def model_file(name):
    """The GGUF `mlx-engine pull NAME` put in the cache."""
    return next((Path.home() / ".cache/mlx-engine/models" / name).glob("*.gguf"))


def run_llama(bin_dir, model, prompt, args, draft_model, draft_max):
    """llama.cpp on the same chat: lookup (draft_model None), a draft model, or plain (0)."""
    chat = (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")
    tool = "llama-speculative" if draft_model else "llama-lookup"
    cmd = [str(Path(bin_dir) / tool), "-m", str(model_file(model)), "-p", chat, "-n", str(args.n),
           "-t", str(args.threads), "--temp", str(args.temp), "-c", "4096", "--seed", "1",
           "--spec-draft-n-max", str(draft_max)]
    if draft_model:
        cmd += ["-md", str(model_file(draft_model)), "-td", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = LLAMA_DECODED.search(out.stderr)
    counts = dict((k, int(v)) for k, v in LLAMA_COUNT.findall(out.stderr))
    return {"tps": float(m.group(2)), "drafted": counts.get("drafted", 0),
            "accepted": counts.get("accept", 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target/release/mlx-engine"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("-n", type=int, default=200, help="tokens to generate per run")
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("--only", default="", help="comma-separated case names to run")
    ap.add_argument("--llama-cpp", default="", help="llama.cpp's build/bin, to run it alongside")
    args = ap.parse_args()
    small, large = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
    cases = [
        ("lookup 0.5B edit", small, "edit", ["--speculative", "lookup"]),
        ("lookup 0.5B story", small, "story", ["--speculative", "lookup"]),
        ("lookup 1.5B edit", large, "edit", ["--speculative", "lookup"]),
        ("lookup 1.5B story", large, "story", ["--speculative", "lookup"]),
        ("draft 1.5B/0.5B edit", large, "edit", ["--speculative", "draft", "--draft-model", small]),
        ("draft 1.5B/0.5B story", large, "story", ["--speculative", "draft", "--draft-model", small]),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c[0] in wanted]
    texts = prompts()
    rows = []
    llama_rows = []
    for name, model, workload, extra in cases:
        plain, spec = [], []
        lplain, lspec = [], []
        draft = extra[extra.index("--draft-model") + 1] if "--draft-model" in extra else None
        for rep in range(args.reps):
            if args.llama_cpp:
                for kind, k in [("plain", 0), ("spec", 4 if draft else 8)]:
                    r = run_llama(args.llama_cpp, model, texts[workload], args, draft if k else None, k)
                    (lplain if kind == "plain" else lspec).append(r)
                    print(f"{name:24} llama.cpp {kind:5} {r['tps']:6.1f} t/s "
                          f"drafted {r['drafted']:4} accepted {r['accepted']:4}", flush=True)
            # Alternate which goes first so drift in the machine's speed falls on both.
            order = [("plain", []), ("spec", extra)]
            if rep % 2:
                order.reverse()
            for kind, flags in order:
                r = run(args.binary, model, texts[workload], args, flags)
                (plain if kind == "plain" else spec).append(r)
                print(f"{name:24} {kind:5} {r['tokens']:4} tokens {r['tps']:6.1f} t/s "
                      f"drafted {r['drafted']:4} accepted {r['accepted']:4}", flush=True)
        p = statistics.median(r["tps"] for r in plain)
        s = statistics.median(r["tps"] for r in spec)
        drafted = sum(r["drafted"] for r in spec)
        accepted = sum(r["accepted"] for r in spec)
        same = all(a["text"] == b["text"] for a, b in zip(plain, spec))
        rows.append((name, p, s, s / p, accepted / max(drafted, 1), drafted, same))
        if args.llama_cpp:
            lp = statistics.median(r["tps"] for r in lplain)
            ls = statistics.median(r["tps"] for r in lspec)
            ld = sum(r["drafted"] for r in lspec)
            la = sum(r["accepted"] for r in lspec)
            llama_rows.append((name, lp, ls, la / max(ld, 1), ld, s))
    print("\n| case | plain t/s | speculative t/s | ratio | accepted/drafted | same text |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, p, s, ratio, rate, drafted, same in rows:
        print(f"| {name} | {p:.1f} | {s:.1f} | {ratio:.2f} | {rate:.0%} of {drafted} | "
              f"{'yes' if same else 'no'} |")
    if llama_rows:
        print("\n| case | llama.cpp plain t/s | llama.cpp speculative t/s | its ratio | its accepted |"
              " ours speculative / llama.cpp speculative |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, lp, ls, rate, drafted, ours_s in llama_rows:
            print(f"| {name} | {lp:.1f} | {ls:.1f} | {ls / lp:.2f} | {rate:.0%} of {drafted} | "
                  f"{ours_s / ls:.2f} |")


if __name__ == "__main__":
    main()
