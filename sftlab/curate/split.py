"""`split`: train / val / test, stratified by task_type, decided by a hash of (seed, id), with a leakage check.

A record's split depends only on its id, the seed and its task_type's size, not on file order. Prompts that
appear in two splits (exact after normalisation, or near-duplicate by MinHash LSH + exact Jaccard) leak
evaluation data into training: the copy in the later split (val, then test) is removed and reported.

`split_stream` does it in passes over the input, so millions of records fit: pass 1 keeps per record only its
id, task_type, a 16-byte digest of its normalised prompt and (leakage near) a uint32 MinHash signature row;
pass 2 re-reads just the LSH candidate rows that sit in different splits, for their exact Jaccard; pass 3
hands each record to its split. `split_records` is the same function on an in-memory list.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.dedup import candidate_shingles, lsh_bands, lsh_candidates, signatures
from sftlab.curate.files import atomic_writer
from sftlab.curate.step import drop
from sftlab.curate.text import prompt_text, token_hashes
from sftlab.io import JsonlWriter, all_or_none

SPLITS = ("train", "val", "test")


class SplitConfig(StepConfig):
    """Fractions of val and test per task_type (the rest is train)."""

    val: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    leakage: Literal["near", "exact", "off"] = "near"
    threshold: float = Field(0.7, gt=0, le=1)
    ngram: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=8)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be < 1, got {self.val} + {self.test}")
        return self


def id_fraction(record_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, id)."""
    h = hashlib.blake2b(f"{seed}\x00{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def split_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                 config: SplitConfig | dict | None = None
                 ) -> Iterator[tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]]:
    """Per input chunk: ({train, val, test} records in input order, dropped leakage rows).

    read_chunks() must yield the same chunks on every call (it is called two or three times)."""
    cfg = config if isinstance(config, SplitConfig) else parse_config(SplitConfig, "split", config)
    # compact per-record state (typed arrays, not Python objects): ~40 bytes + the id + a signature row
    ids: list[str] = []
    frac = array("d")
    by_task: dict[str, array] = defaultdict(lambda: array("q"))
    digests = bytearray()  # 16 bytes per record: its normalised prompt tokens, the exact-leakage key
    with_tokens = array("q")  # positions of the prompts that have tokens (the rows of `sig_parts`)
    sig_parts: list[np.ndarray] = []
    for chunk in read_chunks():
        start = len(ids)
        for rec in chunk:
            by_task[rec["task_type"]].append(len(ids))
            ids.append(rec["id"])
            frac.append(id_fraction(rec["id"], cfg.seed))
        if cfg.leakage == "off":
            continue
        th, lens = token_hashes([prompt_text(r) for r in chunk])
        for end, n in zip(np.cumsum(lens).tolist(), lens.tolist(), strict=True):
            digests += hashlib.blake2b(th[end - n:end].tobytes(), digest_size=16).digest()
        with_tokens.extend((start + np.flatnonzero(lens)).tolist())
        if cfg.leakage == "near" and lens.any():
            sig_parts.append(signatures(th, lens[lens > 0], cfg.ngram, cfg.num_perm, cfg.seed)[2])

    where = np.zeros(len(ids), dtype=np.int8)  # index into SPLITS
    for idx in by_task.values():
        idx = sorted(idx, key=lambda i: (frac[i], ids[i]))
        n_test, n_val = round(len(idx) * cfg.test), round(len(idx) * cfg.val)
        where[idx[:n_test]] = 2
        where[idx[n_test:n_test + n_val]] = 1

    leaked: dict[int, tuple[str, int, float]] = {}  # position -> (reason, position it leaks with, similarity)
    first: dict[bytes, int] = {}
    for i in np.argsort(where, kind="stable").tolist() if digests else ():
        j = first.setdefault(bytes(digests[16 * i:16 * i + 16]), i)  # exact: a later split's prompt equal
        if where[j] < where[i]:  # to an earlier split's
            leaked[i] = ("leak_exact", j, 1.0)
    del first, digests
    if sig_parts:
        rows = np.frombuffer(with_tokens, dtype=np.int64)
        ci, cj = lsh_candidates(sig_parts, lsh_bands(cfg.threshold, cfg.num_perm))
        del sig_parts
        pi, pj = rows[ci], rows[cj]
        cross = where[pi] != where[pj]  # pairs inside one split never leak: their Jaccard is not needed
        pi, pj = pi[cross].tolist(), pj[cross].tolist()
        shingles = candidate_shingles(read_chunks, np.unique(np.asarray(pi + pj, dtype=np.int64)), "prompt",
                                      cfg.ngram) if pi else {}
        for i, j in zip(pi, pj, strict=True):  # sorted by (i, j): the first pair that qualifies wins
            lo, hi = (i, j) if where[i] < where[j] else (j, i)
            if hi in leaked or lo in leaked:
                continue
            a, b = shingles[i], shingles[j]
            inter = len(np.intersect1d(a, b, assume_unique=True))
            sim = inter / (len(a) + len(b) - inter)
            if sim >= cfg.threshold:
                leaked[hi] = ("leak_near", lo, round(sim, 4))

    split_of = [SPLITS[w] for w in where.tolist()]
    pos = 0
    for chunk in read_chunks():
        parts: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        dropped: list[dict[str, Any]] = []
        for rec in chunk:
            part = split_of[pos]
            if pos in leaked:
                reason, other, sim = leaked[pos]
                dropped.append(drop(rec, "split", reason, split=part, leaks_with=ids[other],
                                    leaks_into=split_of[other], similarity=sim))
            else:
                parts[part].append({**rec, "meta": {**(rec.get("meta") or {}), "split": part}})
            pos += 1
        yield parts, dropped


def split_records(records: Sequence[dict[str, Any]], config: SplitConfig | dict | None = None
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any]]:
    """({train, val, test} records in input order, dropped leakage rows, info)."""
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    dropped: list[dict[str, Any]] = []
    for parts, leaked in split_stream(lambda: [records], config):
        for s in SPLITS:
            out[s] += parts[s]
        dropped += leaked
    info = {s: len(v) for s, v in out.items()} | {"leaked": len(dropped)}
    return out, dropped, info


def write_split_stream(results: Iterable[tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]],
                       out_dir: str | Path | None = None, *, paths: dict[str, Path] | None = None) -> dict[str, int]:
    """Write split_stream's chunks to OUT_DIR/{train,val,test,dropped}.jsonl (or to `paths`, by the same four
    names; .parquet allowed for the splits) as they come; all four files appear at the end (on an error none is
    written). Returns the counts (info of split_records)."""
    paths = paths or {name: Path(out_dir) / f"{name}.jsonl" for name in (*SPLITS, "dropped")}
    files = {name: atomic_writer(paths[name]) if name in SPLITS else JsonlWriter(paths[name])
             for name in (*SPLITS, "dropped")}
    with all_or_none(files.values()):
        for parts, dropped in results:
            for s in SPLITS:
                files[s].write(parts[s])
            files["dropped"].write(dropped)
    return {s: files[s].count for s in SPLITS} | {"leaked": files["dropped"].count}
