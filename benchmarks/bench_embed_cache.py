"""The embedding cache at scale: sharded memory maps (sftlab) vs one .npy file per text (sftlab before 2026-11-30).

Only the cache is timed: a stand-in model returns a deterministic vector per text, so "fill" is the cost of
storing N new vectors and "warm" the cost of reading them all back, both in chunks of 2,048 texts as the
streaming curation steps call it. Each phase runs in its own process (peak RSS is per phase; "warm" starts with
nothing open, as a new run would).

    .venv/bin/python benchmarks/bench_embed_cache.py --n 200000 --workdir /tmp/ecb
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, CHUNK = 384, 2048


def texts(n: int) -> list[str]:
    return [f"instruction {i}: write about topic {i % 977} in style {i % 13}" for i in range(n)]


def fake_vectors(batch: list[str]) -> np.ndarray:
    seeds = [int.from_bytes(hashlib.sha1(t.encode()).digest()[:4], "little") for t in batch]
    return np.stack([np.random.default_rng(s).standard_normal(DIM, dtype=np.float32) for s in seeds])


def per_file_embed(batch: list[str], root: Path) -> np.ndarray:
    """The layout sftlab used before: CACHE/<sha1[:2]>/<sha1>.npy, one file per text."""
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in batch]
    out = {}
    for k in dict.fromkeys(keys):
        f = root / k[:2] / f"{k}.npy"
        if f.exists():
            out[k] = np.load(f)
    todo = [k for k in dict.fromkeys(keys) if k not in out]
    if todo:
        first = dict(zip(keys, batch, strict=True))
        for k, v in zip(todo, fake_vectors([first[k] for k in todo]), strict=True):
            (root / k[:2]).mkdir(parents=True, exist_ok=True)
            np.save(root / k[:2] / f"{k}.npy", v)
            out[k] = v
    return np.stack([out[k] for k in keys])


def phase(layout: str, n: int, root: Path) -> dict:
    from sftlab.curate import embed

    class Stand:
        def encode(self, batch, **_kw):
            return fake_vectors(batch)

    embed.load_model = lambda _m: Stand()
    all_texts = texts(n)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    for i in range(0, n, CHUNK):
        chunk = all_texts[i:i + CHUNK]
        out = per_file_embed(chunk, root) if layout == "per-file" else embed.embed_texts(chunk, "stand-in",
                                                                                           cache_dir=root)
        digest.update(out.tobytes())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"s": time.perf_counter() - t0, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "file_mib": int(status["RssFile"].split()[0]) // 1024, "digest": digest.hexdigest()[:16]}


def disk(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(os.stat(p).st_blocks * 512 for p in files)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_embed_cache"))
    ap.add_argument("--layouts", default="sharded,per-file")
    ap.add_argument("--phase", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(phase(a.phase[0], a.n, Path(a.phase[1]))))
        return
    rows = []
    for layout in a.layouts.split(","):
        root = a.workdir / layout
        shutil.rmtree(root, ignore_errors=True)
        got = {}
        for name in ("fill", "warm"):
            res = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--phase", layout, str(root)],
                                 check=True, capture_output=True, text=True)
            got[name] = json.loads(res.stdout.splitlines()[-1])
        files, size = disk(root)
        assert got["fill"]["digest"] == got["warm"]["digest"], "warm read returned other vectors"
        rows.append((layout, got["fill"]["s"], got["fill"]["rss_mib"], got["warm"]["s"], got["warm"]["rss_mib"],
                     got["warm"]["file_mib"], files, size / 2**20, got["warm"]["digest"]))
    print(f"N = {a.n:,} texts × {DIM} float32 ({a.n * DIM * 4 / 2**20:,.0f} MiB of vectors), chunks of {CHUNK}")
    print("(file-backed: mapped cache pages at the end of the warm read, counted in RSS but reclaimable)")
    print("| layout | fill s | fill peak RSS MiB | warm read s | warm peak RSS MiB | of it file-backed | files "
          "| on disk MiB | vectors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:,} | {r[3]:.1f} | {r[4]:,} | {r[5]:,} | {r[6]:,} | {r[7]:,.0f} "
              f"| {r[8]} |")


if __name__ == "__main__":
    main()
