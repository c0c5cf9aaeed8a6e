#!/usr/bin/env python3
"""Resident-memory soak of `mlx-engine serve`: a bounded loop of short requests on loopback.

Starts the server on a model (by default a small synthetic llama written by
tests/reference/make_synthetic.py), then 4 client threads send REQUESTS requests in all, in
turn: a non-streamed completion, a streamed chat completion read to the end, a streamed
completion the client abandons after its first chunk, and a non-streamed chat completion;
each asks for at most 4 tokens. The server's VmRSS (from /proc) is printed every 500
requests, and at 1,000 and at the end; memory that stays flat between them shows that no
request (finished or abandoned) leaves anything behind.

    PYTHONPATH=target/pydeps python3 benches/soak/server_soak.py [--requests 10000]

Only the standard library is needed beyond make_synthetic.py's packages. Not in CI.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def synthetic_model(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "tests/reference/make_synthetic.py"), str(path),
                        "--arch", "llama", "--quant", "Q4_0", "--layers", "2", "--hidden", "64",
                        "--heads", "4", "--kv-heads", "2", "--ffn", "128", "--vocab", "512",
                        "--ctx", "256", "--chat-template", "chatml"], check=True)
    return path


def start_server(binary: str, model: pathlib.Path, log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([binary, "serve", "--port", "0", "--model", str(model), "--parallel", "4",
                               "--threads", "1"], stderr=open(log, "w"))
    deadline = time.time() + 120
    while time.time() < deadline:
        text = log.read_text()
        m = re.search(r"listening on http://(\S+)", text)
        if m and "model loaded" in text:
            return server, m.group(1)
        if server.poll() is not None:
            sys.exit(f"the server exited:\n{text}")
        time.sleep(0.1)
    sys.exit("the server did not start")


def one_request(address: str, kind: int) -> None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chat = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0.7}
    completion = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0.7}
    path, body = [("/v1/completions", completion), ("/v1/chat/completions", dict(chat, stream=True)),
                  ("/v1/completions", dict(completion, stream=True, max_tokens=64)),
                  ("/v1/chat/completions", chat)][kind % 4]
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {response.read()!r}")
    if kind % 4 == 2:
        response.readline()  # the first event, then the client leaves
    else:
        response.read()
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--binary", default=str(ROOT / "target/release/mlx-engine"))
    ap.add_argument("--model", default=None, help="a GGUF (default: a small synthetic llama)")
    args = ap.parse_args()
    out = ROOT / "target/soak"
    out.mkdir(parents=True, exist_ok=True)
    model = pathlib.Path(args.model) if args.model else synthetic_model(out / "soak-llama.gguf")
    server, address = start_server(args.binary, model, out / "server.log")
    lock, done, failures = threading.Lock(), [0], []
    marks = {1_000, args.requests}
    started = time.time()
    print(f"server pid {server.pid} on {address}; RSS at start {rss_kib(server.pid)} KiB", flush=True)

    def client() -> None:
        while True:
            with lock:
                if done[0] >= args.requests:
                    return
                n = done[0]
                done[0] += 1
            try:
                one_request(address, n)
            except Exception as e:  # noqa: BLE001 - every failure is reported at the end
                failures.append(f"request {n}: {e}")
            finished = n + 1
            if finished % 500 == 0 or finished in marks:
                print(f"{finished:6d} requests  RSS {rss_kib(server.pid):7d} KiB  "
                      f"{time.time() - started:6.1f} s", flush=True)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1)
    print(f"after the last request (idle 1 s): RSS {rss_kib(server.pid)} KiB; "
          f"{len(failures)} failures", flush=True)
    for f in failures[:10]:
        print("  ", f)
    server.terminate()
    server.wait()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
