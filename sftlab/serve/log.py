"""The request/feedback log (SQLite, WAL mode: readers never block the writer, several server processes may share
one file) and its export to canonical records for `sftlab data ...`."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftlab.data.records import validate_record
from sftlab.errors import UserError
from sftlab.serve.body import loads_checked

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,            -- the response id the client saw (chatcmpl-...)
    created REAL NOT NULL,          -- unix time the request arrived
    latency_ms REAL NOT NULL,
    model TEXT NOT NULL,
    messages TEXT NOT NULL,         -- JSON: the conversation as received (normalised roles)
    tools TEXT,                     -- JSON or NULL
    params TEXT NOT NULL,           -- JSON: the sampling parameters used
    choices TEXT NOT NULL,          -- JSON: [{text, finish_reason, completion_tokens, tool_calls?}]
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    upstream TEXT                   -- base URL in gateway mode, else NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    response_id TEXT NOT NULL REFERENCES requests(id),
    created REAL NOT NULL,
    score INTEGER NOT NULL,
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_response ON feedback(response_id);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _json(value: Any) -> str:
    """Strict JSON for a log column: a NaN/Infinity or a lone surrogate raises here, before anything is stored."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _create_private(path: Path) -> None:
    """Create the log readable by its owner only (it holds users' prompts); SQLite gives its -wal and -shm files
    the database file's permissions. An existing file keeps its mode."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except IsADirectoryError:
        pass  # reported by connect() below as "cannot use it"


class RequestLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _create_private(self.path)
            self.conn = connect(self.path)
            self.conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as e:  # a directory, a file that is no database, no permission
            raise UserError(f"request log {self.path}: cannot use it as a SQLite database ({e}); give a new "
                            "file or a log written by sftlab serve") from None
        self.lock = threading.Lock()

    def add_request(self, *, response_id: str, created: float, latency_ms: float, model: str,
                    messages: list[dict], tools: list[dict] | None, params: dict[str, Any],
                    choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int, stream: bool,
                    upstream: str | None = None) -> None:
        row = (response_id, created, latency_ms, model, _json(messages), _json(tools) if tools else None,
               _json(params), _json(choices), prompt_tokens, completion_tokens, int(stream), upstream)
        with self.lock, self.conn:
            self.conn.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

    def add_feedback(self, response_id: str, score: int, comment: str | None) -> bool:
        """Attach feedback to a logged response; False when the id is unknown."""
        with self.lock, self.conn:
            if self.conn.execute("SELECT 1 FROM requests WHERE id = ?", (response_id,)).fetchone() is None:
                return False
            self.conn.execute("INSERT INTO feedback (response_id, created, score, comment) VALUES (?,?,?,?)",
                              (response_id, time.time(), score, comment))
        return True

    def count(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


@dataclass
class LogExport:
    """What export_records made of a log: the records, what was left out on purpose (counts by reason) and the
    rows that could not be made into records (one {"row_id", "reason"} each)."""

    records: list[dict[str, Any]]
    skipped: dict[str, int]
    rejects: list[dict[str, Any]]


EXPORT_QUERY = (
    "SELECT r.id, r.created, r.latency_ms, r.model, r.messages, r.tools, r.params, r.choices, r.prompt_tokens, "
    "r.upstream, f.score, f.comment FROM requests r LEFT JOIN "
    "(SELECT response_id, score, comment, MAX(seq) FROM feedback GROUP BY response_id) f "
    "ON f.response_id = r.id ORDER BY r.created, r.id")


def _read_rows(db: Path) -> list[tuple]:
    if not db.exists():
        raise UserError(f"request log not found: {db}")
    try:  # connect() already reads the file (PRAGMA journal_mode), so a file that is no database fails here
        conn = connect(db)
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db}: not an sftlab request log ({e})") from e
    conn.text_factory = bytes  # text is decoded row by row: one row of bad UTF-8 must not stop the others
    try:
        return conn.execute(EXPORT_QUERY).fetchall()
    except sqlite3.DatabaseError as e:
        raise UserError(f"{db}: not an sftlab request log ({e})") from e
    finally:
        conn.close()


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _row_records(row: tuple, min_score: int | None, skipped: dict[str, int]) -> list[dict[str, Any]]:
    """One logged request as records (one per choice); raises on a row that cannot be one (the reject's reason)."""
    (rid, created, latency_ms, model, messages, tools, params, choices, prompt_tokens, upstream, score,
     comment) = (_text(v) for v in row)
    choices = loads_checked(choices)
    if min_score is not None and (score is None or score < min_score):
        skipped["no_feedback" if score is None else "below_min_score"] += len(choices)
        return []
    out = []
    for k, choice in enumerate(choices):
        calls = choice.get("tool_calls")
        if not choice["text"].strip() and not calls:
            skipped["empty_reply"] += 1  # not a training example (the record format rejects it)
            continue
        meta = {"response_id": rid, "choice": k, "model": model,
                "created": datetime.fromtimestamp(created, timezone.utc).isoformat(),
                "latency_ms": round(latency_ms, 3), "params": loads_checked(params),
                "finish_reason": choice["finish_reason"],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": choice["completion_tokens"]},
                "feedback": None if score is None else {"score": score, "comment": comment}}
        if choice.get("malformed_tool_calls"):
            meta["malformed_tool_calls"] = choice["malformed_tool_calls"]
        if upstream:
            meta["upstream"] = upstream
        reply = {"role": "assistant", "content": choice["text"], **({"tool_calls": calls} if calls else {})}
        rec = {"id": rid if len(choices) == 1 else f"{rid}-{k}", "messages": [*loads_checked(messages), reply],
               "tools": loads_checked(tools) if tools else None, "task_type": "serve", "source": f"serve:{model}",
               "meta": meta}
        validate_record(rec)
        _json(rec)  # what write_jsonl will write: strict JSON, or this row is a reject
        out.append(rec)
    return out


def export_records(db: str | Path, min_score: int | None = None) -> LogExport:
    """One canonical record per logged choice: the conversation plus the reply (its tool calls included), the
    latest feedback and the provenance (response id, model, time, latency, params, usage) in meta. With
    min_score, only choices whose response has feedback with score >= min_score. A row that cannot be made into
    a valid record (a row written by something else, bad JSON, bad UTF-8, NaN) is a reject, never the end of
    the export."""
    records: list[dict[str, Any]] = []
    skipped = {"below_min_score": 0, "no_feedback": 0, "empty_reply": 0}
    rejects: list[dict[str, Any]] = []
    for row in _read_rows(Path(db)):
        try:
            records += _row_records(row, min_score, skipped)
        except Exception as e:  # a row written by anything: whatever fails is its reject reason
            rid = row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else repr(row[0])
            rejects.append({"row_id": rid, "reason": f"{type(e).__name__}: {e}"[:500]})
    return LogExport(records, skipped, rejects)
