#!/usr/bin/env python3
"""Side-by-side serving speed of `mlx-engine serve` and llama.cpp's `llama-server` on the same
GGUF, same thread count, rounds alternating between the servers (not part of CI).

K concurrent clients (K = 1, 4, 8, 16 by default) each send --requests streamed chat requests,
one after another: a ~100-token prompt and 128 generated tokens (the prompt asks to count, so
greedy decoding rarely stops early; tokens actually generated are what is counted). Per server
and K it prints, as a markdown table: aggregate generated tokens/s (all tokens of the round over
the round's wall time), time to first token p50/p95 and inter-token latency p50/p95 (gaps
between streamed content chunks, pooled over all requests), and ours/llama ratios when both run.

The script starts both servers itself, on loopback ports, with --parallel/-np = the largest K:
    python3 benches/compare/serve_compare.py MODEL.gguf --threads 2 \
        --llama-server /path/to/llama.cpp/build/bin/llama-server
Without --llama-server only our server is measured. llama-server is built from the llama.cpp
vendored in the llama-cpp-python 0.3.36 sdist (see compare.py) with -DLLAMA_BUILD_SERVER=ON.
Only the standard library is used.
"""
import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FILLER = (
    "You are a patient assistant that follows instructions exactly. When asked to count, you "
    "write every number in order, separated by commas and spaces, without skipping any, "
    "without commentary, and without stopping early. Numbers are written with digits."
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port, proc, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{what} did not become healthy")


def start_ours(args, parallel):
    port = free_port()
    binary = ROOT / "target/release/mlx-engine"
    cmd = [str(binary), "serve", "--model", args.model, "--port", str(port),
           "--parallel", str(parallel), "--ctx-size", str(args.ctx),
           "--max-queue", str(4 * parallel), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc, "mlx-engine serve")
    return proc, port


def start_llama(args, parallel):
    port = free_port()
    cmd = [args.llama_server, "-m", args.model, "--port", str(port), "--host", "127.0.0.1",
           "-np", str(parallel), "-c", str(args.ctx * parallel), "-t", str(args.threads),
           "-tb", str(args.threads), "-cb"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc, "llama-server")
    return proc, port


def chat_body(client, request, max_tokens):
    start = 1 + 1000 * client + 300 * request  # distinct prompts: no prefix beyond the system text
    return {
        "messages": [
            {"role": "system", "content": FILLER},
            {"role": "user", "content": f"Count from {start} to {start + 500}, one by one."},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def one_request(port, body):
    """Streams one chat request: (ttft seconds, [gaps], generated tokens)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:200]}")
    times, usage = [], None
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                times.append(time.perf_counter())
    conn.close()
    if not times:
        raise RuntimeError("no content streamed")
    generated = usage["completion_tokens"] if usage else len(times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return times[0] - sent, gaps, generated


def run_round(port, k, requests, max_tokens):
    """K clients, each sending `requests` requests in turn: (tokens/s, ttfts, gaps)."""
    ttfts, gaps, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client(c):
        for r in range(requests):
            try:
                ttft, g, n = one_request(port, chat_body(c, r, max_tokens))
            except Exception as e:  # reported below; a failed round is not silently counted
                with lock:
                    errors.append(repr(e))
                return
            with lock:
                ttfts.append(ttft)
                gaps.extend(g)
                tokens[0] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        sys.exit(f"K={k}: {len(errors)} requests failed: {errors[0]}")
    return tokens[0] / wall, ttfts, gaps


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    i = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[i]


def summarize(rounds):
    tps = statistics.median(r[0] for r in rounds)
    ttfts = [t for r in rounds for t in r[1]]
    gaps = [g for r in rounds for g in r[2]]
    return {"tps": tps, "ttft50": pct(ttfts, 50), "ttft95": pct(ttfts, 95),
            "itl50": pct(gaps, 50), "itl95": pct(gaps, 95), "n": len(ttfts)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the GGUF file both servers load")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", default="1,4,8,16", help="client counts")
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per server and K")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=1024, help="positions per sequence")
    parser.add_argument("--llama-server", help="path to llama-server (omit: ours only)")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    parallel = max(ks)

    servers = {"mlx-engine": start_ours(args, parallel)}
    if args.llama_server:
        servers["llama-server"] = start_llama(args, parallel)
    results = {name: {k: [] for k in ks} for name in servers}
    try:
        for k in ks:
            for r in range(args.rounds):
                # Alternate which server goes first, so drift in machine load hits both.
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    port = servers[name][1]
                    results[name][k].append(run_round(port, k, args.requests, args.max_tokens))
                    s = summarize(results[name][k][-1:])
                    print(f"# {name} K={k} round {r}: {s['tps']:.1f} tok/s", file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nthreads {args.threads}, {args.requests} requests per client per round, "
          f"{args.rounds} round(s), max_tokens {args.max_tokens}, --parallel/-np {parallel}\n")
    print("| server | K | requests | gen tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summaries = {name: {k: summarize(results[name][k]) for k in ks} for name in servers}
    for k in ks:
        for name in servers:
            s = summaries[name][k]
            print(f"| {name} | {k} | {s['n']} | {s['tps']:.1f} | {s['ttft50'] * 1e3:.0f} | "
                  f"{s['ttft95'] * 1e3:.0f} | {s['itl50'] * 1e3:.1f} | {s['itl95'] * 1e3:.1f} |")
    if len(servers) == 2:
        print("\n| K | tok/s ours/llama | TTFT p50 ours/llama | ITL p50 ours/llama |")
        print("| --- | --- | --- | --- |")
        for k in ks:
            a, b = summaries["mlx-engine"][k], summaries["llama-server"][k]
            print(f"| {k} | {a['tps'] / b['tps']:.2f} | {a['ttft50'] / b['ttft50']:.2f} | "
                  f"{a['itl50'] / b['itl50']:.2f} |")


if __name__ == "__main__":
    main()
