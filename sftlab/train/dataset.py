"""The data side of a run: a split's rendered stores opened as one DataSet (per-sample arrays the loop plans with).

    data.train / data.eval sources -> rendered stores (sftlab/data/store.py, cached; local rank 0 renders)
    -> DataSet: samples sliced from memory-mapped columns, lengths, loss denominators, task codes, channels
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import RunConfig
from sftlab.data.records import task_channels, write_jsonl
from sftlab.data.render import RenderReport, load_tokenizer
from sftlab.data.store import RenderSettings, StoreSamples, build_or_open, tokenizer_hash
from sftlab.errors import UserError
from sftlab.io import write_text


@dataclass
class DataSet:
    """The samples of a split plus per-sample arrays the loop plans with (step plan, length grouping, packing,
    channels). `samples[i]` gives sample i as a dict (input_ids, labels, loss_coef, num_tokens, id, task_type);
    from a store (sftlab/data/store.py) it is sliced from memory-mapped columns when a micro-batch needs it."""

    samples: Sequence[dict[str, Any]]
    channels: list[str]
    channel_matrix: torch.Tensor  # [n_samples, n_channels] 1.0 where the sample counts in the channel
    denoms: np.ndarray  # per-sample loss denominator
    lengths: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    task_codes: np.ndarray | None = None  # per-sample index into task_names (int16)
    task_names: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None  # per-sample task weight (train.task_weights); None: all 1
    supervised: np.ndarray | None = None  # per-sample predicted (supervised, shifted) tokens
    rejects: list[dict[str, Any]] = field(default_factory=list)  # records rendering refused (record_in_run_dir)

    def task_types(self) -> list[str]:
        """Each sample's task_type."""
        return [self.task_names[c] for c in self.task_codes]


def render_settings(cfg: RunConfig) -> RenderSettings:
    """What rendering a run's data depends on (part of every store's fingerprint)."""
    return RenderSettings(max_length=cfg.data.max_length, train_on=cfg.data.train_on, loss=cfg.train.loss,
                          on_error=cfg.data.on_error, extra_roles=tuple(cfg.data.extra_roles))


def load_split(sources: list, cfg: RunConfig, tokenizer: Any, name: str, is_main: bool,
               channels: list[str] | None = None) -> DataSet:
    """Open the rendered store of every source (local rank 0 renders what the cache lacks, the node's other
    ranks wait for it and map the same files). Nothing is written into the run dir here: `record_in_run_dir`
    does that once every start-up check has passed (a refused start leaves the dir as it was).
    `channels`: the training split's channels, for an eval split (its own follow them)."""
    opened, rows_per_source = _open_sources(sources, cfg, tokenizer, name)
    stores = [o.store for o in opened]
    store_of = np.repeat(np.arange(len(stores), dtype=np.int16), [len(p) for p in rows_per_source])
    rows = np.concatenate(rows_per_source) if rows_per_source else np.zeros(0, dtype=np.int64)
    a = _per_sample_arrays(stores, store_of, rows)
    rejects = [r for s in stores for r in s.rejects()]
    m = [o.store.manifest for o in opened]
    report = RenderReport(rendered=len(rows), truncated=sum(x["truncated"] for x in m),
                          turns_truncated_away=sum(x["turns_truncated_away"] for x in m),
                          history_truncated=sum(x.get("history_truncated", 0) for x in m),
                          exchanges_dropped=sum(x.get("exchanges_dropped", 0) for x in m),
                          dropped=sum((Counter(x["dropped"]) for x in m), Counter()),
                          tokens=int(a.lengths.sum()), supervised_tokens=a.supervised_total)
    cache = [{"path": str(src.path), "store": str(o.store.path), "fingerprint": o.key, "hit": o.hit}
             for src, o in zip(sources, opened, strict=True)]
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        print(f"[{name}] rank {os.environ.get('RANK', '?')}: memory-mapped {', '.join(str(s.path) for s in stores)}")
    if is_main:
        print(f"[{name}] {sum(x['records'] for x in m)} records: {report.summary()}")
        for c in cache:
            print(f"[{name}] {c['path']}: {'cache hit' if c['hit'] else 'rendered'} {c['store']}")
    if not any(x["records"] for x in m):
        raise UserError(f"data.{name}: no records to train on")
    if not len(rows):
        raise UserError(f"data.{name}: every record was rejected ({len(rejects)}); see the rejects file")

    own = sorted({c for t in a.task_names for c in task_channels(t)})
    # eval: the training channels first, then the eval set's own task types (logged, never silently dropped)
    channels = own if channels is None else channels + [c for c in own if c not in channels]
    counts = np.bincount(a.task_codes, minlength=len(a.task_names))
    tokens = np.bincount(a.task_codes, weights=a.lengths, minlength=len(a.task_names))
    summary = {"samples_per_task": {t: int(counts[i]) for i, t in enumerate(a.task_names) if counts[i]},
               "tokens_per_task": {t: int(tokens[i]) for i, t in enumerate(a.task_names) if counts[i]},
               "lengths": a.lengths.tolist(), "supervised_tokens": a.supervised_total,
               "truncated": report.truncated, "history_truncated": report.history_truncated,
               "exchanges_dropped": report.exchanges_dropped, "rejected": len(rejects), "cache": cache}
    return DataSet(StoreSamples(stores, store_of, rows), channels, _channel_matrix(a.task_names, a.task_codes, channels),
                   a.denoms, a.lengths, summary, a.task_codes, a.task_names, supervised=a.predicted, rejects=rejects)


def _open_sources(sources: list, cfg: RunConfig, tokenizer: Any, name: str) -> tuple[list, list[np.ndarray]]:
    """(each source's store, the store rows the split takes from it: `weight` repeats rows, a fraction takes a
    seeded sample). Local rank 0 builds missing stores; every rank meets the others once all are open."""
    settings = render_settings(cfg)
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    digest = tokenizer_hash(tokenizer)
    rng = random.Random(cfg.train.seed)
    opened, parts = [], []
    for k, src in enumerate(sources):
        got = build_or_open(src, tokenizer, settings, cfg.data.cache_dir, cfg.data.num_proc, build=builder,
                            tokenizer_digest=digest, label=f"data.{name}[{k}]")
        n = len(got.store)
        whole, frac = int(src.weight), src.weight - int(src.weight)
        rows = np.concatenate([np.tile(np.arange(n), whole),
                               np.array(rng.sample(range(n), round(frac * n)) if frac else [], dtype=np.int64)])
        if n and not len(rows):  # a small fractional weight: the source would vanish (or read as "all rejected")
            raise UserError(f"data.{name}[{k}] {src.path}: weight {src.weight} x {n} samples keeps no sample "
                            "(round(weight x samples) = 0); raise the weight or remove the source")
        opened.append(got)
        parts.append(rows.astype(np.int64))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return opened, parts


@dataclass
class _SampleArrays:
    task_names: list[str]  # one code space over all stores
    task_codes: np.ndarray
    lengths: np.ndarray
    denoms: np.ndarray
    predicted: np.ndarray  # supervised targets after the shift (position 0 is never one)
    supervised_total: int  # supervised tokens (before the shift), for the render report


def _per_sample_arrays(stores: list, store_of: np.ndarray, rows: np.ndarray) -> _SampleArrays:
    """The split's per-sample arrays, read from each store's columns."""
    task_names = sorted({t for s in stores for t in s.task_names})
    remap = [np.array([task_names.index(t) for t in s.task_names], dtype=np.int16) for s in stores]
    pick = [store_of == j for j in range(len(stores))]
    out = _SampleArrays(task_names, np.zeros(len(rows), dtype=np.int16), np.zeros(len(rows), dtype=np.int64),
                        np.zeros(len(rows), dtype=np.float64), np.zeros(len(rows), dtype=np.int64), 0)
    for j, s in enumerate(stores):
        r = rows[pick[j]]
        out.lengths[pick[j]] = s.lengths[r]
        out.denoms[pick[j]] = s.denoms[r]
        out.task_codes[pick[j]] = remap[j][s.task_codes[r]] if len(r) else []
        out.supervised_total += int(s.supervised[r].sum())
        if len(r):
            out.predicted[pick[j]] = s.supervised[r] - (s.turn_index[s.token_offsets[r]] >= 0)
    return out


def record_in_run_dir(run_dir: Path, splits: dict[str, DataSet | None]) -> None:
    """RUN/rejects-<split>.jsonl (nothing is dropped silently) and the stores each split used, in
    RUN/data_cache.json (rank 0, once the run goes ahead)."""
    for name, data in splits.items():
        if data is not None and data.rejects:
            write_jsonl(data.rejects, run_dir / f"rejects-{name}.jsonl")
            print(f"[{name}] {len(data.rejects)} rejected records written to {run_dir / f'rejects-{name}.jsonl'}")
    record = {name: data.summary["cache"] for name, data in splits.items() if data is not None}
    write_text(json.dumps(record, indent=1), run_dir / "data_cache.json")


def _channel_matrix(task_names: list[str], task_codes: np.ndarray, channels: list[str]) -> torch.Tensor:
    """[n_samples, n_channels]: 1.0 where a sample's task_type counts in the channel (itself and its parents)."""
    index = {c: i for i, c in enumerate(channels)}
    per_task = torch.zeros(len(task_names), len(channels), dtype=torch.float64)
    for t, task in enumerate(task_names):
        for c in task_channels(task):
            if c in index:
                per_task[t, index[c]] = 1.0
    return per_task[torch.from_numpy(task_codes.astype(np.int64))]


@dataclass(frozen=True)
class CachedSource:
    """One data source rendered ahead of training (`sftlab data render-cache`)."""

    split: str
    path: str
    samples: int
    tokens: int
    cache: str  # "hit", or how long rendering took
    store: str
    note: str | None  # what rendering left out (truncated, dropped, rejected), None when nothing


def render_cache(configs: Sequence[RunConfig], num_proc: int | None = None, *,
                 verify: bool = False) -> list[CachedSource]:
    """Build (or find) the rendered store of every train/eval source of `configs` (a run, or a plan's stages), so
    training starts from the cache. The first config's tokenizer renders every one: a plan's later stages start
    from the previous stage's checkpoint, which carries the same tokenizer. Nothing left out goes unsaid.
    verify: check every found store's content checksums (a damaged one is rendered again)."""
    first = configs[0].model
    tokenizer = load_tokenizer(first.name_or_path, first.chat_template, first.special_tokens, first.eot_token)
    digest = tokenizer_hash(tokenizer)
    out: list[CachedSource] = []
    seen: set[tuple] = set()
    for cfg in configs:
        settings = render_settings(cfg)
        for split, sources in (("train", cfg.data.train), ("eval", cfg.data.eval)):
            for k, src in enumerate(sources):
                key = (src.path, src.format, src.task_type, settings, cfg.data.cache_dir)
                if key in seen:
                    continue
                seen.add(key)
                got = build_or_open(src, tokenizer, settings, cfg.data.cache_dir, num_proc or cfg.data.num_proc,
                                    tokenizer_digest=digest, label=f"data.{split}[{k}]", verify=verify)
                m = got.store.manifest
                lost = [f"{m['truncated']} truncated to max_length ({m['turns_truncated_away']} turns lost)"] \
                    if m.get("truncated") else []
                lost += [f"{m['history_truncated']} shortened by dropping {m['exchanges_dropped']} oldest exchanges "
                         "(last_assistant)"] if m.get("history_truncated") else []
                lost += [f"dropped {n}: {why}" for why, n in sorted(m.get("dropped", {}).items())]
                lost += [f"rejected {m['read_rejects']} when read"] if m.get("read_rejects") else []
                note = (f"data.{split}[{k}] {src.path}: {m['records']} records -> {m['samples']} samples; "
                        + "; ".join(lost)) if lost else None
                out.append(CachedSource(split, str(src.path), m["samples"], m["num_tokens"],
                                        ("hit, verified" if got.store.verified else "hit") if got.hit
                                        else f"rendered in {m['render']['seconds']:.1f} s",
                                        str(got.store.path), note))
    return out
