"""Blind review in the browser: single-grade (1-10) and A/B items from an eval output, votes kept durably.

A review is a folder `EVAL_DIR/review/NAME/` holding exactly what `sftlab eval export-sheet` writes — the blank sheet
(sheet.csv) and its key (sheet.key.json: shuffled items, model names hidden, the model's side drawn per item from the
seed) — made by that same function, plus the rows it was made from (model.jsonl, baseline.jsonl), session.json and
votes.sqlite. So a review can also be finished on paper: the sheet flow stays.

Votes are the sheet's cell values ("A", "B", "C" = tie, or "1".."10"), one row per (annotator, item, dimension) in
SQLite (WAL, synchronous=FULL): a vote is on disk before the browser hears "saved", so killing the server or the
browser loses none, and several annotators vote at once. Results go through `sftlab.eval.human.vote_score` and
`summarize_ratings`, the code path of `eval import-sheet`, into summary.json.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sftlab.errors import RecordError, UserError
from sftlab.eval.human import export_sheet, summarize_ratings, vote_score
from sftlab.io import read_jsonl, write_json, write_jsonl
from sftlab.ui.evals import EvalView

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    annotator TEXT NOT NULL,
    item TEXT NOT NULL,        -- item-0001 ... (the sheet's blind item id)
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,       -- the sheet's cell: A / B / C (tie), or 1..10
    created REAL NOT NULL,
    PRIMARY KEY (annotator, item, dimension)
);
"""


def create_review(view: EvalView, *, dimensions: list[str], seed: int = 0, limit: int | None = None,
                  baseline: EvalView | None = None, name: str | None = None, single: bool = False) -> Path:
    """Write a new review of `view`'s predictions (A/B against `baseline`'s replies or the eval's own baseline
    replies, else — or with `single` — single-grade 1-10) under EVAL_DIR/review/NAME; returns that folder."""
    dims = [d.strip() for d in dimensions if d.strip()]
    if not dims or any(not NAME.match(d) for d in dims):
        raise UserError(f"dimensions {dimensions!r}: give names of letters, digits, '_', '.' or '-'")
    name = name or time.strftime("review-%Y%m%d-%H%M%S")
    if not NAME.match(name):
        raise UserError(f"review name {name!r}: use letters, digits, '_', '.' or '-' (at most 64)")
    rows = [r for r in view.predictions if r.get("reply") is not None]
    base = baseline.by_id() if baseline is not None else None
    if base is not None:
        rows = [r for r in rows if r["id"] in base and base[r["id"]].get("reply") is not None]
        if not rows:
            raise UserError(f"{view.path} and {baseline.path} share no item ids: review evals of the same eval sets")
    if not rows:
        raise UserError(f"{view.path}: no predictions to review")
    if limit and limit < len(rows):
        keep = set(random.Random(seed).sample(range(len(rows)), limit))
        rows = [r for i, r in enumerate(rows) if i in keep]
    out = view.path / "review" / name
    if out.exists():
        raise UserError(f"{out} exists: choose another review name")
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}") from None
    write_jsonl([{k: r.get(k) for k in ("id", "task_type", "prompt", "reply", "reference")} for r in rows],
                 out / "model.jsonl")
    pairwise = not single and (base is not None or all(r.get("baseline_reply") is not None for r in rows))
    if pairwise:
        write_jsonl([{"id": r["id"], "reply": base[r["id"]]["reply"] if base is not None else r["baseline_reply"]}
                      for r in rows], out / "baseline.jsonl")
    export_sheet(out / "model.jsonl", out / "sheet.csv", baseline=out / "baseline.jsonl" if pairwise else None,
                 dimensions=dims, seed=seed)
    info = {"name": name, "eval_dir": str(view.path), "baseline_dir": str(baseline.path) if baseline else None,
            "mode": "pairwise" if pairwise else "single", "dimensions": dims, "seed": seed, "items": len(rows),
            "created": time.time(), "judged": _judged(view)}
    write_json(info, out / "session.json")
    return out


def _judged(view: EvalView) -> str | None:
    """The eval's predictions.jsonl when a judge graded it (for judge-vs-human agreement)."""
    return str(view.path / "predictions.jsonl") if any(r.get("judge_scores") for r in view.predictions) else None


class Review:
    """One review folder: its items in sheet order, the votes, progress per annotator, the summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.info = json.loads((path / "session.json").read_text(encoding="utf-8"))
            self.key = json.loads((path / "sheet.key.json").read_text(encoding="utf-8"))
            model = {r["id"]: r for r in read_jsonl(path / "model.jsonl")}
            bpath = path / "baseline.jsonl"
            base = {r["id"]: r["reply"] for r in read_jsonl(bpath)} if bpath.exists() else {}
        except (OSError, json.JSONDecodeError, RecordError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a readable review folder ({type(e).__name__}: {e})") from None
        self.items: list[dict[str, Any]] = []
        for item, entry in self.key["items"].items():
            row = model[entry["id"]]
            if self.key["mode"] == "pairwise":
                a, b = (row["reply"], base[entry["id"]]) if entry["model_is"] == "A" else (base[entry["id"]],
                                                                                            row["reply"])
                answers = [a, b]
            else:
                answers = [row["reply"]]
            prompt = row.get("prompt") or []
            if isinstance(prompt, str):  # a user's predictions file may give the prompt as text
                prompt = [{"role": "user", "content": prompt}]
            self.items.append({"item": item, "prompt": prompt, "answers": answers})
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path / "votes.sqlite"), timeout=30.0, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # the vote is on disk when the browser is told it is saved
        self.db.executescript(SCHEMA)

    @property
    def mode(self) -> str:
        return self.key["mode"]

    @property
    def dimensions(self) -> list[str]:
        return self.key["dimensions"]

    def vote(self, annotator: str, item: str, dimension: str, value: str) -> None:
        """Store one vote (a later vote on the same cell replaces it); UserError for anything the sheet refuses."""
        annotator = check_annotator(annotator)
        if item not in self.key["items"]:
            raise UserError(f"unknown item {item!r} in review {self.info['name']}")
        if dimension not in self.dimensions:
            raise UserError(f"unknown dimension {dimension!r} (this review rates {', '.join(self.dimensions)})")
        value = str(value).strip().upper()
        if vote_score(value, self.key, item, dimension, f"review {self.info['name']}") is None:
            raise UserError("empty vote")
        with self.lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO votes VALUES (?, ?, ?, ?, ?)",
                            (annotator, item, dimension, value, time.time()))

    def votes(self, annotator: str | None = None) -> dict[str, dict[str, dict[str, str]]]:
        """annotator -> item -> dimension -> value, annotators in the order they first voted."""
        sql = "SELECT annotator, item, dimension, value FROM votes"
        args: tuple = ()
        if annotator is not None:
            sql, args = sql + " WHERE annotator = ?", (annotator,)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY created, rowid", args).fetchall()
        out: dict[str, dict[str, dict[str, str]]] = {}
        for who, item, dim, value in rows:
            out.setdefault(who, {}).setdefault(item, {})[dim] = value
        return out

    def progress(self, annotator: str) -> dict[str, Any]:
        """{"done": items with every dimension voted, "total", "next": index of the first item not done or None}."""
        mine = self.votes(annotator).get(annotator, {})
        done = [all(d in mine.get(it["item"], {}) for d in self.dimensions) for it in self.items]
        return {"done": sum(done), "total": len(self.items), "next": next((i for i, ok in enumerate(done) if not ok),
                                                                           None)}

    def item(self, index: int, annotator: str) -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise UserError(f"review {self.info['name']} has items 0..{len(self.items) - 1}, not {index}")
        it = self.items[index]
        mine = self.votes(annotator).get(annotator, {}).get(it["item"], {})
        return {**it, "index": index, "votes": mine}

    def summary(self) -> dict[str, Any]:
        """summary.json (written next to the votes): the fields `eval import-sheet` gives for the same votes."""
        ratings: dict[str, dict[str, dict[str, float]]] = {}
        for who, items in self.votes().items():
            mine = ratings.setdefault(who, {})
            for item, dims in items.items():
                for d, value in dims.items():
                    score = vote_score(value, self.key, item, d, f"review {self.info['name']}, annotator {who}")
                    if score is not None:
                        mine.setdefault(self.key["items"][item]["id"], {})[d] = score
        if not ratings:
            raise UserError(f"review {self.info['name']}: no votes yet")
        judged = self.info.get("judged")
        summary = summarize_ratings(ratings, self.key, judged=judged if judged and Path(judged).exists() else None)
        write_json(summary, self.path / "summary.json", allow_nan=True)  # as import-sheet writes it
        return summary

    def close(self) -> None:
        self.db.close()


def check_annotator(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or any(c in name for c in "/\\\n\r\t"):
        raise UserError("annotator: give a name of 1-64 characters without slashes or line breaks")
    return name


def find_reviews(eval_dir: Path) -> list[Path]:
    root = eval_dir / "review"
    return sorted(p for p in root.iterdir() if (p / "session.json").is_file()) if root.is_dir() else []
