"""The result every curation step returns, and how it is written: kept records to OUT, one line per removed
record to OUT's name with its suffix replaced by `.dropped.jsonl` (clean.jsonl -> clean.dropped.jsonl), so
nothing disappears silently."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.curate.files import atomic_writer, save_records
from sftlab.io import JsonlWriter, all_or_none, write_jsonl


@dataclass
class StepResult:
    """What a curation step kept and removed; `dropped` rows are {id, step, reason, ...}."""

    step: str
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> Counter:
        return Counter(d["reason"] for d in self.dropped)

    def summary(self) -> str:
        """'step: kept K of N; reason: n ...'; steps that add records (mix --upsample) set info['inputs'] and
        info['copies'] so the line counts inputs, not outputs."""
        copies = self.info.get("copies", 0)
        n_in = self.info.get("inputs", len(self.kept) - copies + len(self.dropped))
        return summary_line(self.step, len(self.kept), n_in, self.counts(), copies)


def summary_line(step: str, n_kept: int, n_in: int, counts: Counter, copies: int = 0) -> str:
    """The one-line summary of a step from its counts (shared by list and streaming steps)."""
    kept = f"kept {n_kept - copies} of {n_in}"
    if copies:
        kept += f" + {copies} upsampled copies = {n_kept} records"
    parts = [f"{step}: {kept}"]
    parts += [f"{reason}: {n}" for reason, n in sorted(counts.items())]
    return "; ".join(parts)


def drop(rec: dict[str, Any], step: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One row of OUT.dropped.jsonl."""
    return {"id": rec["id"], "step": step, "reason": reason, **extra}


@dataclass
class StreamTally:
    """What write_result_stream wrote: counts, the step's info (from its results, later keys win) and the
    rows a step added (info['copies'], mix --upsample)."""

    step: str
    kept: int = 0
    dropped: int = 0
    counts: Counter = field(default_factory=Counter)
    copies: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return summary_line(self.step, self.kept, self.kept - self.copies + self.dropped, self.counts, self.copies)


def write_result_stream(results: Iterable[StepResult], out: str | Path, step: str) -> StreamTally:
    """Write a stream of per-chunk StepResults to OUT and OUT.dropped.jsonl as they come (both files
    appear atomically at the end; on an error neither is written)."""
    out = Path(out)
    kept_file = atomic_writer(out)
    dropped_file = JsonlWriter(dropped_path(out))
    tally = StreamTally(step)
    with all_or_none([kept_file, dropped_file]):
        for result in results:
            kept_file.write(result.kept)
            dropped_file.write(result.dropped)
            tally.counts.update(result.counts())
            tally.copies += result.info.get("copies", 0)
            tally.info.update(result.info)
    tally.kept, tally.dropped = kept_file.count, dropped_file.count
    return tally


def dropped_path(out: str | Path) -> Path:
    """OUT.dropped.jsonl next to OUT (out.jsonl -> out.dropped.jsonl)."""
    out = Path(out)
    return out.with_name(out.stem + ".dropped.jsonl") if out.suffix else out.with_name(out.name + ".dropped.jsonl")


def write_result(result: StepResult, out: str | Path) -> None:
    """Write kept records to OUT and removed ones to OUT.dropped.jsonl."""
    save_records(result.kept, out)
    write_jsonl(result.dropped, dropped_path(out))
