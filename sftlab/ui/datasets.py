"""The Data page: a dataset's per-task counts and length histograms, its rejects with their reasons, and the render
view of one sample — the exact tokens it trains on, supervised spans and per-message loss weights.

Records come from the same reader as `sftlab data` and `train` (sftlab.data.formats, `on_error: skip`, so one bad
row never hides the good ones) and are rendered by sftlab.data.render with the run's tokenizer and settings, so what
the page shows is what training sees.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.formats import read_records
from sftlab.data.render import TRAIN_ON, load_tokenizer, render_records
from sftlab.errors import UserError

MAX_RENDERED = 20_000  # token lengths of the first N records (rendering is the slow part)
BINS = 30


@dataclass(frozen=True)
class RenderSettings:
    """What decides the tokens: the tokenizer (a model dir or hub id) and the run's data settings."""

    tokenizer: str | None = None
    chat_template: str | None = None
    max_length: int = 2048
    train_on: str = "all_assistant"
    eot_token: str | None = None
    special_tokens: tuple[str, ...] = ()

    @classmethod
    def from_run_config(cls, cfg: dict[str, Any], model_dir: str | None) -> RenderSettings:
        model, data = cfg.get("model") or {}, cfg.get("data") or {}
        train_on = data.get("train_on") if data.get("train_on") in TRAIN_ON else "all_assistant"
        max_len = data.get("max_length") if isinstance(data.get("max_length"), int) else 2048
        return cls(tokenizer=model_dir or model.get("name_or_path"), chat_template=model.get("chat_template"),
                   max_length=max_len, train_on=train_on, eot_token=model.get("eot_token"),
                   special_tokens=tuple(model.get("special_tokens") or ()))


@dataclass
class DatasetView:
    path: Path
    settings: RenderSettings
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # {"reason", "where", "code"}
    counts: dict[str, int] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)  # per task_type
    length_unit: str = "characters"
    notes: list[str] = field(default_factory=list)

    def histogram(self, bins: int = BINS) -> dict[str, Any]:
        """Shared bins over every task: {"edges": [...], "counts": {task_type: [...]}}."""
        values = [v for vs in self.lengths.values() for v in vs]
        if not values:
            return {"edges": [], "counts": {}}
        lo, hi = min(values), max(values)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        n = math.ceil((hi - lo + 1) / width)
        counts = {}
        for task, vs in sorted(self.lengths.items()):
            c = [0] * n
            for v in vs:
                c[(v - lo) // width] += 1
            counts[task] = c
        return {"edges": [lo + i * width for i in range(n + 1)], "counts": counts}

    def stats(self) -> list[dict[str, Any]]:
        """Per task_type: records, share, length p50 / p90 / max."""
        total = sum(self.counts.values()) or 1
        rows = []
        for task, n in sorted(self.counts.items()):
            vs = sorted(self.lengths.get(task, []))
            rows.append({"task_type": task, "records": n, "share": n / total, "p50": _nearest_rank(vs, 0.5),
                         "p90": _nearest_rank(vs, 0.9), "max": vs[-1] if vs else None})
        return rows


def _nearest_rank(ascending: list[int], q: float) -> int | None:
    if not ascending:
        return None
    return ascending[min(len(ascending) - 1, max(0, math.ceil(q * len(ascending)) - 1))]


def _tokenizer(settings: RenderSettings) -> Any:
    return load_tokenizer(settings.tokenizer, settings.chat_template, settings.special_tokens, settings.eot_token)


def load_dataset(path: Path, settings: RenderSettings) -> DatasetView:
    """Read (and with a tokenizer, render) a dataset; problems become notes and rejects, never an exception."""
    view = DatasetView(path=path, settings=settings)
    if not path.exists():
        view.notes.append(f"{path}: not found")
        return view
    try:
        view.records, rejects = read_records(path, on_error="skip", allow_empty_answers=False)
    except UserError as e:
        view.notes.append(f"cannot read {path}: {e}")
        return view
    view.rejects = [{"where": f"{r.get('file')}, {r.get('unit')} {r.get('index')}"
                              + (f", field '{r['field']}'" if r.get("field") else ""),
                     "code": r.get("code", ""), "reason": r.get("reason", "")} for r in rejects]
    view.counts = dict(Counter(r["task_type"] for r in view.records))
    lengths: dict[str, list[int]] = defaultdict(list)
    if settings.tokenizer:
        try:
            tok = _tokenizer(settings)
            head = view.records[:MAX_RENDERED]
            samples, report = render_records(head, tok, train_on=settings.train_on,
                                             max_length=settings.max_length, on_error="skip")
        except UserError as e:
            view.notes.append(f"not rendered with {settings.tokenizer}: {e}")
        else:
            for s in samples:
                lengths[s["task_type"]].append(s["num_tokens"])
            view.length_unit = "tokens"
            view.rejects += [{"where": f"record id {rj['record'].get('id')}", "code": rj["code"],
                              "reason": rj["reason"]} for rj in report.rejects]
            if len(view.records) > MAX_RENDERED:
                view.notes.append(f"token lengths of the first {MAX_RENDERED:,} of {len(view.records):,} records")
            if report.truncated:
                view.notes.append(f"{report.truncated} sample(s) longer than max_length {settings.max_length} "
                                  "are cut there in training")
    if view.length_unit == "characters":
        for r in view.records:
            lengths[r["task_type"]].append(sum(len(m.get("content") or "") for m in r["messages"]))
        if not settings.tokenizer:
            view.notes.append("lengths in characters: open the dataset from a run (or start `sftlab ui` with "
                              "--tokenizer) to see tokens")
    view.lengths = dict(lengths)
    return view


def render_sample(view: DatasetView, index: int) -> dict[str, Any]:
    """One record as training sees it: {"record", "tokens": [{"text", "id", "turn", "weight"}], "messages":
    [{"role", "weight", "supervised"}], "num_tokens", "supervised", "truncated"} or {"record", "error"}."""
    if not 0 <= index < len(view.records):
        raise UserError(f"{view.path}: no record {index} (it has {len(view.records)})")
    rec = view.records[index]
    s = view.settings
    out: dict[str, Any] = {"record": rec, "index": index}
    if not s.tokenizer:
        out["error"] = "no tokenizer: open this dataset from a run, or start `sftlab ui` with --tokenizer"
        return out
    tok = _tokenizer(s)
    samples, report = render_records([rec], tok, train_on=s.train_on, max_length=s.max_length, on_error="skip")
    if not samples:
        out["error"] = report.rejects[0]["reason"] if report.rejects else "not renderable"
        return out
    sample = samples[0]
    pieces = [tok.decode([i], skip_special_tokens=False) for i in sample["input_ids"]]
    out["tokens"] = [{"text": t, "id": i, "turn": ti, "weight": sample["turn_weights"][ti] if ti >= 0 else 0.0}
                     for t, i, ti in zip(pieces, sample["input_ids"], sample["turn_index"], strict=True)]
    supervised_msgs = [i for i, m in enumerate(rec["messages"]) if m.get("role") == "assistant"
                       and (m.get("loss_weight") is None or m["loss_weight"] > 0)]
    if s.train_on == "last_assistant":
        supervised_msgs = supervised_msgs[-1:]
    out["messages"] = [{"role": m["role"], "weight": m.get("loss_weight", 1.0 if m["role"] == "assistant" else None),
                        "supervised": s.train_on == "all" or i in supervised_msgs}
                       for i, m in enumerate(rec["messages"])]
    out["num_tokens"] = sample["num_tokens"]
    out["supervised"] = sum(1 for ti in sample["turn_index"] if ti >= 0)
    out["truncated"] = bool(report.truncated)
    return out
