"""`split`: train / val / test, stratified by task_type, decided by a hash of (seed, id), with a leakage check.

A record's split depends only on its id, the seed and its task_type's size, not on file order. Prompts that
appear in two splits (exact after normalisation, or near-duplicate by MinHash LSH + exact Jaccard) leak
evaluation data into training: the copy in the later split (val, then test) is removed and reported.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from sftlab.data.curate.config import StepConfig, parse_config
from sftlab.data.curate.dedup import near_pairs
from sftlab.data.curate.io import drop
from sftlab.data.curate.text import prompt_text, tokens

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


def split_records(records: Sequence[dict[str, Any]], config: SplitConfig | dict | None = None
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any]]:
    """({train, val, test} records in input order, dropped leakage rows, info)."""
    cfg = config if isinstance(config, SplitConfig) else parse_config(SplitConfig, "split", config)
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_task[r["task_type"]].append(i)
    where = [0] * len(records)  # index into SPLITS
    for idx in by_task.values():
        idx = sorted(idx, key=lambda i: (id_fraction(records[i]["id"], cfg.seed), records[i]["id"]))
        n_test, n_val = round(len(idx) * cfg.test), round(len(idx) * cfg.val)
        for rank, i in enumerate(idx):
            where[i] = 2 if rank < n_test else 1 if rank < n_test + n_val else 0

    dropped: list[dict[str, Any]] = []
    leaked: dict[int, tuple[str, int, float]] = {}
    if cfg.leakage != "off":
        toks = [tokens(prompt_text(r)) for r in records]
        first: dict[str, int] = {}
        # exact: every prompt in a later split that equals one in an earlier split
        for i in sorted(range(len(records)), key=lambda i: (where[i], i)):
            key = " ".join(toks[i])
            if key in first and where[first[key]] < where[i]:
                leaked[i] = ("leak_exact", first[key], 1.0)
            first.setdefault(key, i)
        if cfg.leakage == "near":
            prompts = [prompt_text(r) for r in records]
            for i, j, sim in near_pairs(prompts, cfg.threshold, cfg.ngram, cfg.num_perm, cfg.seed):
                if where[i] == where[j]:
                    continue
                lo, hi = (i, j) if where[i] < where[j] else (j, i)
                if hi not in leaked and lo not in leaked:
                    leaked[hi] = ("leak_near", lo, round(sim, 4))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for i, r in enumerate(records):
        if i in leaked:
            reason, other, sim = leaked[i]
            dropped.append(drop(r, "split", reason, split=SPLITS[where[i]], leaks_with=records[other]["id"],
                                leaks_into=SPLITS[where[other]], similarity=sim))
        else:
            out[SPLITS[where[i]]].append({**r, "meta": {**(r.get("meta") or {}), "split": SPLITS[where[i]]}})
    info = {s: len(v) for s, v in out.items()} | {"leaked": len(dropped)}
    return out, dropped, info
