"""`sftlab serve` throughput and latency: batched vs one request at a time, at concurrency 1 and 16.

Two `sftlab serve` processes over the same tiny model (one with --max-batch-size 1, the baseline; one batched)
run side by side; the rounds alternate between them. Every request asks for the same number of new tokens
(greedy; the random tiny model rarely ends its turn early), so the modes do the same work per request.

    .venv/bin/python benchmarks/bench_serve.py                 # prints the table (~1-2 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_serve.py --rounds 3 --max-tokens 64 --out /tmp/bench_serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, max_batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "sftlab", "serve", "--model", str(model), "--port", str(port),
                             "--log", str(log), "--max-batch-size", str(max_batch_size), "--served-model-name", "m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server (max batch {max_batch_size}) did not start") from None
            time.sleep(0.2)


def run_load(url: str, concurrency: int, per_client: int, max_tokens: int) -> dict[str, float]:
    """`concurrency` clients, each sending `per_client` requests back to back; latency per request."""
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    def one_client(c: int) -> list[float]:
        out = []
        for k in range(per_client):
            msgs = [{"role": "user", "content": f"client {c} request {k}: what is {c} plus {k}?"}]
            t0 = time.perf_counter()
            resp = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=max_tokens)
            out.append(time.perf_counter() - t0)
            assert resp.choices[0].message.content is not None
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for xs in pool.map(one_client, range(concurrency)) for x in xs]
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "wall_s": wall, "req_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per (mode, concurrency)")
    ap.add_argument("--requests-per-client", type=int, default=4, help="at concurrency 16 (twice that at 1)")
    ap.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of the batched server")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server (OMP_NUM_THREADS); on a "
                    "shared machine more threads than free cores make OpenMP spin")
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: a fresh tiny model)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model = args.model
    if model is None:
        from sftlab.tiny import build_tiny_model

        model = build_tiny_model(tmp / "tiny", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384)
    modes = {"one-at-a-time": 1, "batched": args.batch_size}
    servers = {name: start_server(model, tmp / f"{name}.db", size, args.threads) for name, size in modes.items()}
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for _, url in servers.values():  # warm-up (first requests pay lazy initialisation)
            run_load(url, 2, 1, args.max_tokens)
        for r in range(args.rounds):
            for concurrency in (1, 16):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    per_client = args.requests_per_client * (2 if concurrency == 1 else 1)
                    res = run_load(servers[name][1], concurrency, per_client, args.max_tokens)
                    results.setdefault((name, concurrency), []).append(res)
                    print(f"round {r + 1} {name:>13} c={concurrency:<2} {res['req_per_s']:6.2f} req/s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)

    rows = []
    for (name, concurrency), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append({"mode": name, "concurrency": concurrency, "requests": sum(x["requests"] for x in runs),
                     "req_per_s": statistics.median(x["req_per_s"] for x in runs),
                     "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                     "p95_ms": statistics.median(x["p95_ms"] for x in runs)})
    print(f"\nmax_tokens={args.max_tokens}, batched = --max-batch-size {args.batch_size}, {args.threads} torch "
          f"thread(s) per server, medians over {args.rounds} alternating rounds")
    print(f"{'mode':>14} {'conc':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for row in rows:
        print(f"{row['mode']:>14} {row['concurrency']:>4} {row['requests']:>8} {row['req_per_s']:>7.2f} "
              f"{row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f}")
    speed = {c: {r["mode"]: r["req_per_s"] for r in rows if r["concurrency"] == c} for c in (1, 16)}
    ratio = speed[16]["batched"] / speed[16]["one-at-a-time"]
    print(f"batched / one-at-a-time throughput at concurrency 16: {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "ratio_c16": ratio}, indent=2))


if __name__ == "__main__":
    main()
