"""Rendered-data store (sftlab/data/store.py): memory per token before/after, parallel render speed-up,
cache-hit start time, and a 2-rank torchrun that must render once. One command, prints a table:

    .venv/bin/python benchmarks/bench_data_store.py                      # 200k samples (a few minutes)
    .venv/bin/python benchmarks/bench_data_store.py --samples 20000 --render-samples 4000 --before-samples 20000

Every measurement runs in a fresh Python process, so resident memory (VmRSS, RssAnon, RssFile from
/proc/self/status) is not polluted by the previous one. "Data-attributable" = RSS after loading the data
minus RSS of the same process right before (imports and tokenizer already loaded).
- before: the pre-store path of train/loop.py `load_split` (read_records -> render_records ->
  attach_loss_coefficients -> per-sample NumPy arrays), measured after it returned (the records freed).
- after: `load_split` on a warm cache (fingerprint: hash of the data file and tokenizer; open the memmaps;
  per-sample arrays), then one pass collating every sample in micro-batches of 16 (touches every mapped
  page: the worst case, a full epoch). RssFile is page cache shared by all ranks of a node and reclaimable.
- render: `render_store` on the same records with num_proc 1 and 2 (order 1, 2, 2, 1; best of each),
  wall-clock and CPU seconds (parent + workers). With other jobs on the machine the wall ratio is noisy.
- torchrun: `sftlab train` with 2 gloo ranks on a cold cache; counts "rendering" lines in the merged log
  and reports each rank's peak RSS (ru_maxrss).
- checksum: the content checksums (xxh3-64) of the built store: hashing at build (manifest), a full check (the
  first open after a build, `render-cache --verify`) and an open whose verified.json matches (every later cache
  hit). The store was just built or read, so its files are in the page cache: a cold read costs disk time on top.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = str.split("the of and to in is was for on that with as by at from his an were are which this be or have had not "
         "one but all their they been has more when there if can her she he would who will about what into two "
         "model data train token loss batch rank store cache render memory python numpy arrow process")


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out


def make_data(path: Path, n: int, seed: int = 0) -> None:
    """Alpaca-style records (instruction, optional input, output), lengths varied like real SFT sets."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ins = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
            inp = " ".join(rng.choices(WORDS, k=rng.randint(0, 30))) if i % 3 == 0 else ""
            out = " ".join(rng.choices(WORDS, k=int(rng.lognormvariate(4.3, 0.6))))
            f.write(json.dumps({"instruction": f"{ins} {i}", "input": inp, "output": out}) + "\n")


def config(work: Path, data: Path, cache: Path, **train) -> dict:
    return {"model": {"name_or_path": str(work / "model")},
            "data": {"train": [str(data)], "max_length": 1024, "cache_dir": str(cache)},
            "train": {"output_dir": str(work / "run"), "per_device_train_batch_size": 4,
                      "gradient_accumulation_steps": 1, "max_steps": 2, "report_to": [], **train}}


# ------------------------------------------------------------------------------------ measured phases


def phase_before(work: Path, data: Path) -> dict:
    import numpy as np

    from sftlab.data.formats import read_records
    from sftlab.data.render import load_tokenizer, render_records
    from sftlab.train.loss import attach_loss_coefficients

    tok = load_tokenizer(str(work / "model"))
    gc.collect()
    base = status()
    t0 = time.perf_counter()

    def old_load_split() -> list[dict]:  # the body of train/loop.py load_split before the store
        records, _ = read_records(data)
        samples, _ = render_records(records, tok, max_length=1024)
        attach_loss_coefficients(samples, "turn")
        for s in samples:
            s["input_ids"] = np.asarray(s["input_ids"], dtype=np.int64)
            s["labels"] = np.asarray(s["labels"], dtype=np.int64)
        return samples

    samples = old_load_split()
    gc.collect()
    after = status()
    tokens = sum(s["num_tokens"] for s in samples)
    return {"samples": len(samples), "tokens": tokens, "seconds": time.perf_counter() - t0, "base": base,
            "after": after}


def phase_after(work: Path, data: Path, cache: Path) -> dict:
    import numpy as np

    from sftlab.config import build_config
    from sftlab.data.render import load_tokenizer
    from sftlab.train.batching import collate
    from sftlab.train.dataset import load_split

    cfg = build_config(config(work, data, cache))
    tok = load_tokenizer(cfg.model.name_or_path)
    gc.collect()
    base = status()
    t0 = time.perf_counter()
    ds = load_split(cfg.data.train, cfg, tok, None, "train", False)
    start_s = time.perf_counter() - t0
    gc.collect()
    opened = status()
    t1 = time.perf_counter()
    order = np.argsort(-ds.lengths, kind="stable")
    for k in range(0, len(order), 16):
        collate([ds.samples[i] for i in order[k:k + 16]], "pad", tok.pad_token_id)
    epoch_s = time.perf_counter() - t1
    gc.collect()
    return {"samples": len(ds.samples), "tokens": int(ds.lengths.sum()), "start_s": start_s,
            "hit": all(c["hit"] for c in ds.summary["cache"]), "base": base, "opened": opened,
            "after_pass": status(), "collate_pass_s": epoch_s}


def phase_render(work: Path, data: Path, limit: int) -> dict:
    from sftlab.data.formats import read_records
    from sftlab.data.render import load_tokenizer
    from sftlab.data.store import RenderSettings, render_store

    tok = load_tokenizer(str(work / "model"))
    records, _ = read_records(data)
    records = records[:limit]
    settings = RenderSettings(max_length=1024, train_on="all_assistant", loss="turn")
    out: dict[str, list] = {"1": [], "2": []}
    for i, n in enumerate((1, 2, 2, 1)):
        m = render_store(records, [], tok, settings, work / f"render-{i}", num_proc=n)
        out[str(n)].append(m["render"])
    return {"records": len(records), **out}


def phase_format(work: Path, cache: Path, n_batches: int = 300) -> dict:
    """The same columns as an HF datasets (Arrow) table, memory-mapped by load_from_disk, against our memmaps:
    disk size, open time, and gathering random 16-sample micro-batches."""
    import datasets
    import numpy as np
    import pyarrow as pa

    from sftlab.data.store import Store

    store = Store(next(p for p in cache.iterdir() if p.is_dir()))
    n, off = len(store), pa.array(store.token_offsets)
    table = pa.table({"input_ids": pa.LargeListArray.from_arrays(off, pa.array(np.asarray(store.input_ids))),
                      "turn_index": pa.LargeListArray.from_arrays(off, pa.array(np.asarray(store.turn_index))),
                      "length": pa.array(store.lengths)})
    arrow_dir = work / "arrow"
    datasets.Dataset(table).save_to_disk(str(arrow_dir))
    del table
    size = lambda d: sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())  # noqa: E731
    t0 = time.perf_counter()
    ds = datasets.load_from_disk(str(arrow_dir)).with_format("numpy")
    arrow_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    Store(store.path)
    ours_open = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(n, 16, replace=False)) for _ in range(n_batches)]
    t0 = time.perf_counter()
    for b in batches:
        rows = ds[b]
        _ = [np.asarray(x, dtype=np.int64) for x in rows["input_ids"]], list(rows["turn_index"])
    arrow_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        _ = [store.sample(int(i)) for i in b]  # also derives labels and coefficients
    ours_s = time.perf_counter() - t0
    return {"samples": n, "arrow_bytes": size(arrow_dir), "ours_bytes": size(store.path), "arrow_open_s": arrow_open,
            "ours_open_s": ours_open, "arrow_gather_ms": 1000 * arrow_s / n_batches,
            "ours_gather_ms": 1000 * ours_s / n_batches}


def phase_checksum(cache: Path) -> dict:
    from sftlab.data.store import Store

    path = next(p for p in cache.iterdir() if p.is_dir())
    manifest = json.loads((path / "manifest.json").read_text())
    best = {"full_s": [], "stamp_open_s": [], "first_open_s": []}
    for _ in range(3):
        t0 = time.perf_counter()
        Store(path, "full")
        best["full_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert not Store(path).verified
        best["stamp_open_s"].append(time.perf_counter() - t0)
        (path / "verified.json").unlink()
        t0 = time.perf_counter()
        assert Store(path).verified
        best["first_open_s"].append(time.perf_counter() - t0)
    return {"bytes": sum(f.stat().st_size for f in path.iterdir()), "samples": manifest["samples"],
            "build_checksum_s": manifest["render"]["checksum_seconds"], **{k: min(v) for k, v in best.items()}}


def phase_rank(cfg_path: str) -> None:
    """Inside torchrun: train, then print this rank's peak RSS."""
    from sftlab.cli import main

    try:
        main(["train", cfg_path])
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"PEAK_RSS rank={os.environ.get('RANK')} bytes={peak}", flush=True)


def run_phase(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if res.returncode:
        raise SystemExit(f"phase {args[0]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=200_000, help="records of the big set (after, cache hit)")
    ap.add_argument("--before-samples", type=int, default=50_000,
                    help="records for the in-memory 'before' path (its memory grows ~150 B/token: keep it modest)")
    ap.add_argument("--render-samples", type=int, default=20_000, help="records for the 1 vs 2 processes render")
    ap.add_argument("--dist-samples", type=int, default=4_000, help="records for the 2-rank torchrun")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench-store"))
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        name, *rest = a.phase
        if name == "rank":
            return phase_rank(rest[0])
        work, data = Path(rest[0]), Path(rest[1])
        res = {"before": lambda: phase_before(work, data),
               "after": lambda: phase_after(work, data, Path(rest[2])),
               "render": lambda: phase_render(work, data, int(rest[2])),
               "format": lambda: phase_format(work, Path(rest[2])),
               "checksum": lambda: phase_checksum(Path(rest[2]))}[name]()
        print(json.dumps(res))
        return

    import shutil

    from sftlab.tiny import build_tiny_model

    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    big, small, dist_data = work / "big.jsonl", work / "before.jsonl", work / "dist.jsonl"
    make_data(big, a.samples)
    make_data(small, a.before_samples)
    make_data(dist_data, a.dist_samples, seed=1)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=50)) for _ in range(2000)]
    build_tiny_model(work / "model", texts, vocab_size=2048, hidden_size=64, num_layers=2, num_heads=4,
                     intermediate_size=128)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}

    print(f"render: {a.render_samples} records, num_proc 1 vs 2 ...", flush=True)
    results["render"] = run_phase("render", str(work), str(big), str(a.render_samples))
    print(f"before: in-memory load_split on {a.before_samples} records ...", flush=True)
    results["before"] = run_phase("before", str(work), str(small))
    # a cold build of the big store (2 processes), through the same code as `sftlab data render-cache`
    cache = work / "cache"
    (work / "cfg.yaml").write_text(json.dumps(config(work, big, cache)))
    print(f"render-cache: {a.samples} records ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sftlab", "data", "render-cache", str(work / "cfg.yaml"), "--num-proc", "2"],
                   check=True, capture_output=True)
    results["cold_build_s"] = time.perf_counter() - t0
    print("after: cache hit + one collate pass ...", flush=True)
    results["after"] = run_phase("after", str(work), str(big), str(cache))

    print("checksum: content checksums of the store ...", flush=True)
    results["checksum"] = run_phase("checksum", str(work), str(big), str(cache))

    print("format: the same columns as HF datasets / Arrow ...", flush=True)
    results["format"] = run_phase("format", str(work), str(big), str(cache))

    print(f"torchrun: 2 ranks, cold cache, {a.dist_samples} records ...", flush=True)
    dist_cfg = config(work, dist_data, work / "dist-cache", output_dir=str(work / "dist-run"))
    (work / "dist.yaml").write_text(json.dumps(dist_cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          __file__, "--phase", "rank", str(work / "dist.yaml")], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"torchrun failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    peaks = {line.split()[1]: int(line.split("bytes=")[1]) for line in res.stdout.splitlines()
             if line.startswith("PEAK_RSS")}
    results["torchrun"] = {"rendering_lines": sum("rendering" in line for line in res.stdout.splitlines()),
                           "cache_hit_lines": sum("cache hit" in line for line in res.stdout.splitlines()),
                           "peak_rss": peaks}
    print_table(results)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


def print_table(r: dict) -> None:
    b, f = r["before"], r["after"]
    per_tok = lambda d, key, k: (d[key][k] - d["base"][k]) / d["tokens"]  # noqa: E731
    rows = [
        ("before: samples / tokens", f"{b['samples']} / {b['tokens']}"),
        ("before: data RSS bytes/token (VmRSS delta)", f"{per_tok(b, 'after', 'VmRSS'):.1f}"),
        ("before: peak RSS (VmHWM) GiB", f"{b['after']['VmHWM'] / 2**30:.2f}"),
        ("after: samples / tokens", f"{f['samples']} / {f['tokens']}"),
        ("after: cache-hit load_split seconds", f"{f['start_s']:.2f} (hit={f['hit']})"),
        ("after: data RSS bytes/token, opened (VmRSS delta)", f"{per_tok(f, 'opened', 'VmRSS'):.2f}"),
        ("after: ... after a full collate pass (VmRSS)", f"{per_tok(f, 'after_pass', 'VmRSS'):.2f}"),
        ("after: ... of which anonymous (RssAnon)", f"{per_tok(f, 'after_pass', 'RssAnon'):.2f}"),
        ("after: ... of which mapped files (RssFile)", f"{per_tok(f, 'after_pass', 'RssFile'):.2f}"),
        ("after: collate pass seconds", f"{f['collate_pass_s']:.1f}"),
        ("cold render-cache (2 processes) seconds", f"{r['cold_build_s']:.1f}"),
    ]
    one, two = r["render"]["1"], r["render"]["2"]
    w1, w2 = min(x["seconds"] for x in one), min(x["seconds"] for x in two)
    c1, c2 = min(x["cpu_seconds"] for x in one), min(x["cpu_seconds"] for x in two)
    n = r["render"]["records"]
    rows += [
        (f"render {n} records, 1 process: s (records/s)", f"{w1:.1f} ({n / w1:.0f})"),
        (f"render {n} records, 2 processes: s (records/s)", f"{w2:.1f} ({n / w2:.0f})"),
        ("render speed-up 2 vs 1, wall clock", f"{w1 / w2:.2f}x"),
        ("render CPU seconds 1 vs 2 processes", f"{c1:.1f} / {c2:.1f}"),
        ("render speed-up 2 vs 1, CPU-time based (2 x cpu1 / cpu2)", f"{2 * c1 / c2:.2f}x"),
        ("torchrun 2 ranks: 'rendering' lines / 'cache hit' lines",
         f"{r['torchrun']['rendering_lines']} / {r['torchrun']['cache_hit_lines']}"),
    ]
    if "format" in r:
        fm = r["format"]
        rows += [("store on disk MiB: ours (memmaps) / HF datasets Arrow",
                  f"{fm['ours_bytes'] / 2**20:.0f} / {fm['arrow_bytes'] / 2**20:.0f}"),
                 ("open seconds: ours / Arrow (load_from_disk)", f"{fm['ours_open_s']:.3f} / {fm['arrow_open_s']:.3f}"),
                 ("16 random samples, ms: ours (sample dicts) / Arrow (ds[idx], numpy)",
                  f"{fm['ours_gather_ms']:.2f} / {fm['arrow_gather_ms']:.2f}")]
    if "checksum" in r:
        c = r["checksum"]
        rows += [("checksum: store MiB / samples", f"{c['bytes'] / 2**20:.0f} / {c['samples']}"),
                 ("checksum: hashing at build s", f"{c['build_checksum_s']:.3f}"),
                 ("checksum: full check s (first open after build, --verify), page cache warm",
                  f"{c['full_s']:.3f} ({c['bytes'] / 2**20 / max(c['full_s'], 1e-9):.0f} MiB/s)"),
                 ("checksum: first open after build s (full check + stamp)", f"{c['first_open_s']:.3f}"),
                 ("checksum: later open s (stamp matches, nothing hashed)", f"{c['stamp_open_s']:.3f}")]
    rows += [(f"torchrun {k}: peak RSS GiB", f"{v / 2**30:.2f}") for k, v in sorted(r["torchrun"]["peak_rss"].items())]
    width = max(len(k) for k, _ in rows)
    print(f"\nmachine: {r['machine']}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
