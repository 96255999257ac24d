"""Reading and writing record files for the curation steps, and the shared step result.

Every input (canonical JSONL / Parquet or any layout `sftlab data convert` reads) goes through
`sftlab.data.formats`, so all commands accept and refuse the same files. Every step writes the kept
records to OUT and one line per removed record to OUT's name with its suffix replaced by `.dropped.jsonl`
(clean.jsonl -> clean.dropped.jsonl), so nothing disappears silently.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.records import write_jsonl
from sftlab.errors import UserError

PARQUET_TAG = b"sftlab.canonical"  # schema metadata key of Parquet files written by save_records
JSON_COLUMNS = ("messages", "tools", "meta")


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
        kept = f"kept {len(self.kept) - copies} of {n_in}"
        if copies:
            kept += f" + {copies} upsampled copies = {len(self.kept)} records"
        parts = [f"{self.step}: {kept}"]
        parts += [f"{reason}: {n}" for reason, n in sorted(self.counts().items())]
        return "; ".join(parts)


def drop(rec: dict[str, Any], step: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One row of OUT.dropped.jsonl."""
    return {"id": rec["id"], "step": step, "reason": reason, **extra}


def load_records(paths: str | Path | Sequence[str | Path], *, allow_empty_answers: bool = False) -> list[dict[str, Any]]:
    """Records of one or more files, in order, through the same reader as `sftlab data convert`
    (sftlab.data.formats: any layout, BOM, encodings and bad lines handled the same way). Empty inputs,
    bad records and duplicate ids are errors (ids key all outputs); reader warnings go to stderr."""
    from sftlab.data.formats import read_many_detailed

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no input files given")
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    records, _, info = read_many_detailed([str(p) for p in paths], allow_empty_answers=allow_empty_answers)
    for i in info:
        for w in i["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    return records


def save_records(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write records as JSONL, or Parquet (nested columns stored as JSON text) when path ends in .parquet."""
    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(records, path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(r) for r in records]
    cols: dict[str, list] = {"id": [r["id"] for r in rows], "task_type": [r["task_type"] for r in rows],
                             "source": [r.get("source") or "" for r in rows]}
    for col in JSON_COLUMNS:
        cols[col] = [None if r.get(col) is None else json.dumps(r[col], ensure_ascii=False) for r in rows]
    schema = pa.schema([(c, pa.string()) for c in cols], metadata={PARQUET_TAG: b"1"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=schema), path)
    return len(rows)


def dropped_path(out: str | Path) -> Path:
    """OUT.dropped.jsonl next to OUT (out.jsonl -> out.dropped.jsonl)."""
    out = Path(out)
    return out.with_name(out.stem + ".dropped.jsonl") if out.suffix else out.with_name(out.name + ".dropped.jsonl")


def write_result(result: StepResult, out: str | Path) -> None:
    """Write kept records to OUT and removed ones to OUT.dropped.jsonl."""
    save_records(result.kept, out)
    write_jsonl(result.dropped, dropped_path(out))
