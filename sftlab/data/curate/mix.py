"""`mix`: build a training mixture with given per-task_type weights and an optional general-text share, seeded.

Weights are relative (normalised to ratios); a weight key matches a task_type or any of its channels
("reasoning" matches "reasoning/commonsense"; the most specific key wins). Counts are rounded with the
largest-remainder rule so they sum to the total. A task_type with fewer records than asked is taken whole
(reported as a shortfall) unless upsample is on, in which case copies get ids "ID#mixN" and meta.mix_copy_of.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from sftlab.data.curate.config import StepConfig, parse_config
from sftlab.data.curate.io import StepResult, drop
from sftlab.data.records import task_channels
from sftlab.errors import UserError


class MixConfig(StepConfig):
    """weights: {task_type or channel: weight}; empty = the input's own proportions."""

    weights: dict[str, float] = Field(default_factory=dict)
    total: int | None = Field(None, ge=1)
    general_fraction: float = Field(0.0, ge=0, lt=1)
    upsample: bool = False
    seed: int = 0


def _group(rec: dict[str, Any], weights: dict[str, float]) -> str | None:
    for ch in reversed(task_channels(rec["task_type"])):
        if ch in weights:
            return ch
    return None


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer counts proportional to weights that sum exactly to total (ties broken by key)."""
    s = sum(weights.values())
    exact = {k: total * w / s for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    rest = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:rest]:
        counts[k] += 1
    return counts


def _rng(seed: int, group: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "big")])


def mix_records(records: Sequence[dict[str, Any]], config: MixConfig | dict | None = None,
                general: Sequence[dict[str, Any]] = ()) -> StepResult:
    """Sample the mixture; output keeps input order (task records, then general ones, then copies)."""
    cfg = config if isinstance(config, MixConfig) else parse_config(MixConfig, "mix", config)
    if any(w < 0 for w in cfg.weights.values()) or (cfg.weights and sum(cfg.weights.values()) <= 0):
        raise UserError(f"mix: weights must be >= 0 with a positive sum, got {cfg.weights}")
    if cfg.general_fraction > 0 and not general:
        raise UserError("mix: general_fraction > 0 needs general records (--general FILE)")
    weights = dict(cfg.weights)
    if not weights:
        for r in records:
            weights[r["task_type"]] = weights.get(r["task_type"], 0) + 1
    groups: dict[str, list[int]] = defaultdict(list)
    unmatched = []
    for i, r in enumerate(records):
        g = _group(r, weights)
        (groups[g].append(i) if g is not None else unmatched.append(i))
    total = cfg.total or len(records)
    n_general = round(total * cfg.general_fraction)
    want = largest_remainder(total - n_general, {k: w for k, w in weights.items() if w > 0})

    chosen: set[int] = set()
    copies: list[dict[str, Any]] = []
    shortfall: dict[str, int] = {}
    for g, n in sorted(want.items()):
        idx = groups.get(g, [])
        perm = _rng(cfg.seed, g).permutation(len(idx)) if idx else np.zeros(0, dtype=int)
        chosen.update(idx[j] for j in perm[:n])
        if n > len(idx):
            if cfg.upsample and idx:
                for c in range(n - len(idx)):
                    src = records[idx[perm[c % len(idx)]]]
                    copies.append({**src, "id": f"{src['id']}#mix{c // len(idx) + 1}",
                                   "meta": {**(src.get("meta") or {}), "mix_copy_of": src["id"]}})
            else:
                shortfall[g] = n - len(idx)
    gen_perm = _rng(cfg.seed, "\x00general").permutation(len(general))[:n_general]
    gen_chosen = set(gen_perm.tolist())
    if n_general > len(general):
        shortfall["general"] = n_general - len(general)

    kept = [{**r, "meta": {**(r.get("meta") or {}), "mix_group": _group(r, weights)}}
            for i, r in enumerate(records) if i in chosen]
    kept += [{**r, "meta": {**(r.get("meta") or {}), "mix_group": "general"}}
             for i, r in enumerate(general) if i in gen_chosen]
    kept += copies
    unmatched_set = set(unmatched)
    dropped = [drop(records[i], "mix", "task_type_not_in_weights") for i in unmatched]
    dropped += [drop(r, "mix", "not_sampled") for i, r in enumerate(records) if i not in chosen and i not in unmatched_set]
    dropped += [drop(r, "mix", "not_sampled", group="general") for i, r in enumerate(general) if i not in gen_chosen]
    return StepResult("mix", kept, dropped, info={"wanted": want | {"general": n_general}, "shortfall": shortfall})
