"""Eval throughput: predictions/s of the hf backend at batch 1 vs 32 (tiny model, CPU, same run), and judge
requests/s at concurrency 1 vs 8 against the scripted OpenAI-compatible test server (tests/judge_server.py).

    .venv/bin/python benchmarks/bench_eval.py            # prints a table; --prompts / --delay to change the load
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_generation(n_prompts: int, max_new_tokens: int, batch_sizes: list[int]) -> list[tuple[str, float]]:
    import torch

    from sftlab.infer import GenerationParams, load_generator
    from sftlab.tiny import build_tiny_model

    torch.set_num_threads(1)
    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "model", hidden_size=128, num_layers=4, num_heads=4,
                                 intermediate_size=384)
    gen = load_generator(str(model_dir))
    convs = [[{"role": "user", "content": f"Question {i}: tell me about the number {i * 7}."}]
             for i in range(n_prompts)]
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    gen.generate(convs[:2], params)  # warm-up
    out = []
    for bs in batch_sizes:
        t0 = time.perf_counter()
        for start in range(0, n_prompts, bs):
            gen.generate(convs[start:start + bs], params)
        out.append((f"hf predictions/s, batch {bs} ({n_prompts} prompts, {max_new_tokens} new tokens)",
                    n_prompts / (time.perf_counter() - t0)))
    return out


def bench_judge(n_items: int, delay: float, concurrencies: list[int]) -> list[tuple[str, float]]:
    from judge_server import JudgeServer

    from sftlab.eval.judge import run_judge

    os.environ.setdefault("OPENAI_API_KEY", "bench")
    rows = [{"id": f"q{i}", "task_type": "t", "prompt": [{"role": "user", "content": f"question {i}"}],
             "reply": f"CORRECT {i}", "reference": None} for i in range(n_items)]
    out = []
    with JudgeServer(delay=delay) as srv, tempfile.TemporaryDirectory() as tmp:
        warm = {"base_url": srv.base_url, "model": "fair", "api_key_env": "OPENAI_API_KEY", "mode": "single",
                "dimensions": ["overall"], "cache": str(Path(tmp) / "warm.sqlite")}
        run_judge([dict(r) for r in rows[:2]], warm)  # imports and first connection out of the measurement
        for c in concurrencies:
            cfg = {"base_url": srv.base_url, "model": "fair", "api_key_env": "OPENAI_API_KEY", "concurrency": c,
                   "mode": "single", "dimensions": ["overall"], "cache": str(Path(tmp) / f"c{c}.sqlite")}
            t0 = time.perf_counter()
            s = run_judge([dict(r) for r in rows], cfg)
            out.append((f"judge requests/s, concurrency {c} ({s['requests']} requests, server delay {delay * 1000:.0f} ms)",
                        s["requests"] / (time.perf_counter() - t0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--judge-items", type=int, default=80)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds the test judge waits per request")
    args = ap.parse_args()
    rows = bench_generation(args.prompts, args.max_new_tokens, [1, 32])
    rows += bench_judge(args.judge_items, args.delay, [1, 8])
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.1f}")
    print(f"batch 32 / batch 1: {rows[1][1] / rows[0][1]:.1f}x; concurrency 8 / 1: {rows[3][1] / rows[2][1]:.1f}x")


if __name__ == "__main__":
    main()
