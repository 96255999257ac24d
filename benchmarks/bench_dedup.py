"""Near-duplicate detection: rensa vs datasketch, quality against brute-force Jaccard, and throughput.

    python benchmarks/bench_dedup.py --n 100000 --quality-n 20000 --threads 2 [--skip-datasketch]

The generated corpus mixes English-like and Chinese texts with planted exact duplicates (case, spacing and
punctuation changed) and planted near duplicates (5-20% of the tokens substituted, inserted or deleted).
Ground truth: the greedy keep-first rule applied to *all* pairs with exact shingle Jaccard >= threshold
(sparse matrix product, scipy). Reported: precision / recall of the dropped records, recall of the planted
near duplicates per edit rate, and samples/s of the whole dedup step (tokenising + shingling included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sftlab.curate.dedup import DedupConfig, dedup_records, lsh_bands  # noqa: E402
from sftlab.curate.text import field_text, shingles, tokens  # noqa: E402


def _vocab(rng: random.Random, n: int = 20000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def _edit(toks: list[str], rate: float, rng: random.Random, pool: list[str]) -> list[str]:
    out = list(toks)
    for _ in range(max(1, round(rate * len(toks)))):
        op = rng.random()
        pos = rng.randrange(len(out))
        if op < 0.6:
            out[pos] = rng.choice(pool)
        elif op < 0.8:
            out.insert(pos, rng.choice(pool))
        elif len(out) > 2:
            del out[pos]
    return out


def planted_corpus(n: int, seed: int = 0, zh_share: float = 0.3, exact_share: float = 0.1,
                   near_share: float = 0.2) -> tuple[list[dict], dict[str, tuple[str, float]]]:
    """Records with planted duplicates, and {dup id: (source id, edit rate)} (rate 0 = exact)."""
    rng = random.Random(seed)
    en_vocab = _vocab(rng)
    zh_vocab = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    weights = 1.0 / np.arange(1, len(en_vocab) + 1)  # Zipf-like word frequencies
    cum = np.cumsum(weights / weights.sum())
    np_rng = np.random.default_rng(seed)
    texts: list[tuple[str, list[str], str]] = []  # (lang, tokens, text)
    planted: dict[str, tuple[str, float]] = {}
    n_base = int(n * (1 - exact_share - near_share))
    for _ in range(n_base):
        if rng.random() < zh_share:
            t = [zh_vocab[i] for i in np_rng.integers(0, len(zh_vocab), rng.randint(20, 200))]
            texts.append(("zh", t, "".join(t)))
        else:
            t = [en_vocab[i] for i in np.searchsorted(cum, np_rng.random(rng.randint(10, 150)))]
            texts.append(("en", t, " ".join(t)))
    records = [{"id": f"s{i}", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": tx}],
                "tools": None, "task_type": lang, "source": "synthetic", "meta": {}}
               for i, (lang, _t, tx) in enumerate(texts)]
    while len(records) < n:
        src = rng.randrange(n_base)
        lang, t, tx = texts[src]
        did = f"d{len(records)}"
        if rng.random() < exact_share / (exact_share + near_share):
            new = tx.upper() if lang == "en" else tx
            new = "  " + new.replace(" ", "  ") + " ." if lang == "en" else new + "。"
            planted[did] = (f"s{src}", 0.0)
        else:
            rate = rng.choice([0.05, 0.1, 0.15, 0.2])
            pool = zh_vocab if lang == "zh" else en_vocab
            nt = _edit(t, rate, rng, pool)
            new = "".join(nt) if lang == "zh" else " ".join(nt)
            planted[did] = (f"s{src}", rate)
        records.append({"id": did, "messages": [{"role": "user", "content": "Q"},
                                                {"role": "assistant", "content": new}],
                        "tools": None, "task_type": lang, "source": "synthetic", "meta": {}})
    rng.shuffle(records)
    return records, planted


def brute_force_dropped(records: list[dict], cfg: DedupConfig) -> set[str]:
    """The greedy keep-first rule over all pairs with exact Jaccard >= threshold (scipy sparse product)."""
    from scipy import sparse

    sets = [set(shingles(tokens(field_text(r, cfg.field)), cfg.ngram)) for r in records]
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for sh in s:
            rows.append(i)
            cols.append(vocab.setdefault(sh, len(vocab)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), len(vocab)))
    inter = (x @ x.T).tocoo()
    sizes = np.array([len(s) for s in sets])
    m = inter.row < inter.col
    i, j, v = inter.row[m], inter.col[m], inter.data[m]
    jac = v / (sizes[i] + sizes[j] - v)
    keep = jac >= cfg.threshold - 1e-9
    nbrs: dict[int, list[int]] = {}
    for a, b in zip(i[keep].tolist(), j[keep].tolist(), strict=True):
        nbrs.setdefault(a, []).append(b)
    # empty texts: only exact equality (both empty) counts
    empties = [k for k, s in enumerate(sets) if not s]
    for a, b in zip(empties, empties[1:], strict=False):
        nbrs.setdefault(a, []).append(b)
    dropped = set()
    for a in range(len(records)):
        if a in dropped:
            continue
        for b in nbrs.get(a, []):
            dropped.add(b)
    return {records[k]["id"] for k in dropped}


def clusters(res) -> dict[str, str]:
    """id -> id of the kept representative, from a dedup StepResult."""
    out = {r["id"]: r["meta"]["dedup_cluster"] for r in res.kept}
    out.update({d["id"]: d["cluster"] for d in res.dropped})
    return out


def quality(records: list[dict], planted: dict[str, tuple[str, float]], predicted: set[str],
            cfg: DedupConfig, cluster: dict[str, str] | None = None) -> dict:
    truth = brute_force_dropped(records, cfg)
    tp = len(truth & predicted)
    out = {"n": len(records), "true_dropped": len(truth), "predicted_dropped": len(predicted),
           "precision": tp / max(1, len(predicted)), "recall": tp / max(1, len(truth))}
    if cluster is None:  # planted-pair recall needs the clusters
        return out
    by_rate: dict[float, list[int]] = {}
    for did, (_src, rate) in planted.items():
        by_rate.setdefault(rate, [0, 0])
        by_rate[rate][1] += 1
        by_rate[rate][0] += cluster[did] == cluster[_src]
    out["planted_recall_by_edit_rate"] = {str(k): round(a / b, 4) for k, (a, b) in sorted(by_rate.items())}
    return out


def datasketch_dropped(records: list[dict], cfg: DedupConfig) -> tuple[set[str], float]:
    """The same pipeline with datasketch MinHash + MinHashLSH (estimated Jaccard verified exactly too)."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    toks = [tokens(field_text(r, cfg.field)) for r in records]
    sh = [[s.encode("utf-8") for s in shingles(t, cfg.ngram)] for t in toks]
    mhs = MinHash.bulk(sh, num_perm=cfg.num_perm, seed=cfg.seed)
    bands = lsh_bands(cfg.threshold, cfg.num_perm)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, cfg.num_perm // bands))
    dropped: set[int] = set()
    seen_exact: dict[str, int] = {}
    for i, m in enumerate(mhs):
        k = " ".join(toks[i])
        if k in seen_exact:
            dropped.add(i)
            continue
        seen_exact[k] = i
        if not toks[i]:
            continue
        hit = False
        for j in lsh.query(m):
            a, b = set(sh[i]), set(sh[j])
            if len(a & b) / len(a | b) >= cfg.threshold:
                hit = True
                break
        if hit:
            dropped.add(i)
        else:
            lsh.insert(i, m)
    return {records[i]["id"] for i in dropped}, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000, help="records for the throughput run")
    ap.add_argument("--quality-n", type=int, default=20000, help="records for the brute-force quality check")
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-datasketch", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    cfg = DedupConfig(field="answer", num_perm=args.num_perm, workers=args.threads, ngram=args.ngram,
                      threshold=args.threshold)
    results: dict = {"num_perm": args.num_perm, "threshold": cfg.threshold, "ngram": cfg.ngram,
                     "bands": lsh_bands(cfg.threshold, cfg.num_perm), "threads": args.threads}

    recs, planted = planted_corpus(args.quality_n, seed=1)
    t0 = time.perf_counter()
    res = dedup_records(recs, cfg)
    dt = time.perf_counter() - t0
    pred = {d["id"] for d in res.dropped}
    results["rensa_quality"] = quality(recs, planted, pred, cfg, clusters(res)) | {
        "samples_per_s": round(len(recs) / dt)}
    print(json.dumps(results["rensa_quality"]), flush=True)
    if not args.skip_datasketch:
        pred_ds, dt_ds = datasketch_dropped(recs, cfg)
        results["datasketch_quality"] = quality(recs, planted, pred_ds, cfg) | {
            "samples_per_s": round(len(recs) / dt_ds)}
        print(json.dumps(results["datasketch_quality"]), flush=True)

    if not args.n:
        print(json.dumps(results))
        return
    recs, planted = planted_corpus(args.n, seed=2)
    for workers in sorted({1, args.threads}):
        cfg_w = cfg.model_copy(update={"workers": workers})
        t0, c0 = time.perf_counter(), time.process_time()
        res = dedup_records(recs, cfg_w)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"n": args.n, "workers": workers, "seconds": round(dt, 2), "samples_per_s": round(args.n / dt),
               "main_process_cpu_seconds": round(cpu, 2), "dropped": len(res.dropped), **res.info,
               "load_avg_1min": os.getloadavg()[0]}
        results[f"rensa_throughput_workers{workers}"] = row
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
