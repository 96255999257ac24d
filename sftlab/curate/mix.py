"""`mix`: build a training mixture with given per-task_type weights and an optional general-text share, seeded.

Weights are relative (normalised to ratios); a weight key matches a task_type or any of its channels
("reasoning" matches "reasoning/commonsense"; the most specific key wins). Counts are rounded with the
largest-remainder rule so they sum to the total. A task_type with fewer records than asked is taken whole
(reported as a shortfall) unless upsample is on, in which case copies get ids "ID#mixN" and meta.mix_copy_of.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.files import save_records
from sftlab.curate.step import StepResult, drop
from sftlab.data.records import task_channels
from sftlab.errors import UserError
from sftlab.io import JsonlWriter, all_or_none, write_text


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


@dataclass
class MixPlan:
    """Which input positions the mixture takes, decided from task types and counts alone (no record held)."""

    group_of: dict[str, str | None]  # task_type -> its weight key (None: not in the weights)
    chosen: set[int]  # positions of the task records taken
    unmatched: set[int]  # positions whose task_type matches no weight
    copies: list[tuple[int, int]]  # (source position, copy number) of the upsampled copies, in output order
    general_chosen: set[int]  # positions in the general inputs taken
    info: dict[str, Any]


def _general_ids(read_general: Callable[[], Iterable[Sequence[dict[str, Any]]]]) -> tuple[int, set[str]]:
    """(count, ids) of the general records (one pass): the output holds task and general records together, so
    an id both use would be written twice (and refused by every later reader)."""
    n, ids = 0, set()
    for chunk in read_general():
        n += len(chunk)
        ids.update(r["id"] for r in chunk)
    return n, ids


def _check_not_general(rec: dict[str, Any], general_ids: set[str]) -> None:
    if rec["id"] in general_ids:
        raise UserError(f"mix: id {rec['id']!r} is used by an input record and by a general record: ids must be "
                        "unique across the inputs and --general")


def plan_mix(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], config: MixConfig | dict | None = None,
             read_general: Callable[[], Iterable[Sequence[dict[str, Any]]]] = lambda: ()) -> MixPlan:
    """One pass over the general records (their ids) and one over the task records (their task types)."""
    cfg = config if isinstance(config, MixConfig) else parse_config(MixConfig, "mix", config)
    if any(w < 0 for w in cfg.weights.values()) or (cfg.weights and sum(cfg.weights.values()) <= 0):
        raise UserError(f"mix: weights must be >= 0 with a positive sum, got {cfg.weights}")
    n_general, general_ids = _general_ids(read_general)
    names: dict[str, int] = {}  # task_type -> index, in first-seen order
    task = array("q")
    for chunk in read_chunks():
        for r in chunk:
            _check_not_general(r, general_ids)
            task.append(names.setdefault(r["task_type"], len(names)))
    del general_ids
    if cfg.general_fraction > 0 and not n_general:
        raise UserError("mix: general_fraction > 0 needs general records (--general FILE)")
    task_arr = np.frombuffer(task, dtype=np.int64) if len(task) else np.zeros(0, dtype=np.int64)
    weights = dict(cfg.weights)
    if not weights:  # the input's own proportions
        counts = np.bincount(task_arr, minlength=len(names))
        weights = {t: int(counts[k]) for t, k in names.items()}
    group_of = {t: _group({"task_type": t}, weights) for t in names}
    if names and (unknown := sorted(k for k, w in weights.items() if w > 0 and k not in group_of.values())):
        # a typo in a weight key would otherwise give its share to nothing and write a smaller mixture
        raise UserError(f"mix: weight {', '.join(map(repr, unknown))} matches no task_type of the input "
                        f"(task types: {', '.join(sorted(names))})")
    members: dict[str | None, list[np.ndarray]] = defaultdict(list)  # None: matches no weight
    for t, k in names.items():
        members[group_of[t]].append(np.flatnonzero(task_arr == k))
    groups = {g: np.sort(np.concatenate(m)).tolist() for g, m in members.items()}
    unmatched = set(groups.pop(None, []))
    total = cfg.total or len(task)
    n_gen = round(total * cfg.general_fraction)
    want = largest_remainder(total - n_gen, {k: w for k, w in weights.items() if w > 0})

    chosen: set[int] = set()
    copies: list[tuple[int, int]] = []
    shortfall: dict[str, int] = {}
    for g, n in sorted(want.items()):
        idx = groups.get(g, [])
        perm = _rng(cfg.seed, g).permutation(len(idx)) if idx else np.zeros(0, dtype=int)
        chosen.update(idx[j] for j in perm[:n])
        if n > len(idx):
            if cfg.upsample and idx:
                copies += [(idx[perm[c % len(idx)]], c // len(idx) + 1) for c in range(n - len(idx))]
            else:
                shortfall[g] = n - len(idx)
    general_chosen = set(_rng(cfg.seed, "\x00general").permutation(n_general)[:n_gen].tolist())
    if n_gen > n_general:
        shortfall["general"] = n_gen - n_general
    info = {"wanted": want | {"general": n_gen}, "shortfall": shortfall, "inputs": len(task) + n_general,
            "copies": len(copies)}
    return MixPlan(group_of, chosen, unmatched, copies, general_chosen, info)


def mix_stream(plan: MixPlan, read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]],
               read_general: Callable[[], Iterable[Sequence[dict[str, Any]]]] = lambda: ()) -> Iterator[StepResult]:
    """The plan's output in input order, chunk by chunk: kept = the task records taken, then the general ones,
    then the copies; dropped = task types outside the weights, then the task records not taken, then the
    general ones not taken. Held: the ids of the records not taken and the sources of upsampled copies (scarce
    task types)."""
    sources = {src for src, _ in plan.copies}
    held: dict[int, dict[str, Any]] = {}
    not_sampled: list[str] = []  # ids: a dropped row is {id, step, reason}, written after all unmatched ones
    pos = 0
    for chunk in read_chunks():
        kept, dropped = [], []
        for r in chunk:
            if pos in plan.chosen:
                kept.append({**r, "meta": {**(r.get("meta") or {}), "mix_group": plan.group_of[r["task_type"]]}})
            elif pos in plan.unmatched:
                dropped.append(drop(r, "mix", "task_type_not_in_weights"))
            else:
                not_sampled.append(r["id"])
            if pos in sources:
                held[pos] = r
            pos += 1
        yield StepResult("mix", kept, dropped)
    for k in range(0, len(not_sampled), 10_000):
        yield StepResult("mix", [], [drop({"id": i}, "mix", "not_sampled") for i in not_sampled[k:k + 10_000]])
    del not_sampled
    pos = 0
    for chunk in read_general():
        kept, dropped = [], []
        for r in chunk:
            if pos in plan.general_chosen:
                kept.append({**r, "meta": {**(r.get("meta") or {}), "mix_group": "general"}})
            else:
                dropped.append(drop(r, "mix", "not_sampled", group="general"))
            pos += 1
        yield StepResult("mix", kept, dropped)
    copies = [{**held[src], "id": f"{held[src]['id']}#mix{n}",  # a copy counts in its group like its source
               "meta": {**(held[src].get("meta") or {}), "mix_group": plan.group_of[held[src]["task_type"]],
                        "mix_copy_of": held[src]["id"]}}
              for src, n in plan.copies]
    yield StepResult("mix", copies, [], info=plan.info)  # info["copies"] = len(copies)


def mix_records(records: Sequence[dict[str, Any]], config: MixConfig | dict | None = None,
                general: Sequence[dict[str, Any]] = ()) -> StepResult:
    """Sample the mixture; output keeps input order (task records, then general ones, then copies)."""
    plan = plan_mix(lambda: [records], config, lambda: [general])
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for res in mix_stream(plan, lambda: [records], lambda: [general]):
        kept += res.kept
        dropped += res.dropped
    return StepResult("mix", kept, dropped, info=plan.info)


# ---- training strategies: the stage datasets of a multi-stage run plan (`sftlab train` with `stages:`) ----
#
# Why here: the strategies of "How Abilities in LLMs are Affected by SFT Data Composition" (Dong et al., 2023)
# differ only in which records each training stage sees, so they are a records -> stages step like mix itself.

STRATEGIES = ("multitask", "sequential", "mixed_sequential", "dmt")
DMT_KS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125)  # k in {1, 1/2, ..., 1/32}


def _stage_name(task_type: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in task_type).strip("_.-") or "task"


def _tag(records: Sequence[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    return [{**r, "meta": {**(r.get("meta") or {}), "mix_stage": stage}} for r in records]


def _check_strategy(strategy: str, n_specialised: int, n_general: int, k: float) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"mix: option 'strategy': expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not n_specialised:
        raise UserError("mix: no specialised records (every input record was taken as general)")
    if strategy in ("mixed_sequential", "dmt") and not n_general:
        raise UserError(f"mix: strategy {strategy} needs general records (--general FILE or --general-task TYPE)")
    if strategy == "dmt" and not any(abs(k - x) < 1e-9 for x in DMT_KS):
        raise UserError(f"mix: option 'dmt_k': expected one of 1, 1/2, 1/4, 1/8, 1/16, 1/32, got {k}")


def strategy_rows(read_inputs: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                  read_general: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                  is_general: Callable[[dict[str, Any]], bool], strategy: str, *, k: float = 0.25, seed: int = 0
                  ) -> tuple[list[str], Iterator[tuple[str, list[dict[str, Any]]]], int, int]:
    """(stage names in training order, (stage, tagged records) in each stage's record order, specialised count,
    general count) for one strategy; the inputs are read once to count, then again for each stage, never held.
    Input records for which is_general holds join read_general's as the general records.

    multitask: one stage with everything; sequential: one stage per specialised task_type (first-appearance
    order), then general; mixed_sequential: all specialised together, then general; dmt: all specialised, then
    general + k x specialised (round(k * n), at least 1, records of each task_type, seeded per task_type, in
    input order; k in {1, 1/2, ..., 1/32}).
    """
    task_counts: dict[str, int] = {}  # specialised records per task_type, in first-appearance order
    n_general, general_ids = _general_ids(read_general)
    for chunk in read_inputs():
        for r in chunk:
            _check_not_general(r, general_ids)
            if is_general(r):
                n_general += 1
            else:
                task_counts[r["task_type"]] = task_counts.get(r["task_type"], 0) + 1
    del general_ids
    _check_strategy(strategy, sum(task_counts.values()), n_general, k)
    names: dict[str, str] = {}
    if strategy == "multitask":
        order = ["multitask"]
    elif strategy == "sequential":
        names = {t: _stage_name(t) for t in task_counts}
        order = list(names.values()) + (["general"] if n_general else [])
        if len(set(order)) != len(order):
            raise UserError(f"mix: task_types map to the same stage name: {order}")
    else:
        order = ["specialised", "general" if strategy == "mixed_sequential" else "general_mix"]

    def specialised(stage_of: Callable[[dict[str, Any], int], str | None]) -> Iterator[tuple[str, list]]:
        rank: dict[str, int] = defaultdict(int)  # position of a record within its task_type
        for chunk in read_inputs():
            for r in chunk:
                if not is_general(r):
                    name = stage_of(r, rank[r["task_type"]])
                    rank[r["task_type"]] += 1
                    if name is not None:
                        yield name, _tag([r], name)

    def general(name: str) -> Iterator[tuple[str, list]]:
        for chunk in read_inputs():
            yield name, _tag([r for r in chunk if is_general(r)], name)
        for chunk in read_general():
            yield name, _tag(chunk, name)

    def rows() -> Iterator[tuple[str, list[dict[str, Any]]]]:
        if strategy == "sequential":
            yield from specialised(lambda r, _j: names[r["task_type"]])
        else:
            yield from specialised(lambda _r, _j: order[0])
        if n_general or strategy != "sequential":
            yield from general(order[-1])
        if strategy == "dmt":  # then k x specialised: a seeded choice of ranks within each task_type
            replay = {t: set(_rng(seed, "\x00dmt" + t).permutation(n)[:max(1, round(k * n))].tolist())
                      for t, n in task_counts.items()}
            yield from specialised(lambda r, j: "general_mix" if j in replay[r["task_type"]] else None)

    return order, rows(), sum(task_counts.values()), n_general


def strategy_stages(specialised: Sequence[dict[str, Any]], general: Sequence[dict[str, Any]], strategy: str, *,
                    k: float = 0.25, seed: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
    """(stage name, records) in training order for one strategy (strategy_rows on lists)."""
    order, rows, _, _ = strategy_rows(lambda: [specialised], lambda: [general], lambda _r: False, strategy, k=k,
                                      seed=seed)
    stages: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for name, recs in rows:
        stages[name] += recs
    return list(stages.items())


def _write_plan(out_dir: Path, paths: Sequence[tuple[str, Path]]) -> Path:
    plan = [{"name": name, "data": {"train": [str(path.resolve())]}} for name, path in paths]
    plan_path = out_dir / "plan.yaml"
    write_text("# merge into a train config (model/data/train) and run `sftlab train CONFIG`\n"
               + yaml.safe_dump({"stages": plan}, sort_keys=False), plan_path)
    return plan_path


def write_strategy(stages: Sequence[tuple[str, Sequence[dict[str, Any]]]], out_dir: str | Path) -> Path:
    """OUT/stage-<i>-<name>.jsonl per stage and OUT/plan.yaml, the `stages:` list to merge into a train config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, recs) in enumerate(stages, start=1):
        paths.append((name, out_dir / f"stage-{i}-{name}.jsonl"))
        save_records(recs, paths[-1][1])
    return _write_plan(out_dir, paths)


def write_strategy_stream(read_inputs: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                          read_general: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                          is_general: Callable[[dict[str, Any]], bool], strategy: str, out_dir: str | Path, *,
                          k: float = 0.25, seed: int = 0) -> tuple[Path, list[tuple[str, int]], int, int]:
    """write_strategy(strategy_stages(...)) with the same bytes, the inputs read again for each stage instead of
    held (strategy_rows). Returns (plan, [(stage, records)], specialised, general)."""
    order, rows, n_specialised, n_general = strategy_rows(read_inputs, read_general, is_general, strategy, k=k,
                                                          seed=seed)
    out_dir = Path(out_dir)
    writers = {name: JsonlWriter(out_dir / f"stage-{i}-{name}.jsonl") for i, name in enumerate(order, start=1)}
    with all_or_none(writers.values()):
        for name, recs in rows:
            writers[name].write(recs)
    plan = _write_plan(out_dir, [(name, w.path) for name, w in writers.items()])
    return plan, [(name, w.count) for name, w in writers.items()], n_specialised, n_general
