"""Reading and writing record files for the curation steps, and the shared step result.

Canonical JSONL / Parquet are read here; any other layout (alpaca, sharegpt, openai, CSV, HF dirs) goes
through `sftlab.data.formats.read_records` when that module is available. Every step writes the kept
records to OUT and one line per removed record to OUT.dropped.jsonl, so nothing disappears silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.records import RecordError, iter_jsonl, validate_record, write_jsonl
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
        n_in = len(self.kept) + len(self.dropped)
        parts = [f"{self.step}: kept {len(self.kept)} of {n_in}"]
        parts += [f"{reason}: {n}" for reason, n in sorted(self.counts().items())]
        return "; ".join(parts)


def drop(rec: dict[str, Any], step: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One row of OUT.dropped.jsonl."""
    return {"id": rec["id"], "step": step, "reason": reason, **extra}


def _is_canonical(obj: Any) -> bool:
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    return (isinstance(msgs, list) and "task_type" in obj and "id" in obj
            and all(isinstance(m, dict) and "role" in m for m in msgs))


def _check(rec: dict[str, Any], file: str, index: int, unit: str, allow_empty_answers: bool) -> dict[str, Any]:
    rec.setdefault("tools", None)
    rec.setdefault("source", "")
    rec.setdefault("meta", {})
    if rec["meta"] is None:
        rec["meta"] = {}
    try:
        validate_record(rec)
    except RecordError as e:
        if not (allow_empty_answers and e.code == "empty_assistant"):
            raise RecordError(e.reason, file=file, index=index, field=e.field, code=e.code, unit=unit) from None
    return rec


def _read_canonical_jsonl(path: Path, allow_empty_answers: bool) -> list[dict[str, Any]] | None:
    out = []
    for lineno, obj in iter_jsonl(path):
        if not _is_canonical(obj):
            if not out:
                return None  # not canonical JSONL: let the format readers try
            raise RecordError("not a canonical record (needs id, messages[{role, content}], task_type)",
                              file=str(path), index=lineno, unit="line", code="not_canonical")
        out.append(_check(obj, str(path), lineno, "line", allow_empty_answers))
    return out


def _read_canonical_parquet(path: Path, allow_empty_answers: bool) -> list[dict[str, Any]] | None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if PARQUET_TAG not in (table.schema.metadata or {}):
        return None
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        for col in JSON_COLUMNS:
            row[col] = json.loads(row[col]) if row.get(col) is not None else None
        _check(row, str(path), i, "record", allow_empty_answers)
    return rows


def _read_other(path: Path) -> list[dict[str, Any]]:
    try:
        from sftlab.data.formats import read_records
    except ImportError:
        raise UserError(f"{path}: not canonical JSONL/Parquet records, and no format reader is available "
                        "(convert it with `sftlab data convert` first)") from None
    records, _rejects = read_records(str(path))
    return records


def load_records(paths: str | Path | Sequence[str | Path], *, allow_empty_answers: bool = False) -> list[dict[str, Any]]:
    """Records of one or more files, in order. Empty inputs and duplicate ids are errors (ids key all outputs)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no input files given")
    records: list[dict[str, Any]] = []
    first_seen: dict[str, str] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        recs = None
        if p.is_file() and p.suffix in (".jsonl", ".ndjson"):
            recs = _read_canonical_jsonl(p, allow_empty_answers)
        elif p.is_file() and p.suffix == ".parquet":
            recs = _read_canonical_parquet(p, allow_empty_answers)
        if recs is None:
            if p.is_file() and p.stat().st_size == 0:
                raise UserError(f"{p}: empty file (no records)")
            recs = _read_other(p)
        if not recs:
            raise UserError(f"{p}: empty file (no records)")
        for i, rec in enumerate(recs):
            where = f"{p}, record {i}"
            if rec["id"] in first_seen:
                raise RecordError(f"duplicate id {rec['id']!r} (first seen in {first_seen[rec['id']]}); ids must be "
                                  "unique", file=str(p), index=i, field="id", code="duplicate_id")
            first_seen[rec["id"]] = where
        records.extend(recs)
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
