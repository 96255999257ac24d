"""Reading prompt records: unlike training data they may end on a user turn (outputs are written through sftlab.io)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftlab.curate.files import load_records
from sftlab.data.records import validate_record
from sftlab.errors import RecordError, UserError
from sftlab.io import iter_jsonl


def read_prompt_records(path: str | Path) -> list[dict[str, Any]]:
    """Canonical JSONL records; unlike training data they may end on a user turn. Duplicate ids are errors."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".ndjson"):
        return load_records(path, allow_empty_answers=True)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise RecordError("not a JSON object", file=str(path), index=lineno, unit="line", code="not_object")
        rec.setdefault("tools", None)
        rec.setdefault("source", "")
        if rec.get("meta") is None:
            rec["meta"] = {}
        try:
            validate_record(rec, require_answer=False)
        except RecordError as e:
            raise RecordError(e.reason, file=str(path), index=lineno, field=e.field, code=e.code, unit="line") from None
        for field, holder in (("reference", rec), ("meta.reference", rec["meta"])):
            ref = holder.get("reference") if isinstance(holder, dict) else None
            if isinstance(ref, bool) or not isinstance(ref, str | int | float | None):
                raise RecordError(f"reference must be a string or a number, got {type(ref).__name__}",
                                  file=str(path), index=lineno, field=field, code="bad_reference", unit="line")
        if rec["id"] in seen:
            raise RecordError(f"duplicate id {rec['id']!r}", file=str(path), index=lineno, field="id",
                              code="duplicate_id", unit="line")
        seen.add(rec["id"])
        out.append(rec)
    if not out:
        raise UserError(f"{path}: empty file (no records)")
    return out
