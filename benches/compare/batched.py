#!/usr/bin/env python3
"""Batched decode side by side: `mlx-engine bench --batch` against `llama-batched-bench`.

Both engines prefill B sequences of --prompt tokens each, then decode --gen tokens per sequence
in batched steps; the table is the aggregate decode tokens/s per B (and the step time relative
to B = 1). Rounds alternate the two engines so host drift hits both alike.

  python3 benches/compare/batched.py MODEL.gguf --llama-batched-bench PATH [--batch 1,2,4,8,16]
      [--prompt 128] [--gen 32] [--threads 2] [--rounds 2] [--mlx-engine target/release/mlx-engine]
"""
import argparse
import re
import statistics
import subprocess


def ours(args, batches):
    cmd = [args.mlx_engine, "bench", "-m", args.model, "-p", "0", "-n", str(args.gen),
           "--batch", ",".join(map(str, batches)), "--batch-prompt", str(args.prompt),
           "-r", "1", "-t", str(args.threads), "-o", "json"]
    import json
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    out = {}
    for r in rows:
        m = re.match(r"tg\d+ B=(\d+)", r["test"])
        if m:
            out[int(m.group(1))] = r["t_s"]
    return out


def llama(args, batches):
    cmd = [args.llama_batched_bench, "-m", args.model, "-c", str((args.prompt + args.gen) * max(batches) + 64),
           "-b", "2048", "-ub", "512", "-npp", str(args.prompt), "-ntg", str(args.gen),
           "-npl", ",".join(map(str, batches)), "-t", str(args.threads)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s
        if len(cells) >= 8 and cells[2].isdigit():
            out[int(cells[2])] = float(cells[7])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--llama-batched-bench", required=True)
    ap.add_argument("--mlx-engine", default="target/release/mlx-engine")
    ap.add_argument("--batch", default="1,2,4,8,16")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    runs = {"ours": [], "llama": []}
    for _ in range(args.rounds):
        runs["ours"].append(ours(args, batches))
        runs["llama"].append(llama(args, batches))
    med = {k: {b: statistics.median(r[b] for r in v) for b in batches} for k, v in runs.items()}
    print(f"| B | ours t/s | llama.cpp t/s | ratio | our step / B=1 step | llama.cpp step / B=1 step |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for b in batches:
        o, l = med["ours"][b], med["llama"][b]
        so = (b / o) / (1 / med["ours"][batches[0]]) if batches[0] == 1 else float("nan")
        sl = (b / l) / (1 / med["llama"][batches[0]]) if batches[0] == 1 else float("nan")
        print(f"| {b} | {o:.1f} | {l:.1f} | {o / l:.2f} | {so:.2f} | {sl:.2f} |")


if __name__ == "__main__":
    main()
