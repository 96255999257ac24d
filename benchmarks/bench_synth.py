"""best-of-n throughput (prompts/s at N=4): the hf backend on CPU (the tiny model) and the openai backend against
the scripted test teacher (tests/synth_server.py) at concurrency 1 and 8, with a fixed per-request latency that
stands in for a remote model. Both go through `sftlab.synth.best_of_n` exactly as `sftlab synth best-of-n` does.

    .venv/bin/python benchmarks/bench_synth.py                  # prints the table (~30 s on 2 idle cores)
    .venv/bin/python benchmarks/bench_synth.py --prompts 64 --latency 0.2 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def prompts(k: int) -> list[dict]:
    return [{"id": f"q{a}", "task_type": "math", "tools": None, "source": "", "meta": {},
             "messages": [{"role": "user", "content": f"What is {a} + {a * 3 + 7}?"},
                          {"role": "assistant", "content": str(a + a * 3 + 7)}]} for a in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds per request at the test teacher")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="hf backend: tokens per reply")
    args = ap.parse_args()

    from synth_server import ScriptedTeacher, sometimes_right

    from sftlab.infer import load_generator
    from sftlab.synth.best_of_n import best_of_n
    from sftlab.synth.teacher import load_teacher
    from sftlab.synth.verifiers import make_verifier
    from sftlab.tiny import build_tiny_model

    recs, ver = prompts(args.prompts), make_verifier("numeric")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        gen = load_generator(model)
        res = best_of_n(recs, gen, ver, n=args.n, max_new_tokens=args.max_new_tokens, seed=0, threshold=0.0)
        rows.append(("hf (tiny model, CPU)", "-", res.summary["prompts_per_s"], res.summary["replies"]))
    for conc in (1, 8):
        with ScriptedTeacher(sometimes_right, delay=args.latency) as t:
            gen = load_teacher(t.base_url, concurrency=conc)
            res = best_of_n(recs, gen, ver, n=args.n, seed=0)
            rows.append((f"openai (test teacher, {args.latency:g} s/request)", conc, res.summary["prompts_per_s"],
                         res.summary["replies"]))
    print(f"best-of-n, N={args.n}, {args.prompts} prompts")
    print(f"{'backend':<42} {'concurrency':>11} {'prompts/s':>10} {'replies':>8}")
    for name, conc, pps, reps in rows:
        print(f"{name:<42} {conc!s:>11} {pps:>10.2f} {reps:>8}")


if __name__ == "__main__":
    main()
