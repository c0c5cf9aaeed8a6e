#!/usr/bin/env python3
"""Side-by-side speed of mlx-engine and llama.cpp on the same GGUF, same machine, same thread
count, alternating runs in one invocation (not part of CI).

llama.cpp is measured with its own `llama-bench` (preferred: no Python in the loop), built from
the llama.cpp sources vendored in the llama-cpp-python sdist (~8 min on 2 cores):
    curl -LO "$(curl -s https://pypi.org/simple/llama-cpp-python/ \
        | grep -o 'https://[^"#]*llama_cpp_python-0.3.36.tar.gz' | head -1)"
    # sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    # (`pip download --no-binary :all:` also works but builds the package's metadata first)
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
          -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF && cmake --build build --target llama-bench -j2
    python3 benches/compare/compare.py MODEL.gguf --threads 2 --llama-bench .../build/bin/llama-bench
or, without --llama-bench, through llama-cpp-python's Python API (which adds ~5-10 ms of Python
and logits copying per decoded token, so it understates llama.cpp's tg):
    python3 -m venv target/llama-cpp-venv
    target/llama-cpp-venv/bin/pip install llama-cpp-python==0.3.36   # ~13 min on 2 cores
    target/llama-cpp-venv/bin/python benches/compare/compare.py MODEL.gguf --threads 2

Tests follow llama-bench: ppN = prefill N tokens into an empty context; tgN = N single-token
decode steps after a 1-token prompt (tgN_after_P when --context P is given). Prints a table of
tokens/s (median of --reps) and the ratio ours / llama.cpp.
"""
import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_tokens(n, vocab):
    """The same deterministic ids `mlx-engine bench` uses."""
    return [((i * 2_654_435_761 + 12_345) % (vocab - 1)) + 1 for i in range(n)]


def clear(llm):
    llm.reset()


def llama_cpp_run(llm, prompts, n_gen, context):
    """Returns ([pp t/s per prompt length], tg t/s) for one repetition."""
    vocab = llm.n_vocab()
    pps = []
    for n_prompt in prompts:
        clear(llm)
        toks = bench_tokens(n_prompt, vocab)
        start = time.perf_counter()
        llm.eval(toks)
        pps.append(n_prompt / (time.perf_counter() - start))
    llm.reset()
    llm.eval(bench_tokens(max(context, 1), vocab))
    start = time.perf_counter()
    for t in bench_tokens(n_gen, vocab):
        llm.eval([t])
    tg = n_gen / (time.perf_counter() - start)
    return pps, tg


def llama_bench_run(binary, model, prompts, n_gen, threads):
    """One repetition of llama.cpp's own llama-bench: ([pp t/s per prompt length], tg t/s)."""
    out = subprocess.run(
        [str(binary), "-m", str(model), "-p", ",".join(map(str, prompts)), "-n", str(n_gen), "-r", "1",
         "-t", str(threads), "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = json.loads(out)
    pp = {r["n_prompt"]: r["avg_ts"] for r in rows if r["n_gen"] == 0}
    tg = [r["avg_ts"] for r in rows if r["n_prompt"] == 0 and r["n_gen"] == n_gen]
    return [pp[p] for p in prompts], tg[0]


def ours_run(binary, model, prompts, n_gen, threads):
    out = subprocess.run(
        [str(binary), "bench", "-m", str(model), "-p", ",".join(map(str, prompts)), "-n", str(n_gen), "-r", "1",
         "-t", str(threads), "-o", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = {r["test"]: r["t_s"] for r in json.loads(out)}
    return [rows[f"pp{p}"] for p in prompts], rows[f"tg{n_gen}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-p", default="16,128,512", help="prompt lengths, comma-separated")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--context", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--binary", default=str(ROOT / "target/release/mlx-engine"))
    ap.add_argument("--llama-bench", help="path to llama.cpp's llama-bench (else llama-cpp-python is used)")
    args = ap.parse_args()

    prompts = [int(p) for p in args.p.split(",")]
    if args.llama_bench:
        if args.context != 1:
            raise SystemExit("--context is not supported with --llama-bench")
        def theirs_run():
            return llama_bench_run(args.llama_bench, args.model, prompts, args.n, args.threads)
    else:
        import llama_cpp

        llm = llama_cpp.Llama(args.model, n_ctx=max(2048, max(prompts) + args.n + args.context),
                              n_threads=args.threads, n_threads_batch=args.threads, n_batch=512, verbose=False)
        def theirs_run():
            return llama_cpp_run(llm, prompts, args.n, args.context)
    ours, theirs = [], []
    for _ in range(args.reps):
        ours.append(ours_run(args.binary, args.model, prompts, args.n, args.threads))
        theirs.append(theirs_run())
    rows = []
    for i, p in enumerate(prompts):
        o = statistics.median(r[0][i] for r in ours)
        t = statistics.median(r[0][i] for r in theirs)
        rows.append((f"pp{p}", o, t, o / t))
    o = statistics.median(r[1] for r in ours)
    t = statistics.median(r[1] for r in theirs)
    rows.append((f"tg{args.n}", o, t, o / t))
    how = "llama-bench" if args.llama_bench else "llama-cpp-python"
    print(f"model {Path(args.model).name}, threads {args.threads}, median of {args.reps} alternating runs, "
          f"llama.cpp via {how}")
    print("| test | mlx-engine t/s | llama.cpp t/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for test, o, t, r in rows:
        print(f"| {test} | {o:.2f} | {t:.2f} | {r:.2f} |")
    if prompts[0] <= 32:  # time to first token: the prefill of a short prompt, incl. its logits
        p = prompts[0]
        print(f"time to first token, {p}-token prompt: mlx-engine {1000 * p / rows[0][1]:.1f} ms, "
              f"llama.cpp {1000 * p / rows[0][2]:.1f} ms")


if __name__ == "__main__":
    main()
