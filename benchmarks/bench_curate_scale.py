"""`sftlab data clean`, `dedup` and `split` at scale: wall time and peak RSS of each CLI run.

    python benchmarks/bench_curate_scale.py --n 1000000            # the issue's figure (1M records)
    python benchmarks/bench_curate_scale.py --n 200000 --dedup-mode exact near
    python benchmarks/bench_curate_scale.py --n 200000 --dedup-mode --split   # clean, then split (leakage near)
    python benchmarks/bench_curate_scale.py --n 200000 --dedup-mode near --dedup-keep score
    python benchmarks/bench_curate_scale.py --n 200000 --dedup-mode --kcenter 200
    python benchmarks/bench_curate_scale.py --n 200000 --dedup-mode --pipeline --compare-root /tmp/old-checkout

Generates N canonical records as JSONL in a temp dir (English-like prompts and answers of 20-200 words;
about 8% empty answers or refusals for clean to drop, 5% exact and 5% near duplicates for dedup), then runs
clean on it and dedup / split on clean's output (dedup refuses empty answers), each step as its own subprocess (`python -m sftlab data ...`) and reads that child's peak RSS from
os.wait4 (ru_maxrss), so every row is the step alone. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, n: int, seed: int = 0) -> int:
    """Write n records; returns the file size in bytes."""
    rng = random.Random(seed)
    vocab = [f"w{i}{rng.choice('aeiou')}{rng.choice('nrst')}" for i in range(20000)]
    pool: list[tuple[str, str]] = []  # (prompt, answer) pairs that duplicates copy
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            prompt = " ".join(rng.choices(vocab, k=rng.randint(5, 40))) + "?"
            if roll < 0.05 and pool:
                prompt, answer = rng.choice(pool)  # exact duplicate
            elif roll < 0.10 and pool:
                prompt, answer = rng.choice(pool)
                words = answer.split()
                for _ in range(max(1, len(words) // 20)):  # ~5% of the answer's tokens substituted
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                answer = " ".join(words)
            elif roll < 0.14:
                answer = "   "
            elif roll < 0.18:
                answer = "As an AI language model, I cannot help with that."
            else:
                answer = " ".join(rng.choices(vocab, k=rng.randint(20, 200))) + "."
                if len(pool) < 50000:
                    pool.append((prompt, answer))
            rec = {"id": f"r{i}", "messages": [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": answer}],
                   "tools": None, "task_type": f"t{i % 7}", "source": "bench",
                   "meta": {"quality": round(rng.random(), 3)}}  # what `dedup --keep score` ranks by
            f.write(json.dumps(rec) + "\n")
    return path.stat().st_size


def write_random_embeddings(records: Path, out: Path, dim: int = 384) -> None:
    """Random unit vectors for the ids of `records`, saved like `sftlab data embed` (ids + embeddings)."""
    import numpy as np

    from sftlab.curate.embed import save_embeddings

    with open(records, encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line in f]
    emb = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    save_embeddings(out, ids, emb)


PIPELINE = {"steps": [{"clean": {}}, {"dedup": {}}, {"mix": {"weights": {"t0": 3, "t1": 1, "t2": 1}, "total": 50000}},
                      {"split": {"val": 0.05, "test": 0.05}}]}


def run_step(argv: list[str], root: Path = ROOT) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MiB, exit code, last stdout line) of one CLI run (sftlab imported from root)."""
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    # cwd = root: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen([sys.executable, "-m", "sftlab", *argv], stdout=subprocess.PIPE, env=env, text=True,
                            cwd=root)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return wall, usage.ru_maxrss / 1024, proc.returncode, last  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dedup-mode", nargs="*", default=["near"], choices=["exact", "near"])
    ap.add_argument("--dedup-keep", default="first", choices=["first", "score"],
                    help="score: keep the record with the highest meta.quality of each cluster")
    ap.add_argument("--kcenter", type=int, default=0, metavar="K",
                    help="also run `data select kcenter --k K` on clean's output with random unit embeddings "
                    "(384-d, written as an .npz like `data embed` does: the selection's memory, not the model's)")
    ap.add_argument("--split", action="store_true", help="also run `data split` (default leakage: near)")
    ap.add_argument("--pipeline", action="store_true", help="also run `data pipeline` on the generated records: "
                    "clean, dedup (near), mix (t0:t1:t2 = 3:1:1, 50k), split")
    ap.add_argument("--compare-root", type=Path, default=None, help="with --pipeline: run it again with sftlab "
                    "imported from this checkout (e.g. a `git worktree` of an older commit), side by side")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here instead of a temp dir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        data = work / "records.jsonl"
        t0 = time.perf_counter()
        size = generate(data, args.n)
        print(f"generated {args.n} records ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
        keep = ["--keep", "score", "--score-key", "quality"] if args.dedup_keep == "score" else []
        steps = [("clean", ["data", "clean", str(data), "-o", str(work / "clean.jsonl")])]
        for m in args.dedup_mode:
            steps.append((" ".join(["dedup --mode", m, *keep[:2]]),
                          ["data", "dedup", str(work / "clean.jsonl"), "-o", str(work / f"dedup_{m}.jsonl"), "--mode", m,
                           *keep]))
        if args.kcenter:
            write_random_embeddings(work / "clean.jsonl", work / "emb.npz")
            steps.append((f"select kcenter --k {args.kcenter}",
                          ["data", "select", "kcenter", str(work / "clean.jsonl"), "-o", str(work / "kcenter.jsonl"),
                           "--k", str(args.kcenter), "--embeddings", str(work / "emb.npz")]))
        if args.split:
            steps.append(("split", ["data", "split", str(work / "clean.jsonl"), "-o", str(work / "split")]))
        roots = {}
        if args.pipeline:
            import yaml

            for label, root in [("pipeline", ROOT)] + ([(f"pipeline ({args.compare_root})", args.compare_root)]
                                                       if args.compare_root else []):
                out = work / f"pipe{len(roots)}"
                cfg = work / f"pipe{len(roots)}.yaml"
                cfg.write_text(yaml.safe_dump({"inputs": [str(data)], "output": str(out / "out.jsonl"), **PIPELINE}))
                steps.append((label, ["data", "pipeline", str(cfg)]))
                roots[label] = root
        rows = []
        for name, argv in steps:
            with open(data if argv[1] == "pipeline" else argv[2], "rb") as f:
                n_in = sum(1 for _ in f)
            wall, rss, rc, last = run_step(argv, roots.get(name, ROOT))
            rows.append((name, n_in, wall, rss, rc, last))
            print(f"{name}: {wall:.0f} s, peak RSS {rss:.0f} MiB, exit {rc}: {last}", flush=True)
    print(f"\n| step (generated {args.n} records, {size / 2**20:.0f} MiB JSONL) | input records | wall s | "
          "records/s | peak RSS MiB | exit |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n_in, wall, rss, rc, _ in rows:
        print(f"| {name} | {n_in} | {wall:.0f} | {n_in / wall:,.0f} | {rss:,.0f} | {rc} |")


if __name__ == "__main__":
    main()
