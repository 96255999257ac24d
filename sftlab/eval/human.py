"""Human evaluation: blind rating sheets (CSV or XLSX) out, filled sheets back in, with Cohen's kappa between
annotators and judge-vs-human agreement.

A sheet is shuffled and carries no model names; for A/B sheets the side of the model is random per item. The
key (item → id, task_type, which side is the model) is written next to the sheet as SHEET.key.json.
Single sheets are rated 1–10 per dimension; A/B sheets take A, B or C (tie) per dimension.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.eval.run import rows_from_predictions
from sftlab.eval.stats import pearson, summarize
from sftlab.io import atomic_path, read_jsonl, write_json


def _key_path(sheet: Path) -> Path:
    return sheet.with_name(sheet.stem + ".key.json")


def _write_table(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    if path.suffix not in (".xlsx", ".csv"):
        raise UserError(f"{path}: the sheet must be .csv or .xlsx")
    with atomic_path(path) as tmp:
        if path.suffix == ".xlsx":
            from openpyxl import Workbook  # lazy: openpyxl takes ~0.4 s to import; only .xlsx sheets

            wb = Workbook()
            ws = wb.active
            ws.title = "ratings"
            ws.append(header)
            for r in rows:
                ws.append(r)
            wb.save(tmp)
        else:
            with open(tmp, "w", encoding="utf-8-sig", newline="") as f:  # BOM: Excel opens UTF-8 (Chinese) right
                csv.writer(f).writerows([header, *rows])


def _read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".xlsx":
        from openpyxl import load_workbook  # lazy: openpyxl takes ~0.4 s to import; only .xlsx sheets

        ws = load_workbook(path, read_only=True).active
        values = [list(r) for r in ws.iter_rows(values_only=True)]
        header = [str(h) for h in values[0]]
        return [dict(zip(header, r, strict=False)) for r in values[1:] if any(v not in (None, "") for v in r)]
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.DictReader(f))
    raise UserError(f"{path}: the sheet must be .csv or .xlsx")


def _prompt_text(row: dict[str, Any]) -> str:
    return "\n\n".join(f"[{m['role']}] {m.get('content') or ''}" for m in row.get("prompt") or [])


def export_sheet(pred: str | Path, out: str | Path, *, baseline: str | Path | None = None,
                 dimensions: list[str] = ("helpfulness", "honesty", "harmlessness"), seed: int = 0) -> Path:
    """Write the blind sheet and its key; returns the sheet path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = rows_from_predictions(pred)
    rng = random.Random(seed)
    rng.shuffle(rows)
    dims = [d.strip() for d in dimensions if d.strip()]
    key: dict[str, Any] = {"mode": "pairwise" if baseline else "single", "dimensions": dims, "items": {}}
    table = []
    base = {r["id"]: r["reply"] for r in rows_from_predictions(baseline)} if baseline else {}
    for n, r in enumerate(rows, 1):
        item = f"item-{n:04d}"
        entry = {"id": r["id"], "task_type": r.get("task_type", "default")}
        if baseline:
            if r["id"] not in base:
                raise UserError(f"{baseline}: no reply for id {r['id']!r} (the baseline must cover every prediction)")
            model_first = rng.random() < 0.5
            a, b = (r["reply"], base[r["id"]]) if model_first else (base[r["id"]], r["reply"])
            entry["model_is"] = "A" if model_first else "B"
            table.append([item, _prompt_text(r), a, b, *[""] * len(dims), ""])
        else:
            table.append([item, _prompt_text(r), r["reply"], *[""] * len(dims), ""])
        key["items"][item] = entry
    cols = ["item", "prompt", "answer_A", "answer_B"] if baseline else ["item", "prompt", "answer"]
    _write_table(out, [*cols, *dims, "comment"], table)
    write_json(key, _key_path(out))
    return out


def _cell(value: Any, mode: str, sheet: Path | str, item: str, dim: str) -> float | None:
    """A filled cell → score (single: the number; pairwise: model win 1 / tie 0.5 / loss 0 before unblinding)."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().upper()
    if mode == "pairwise":
        if text not in ("A", "B", "C", "TIE"):
            raise UserError(f"{sheet}: {item}, column '{dim}': {value!r} is not A, B or C (tie)")
        return {"A": 1.0, "B": 0.0}.get(text, 0.5)
    try:
        score = float(text)
    except ValueError:
        raise UserError(f"{sheet}: {item}, column '{dim}': {value!r} is not a number (rate 1-10)") from None
    if not 1 <= score <= 10:  # a typo such as 77 would silently move the means (NaN too)
        raise UserError(f"{sheet}: {item}, column '{dim}': {value!r} is outside the scale 1-10")
    return score


def vote_score(value: Any, key: dict[str, Any], item: str, dim: str, where: Path | str) -> float | None:
    """One vote (a sheet cell or a vote in `sftlab ui`: 1-10, or A / B / C = tie) → the model's score: the grade, or
    for A/B the model's win 1 / tie 0.5 / loss 0 after unblinding with the key. None for an empty vote."""
    v = _cell(value, key["mode"], where, item, dim)
    if v is not None and key["mode"] == "pairwise" and key["items"][item]["model_is"] == "B":
        v = 1.0 - v  # unblind: always the model's win
    return v


def _kappa(a: list[float], b: list[float]) -> dict[str, float | None]:
    from sklearn.metrics import cohen_kappa_score  # lazy: scikit-learn takes seconds to import

    if len(a) < 2:
        return {"n": len(a), "kappa": None}
    la, lb = [str(x) for x in a], [str(x) for x in b]
    if len(set(la) | set(lb)) < 2:
        return {"n": len(a), "kappa": 1.0}
    out: dict[str, float | None] = {"n": len(a), "kappa": float(cohen_kappa_score(la, lb))}
    if len(set(a) | set(b)) > 2:
        out["kappa_quadratic"] = float(cohen_kappa_score([round(x * 2) for x in a], [round(x * 2) for x in b],
                                                         weights="quadratic"))
    return out


def import_sheets(sheets: list[str | Path], out: str | Path, *, judged: str | Path | None = None) -> dict[str, Any]:
    """Read filled sheets (one per annotator, named after the annotator) → OUT/summary.json with
    `human.scores.<task_type>.<dimension>`, `agreement.<dimension>` (Cohen's kappa between the first two
    annotators) and, with a judged predictions.jsonl, `judge_vs_human.<dimension>`."""
    ratings: dict[str, dict[str, dict[str, float]]] = {}  # annotator -> item -> dim -> score
    key: dict[str, Any] | None = None
    for s in map(Path, sheets):
        kp = _key_path(s)
        if not kp.exists():
            found = sorted(s.parent.glob("*.key.json"))
            if len(found) > 1:  # several sheets' keys in one folder: which one unblinds this copy is unknown
                raise UserError(f"{s}: no key file {kp.name}, and several next to the sheet "
                                f"({', '.join(f.name for f in found)}): copy this sheet's key to {kp.name}")
            if not found:
                raise UserError(f"{s}: no key file {kp.name} next to the sheet (keep the .key.json that export-sheet "
                                "wrote in the same folder)")
            kp = found[0]
        key = json.loads(kp.read_text(encoding="utf-8"))
        mine: dict[str, dict[str, float]] = {}
        for row in _read_table(s):
            item = str(row.get("item") or "")
            if item not in key["items"]:
                raise UserError(f"{s}: unknown item {item!r} (not in {kp.name})")
            for d in key["dimensions"]:
                v = vote_score(row.get(d), key, item, d, s)
                if v is not None:
                    mine.setdefault(key["items"][item]["id"], {})[d] = v
        ratings[s.stem] = mine
    assert key is not None
    summary = summarize_ratings(ratings, key, judged=judged)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(summary, out / "summary.json", allow_nan=True)
    return summary


def summarize_ratings(ratings: dict[str, dict[str, dict[str, float]]], key: dict[str, Any], *,
                      judged: str | Path | None = None) -> dict[str, Any]:
    """summary.json's human-evaluation fields from unblinded scores (annotator -> record id -> dimension -> score, as
    `vote_score` gives them): `human.scores.<task_type>.<dimension>`, `agreement.<dimension>` (Cohen's kappa between
    the first two annotators) and, with a judged predictions.jsonl, `judge_vs_human.<dimension>`. The one path from
    votes to these fields, for filled sheets (`import_sheets`) and for `sftlab ui` reviews alike."""
    dims = key["dimensions"]
    task = {e["id"]: e["task_type"] for e in key["items"].values()}
    per_item: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for mine in ratings.values():
        for rid, ds in mine.items():
            for d, v in ds.items():
                per_item[rid][d].append(v)
    rows = [{"id": rid, "task_type": task[rid], "human": {d: sum(v) / len(v) for d, v in ds.items()}}
            for rid, ds in per_item.items()]
    summary: dict[str, Any] = {"mode": key["mode"], "annotators": list(ratings), "n": len(rows),
                               "human": {"scores": summarize(rows, "human")}}
    names = list(ratings)
    if len(names) >= 2:
        a, b = ratings[names[0]], ratings[names[1]]
        summary["agreement"] = {}
        for d in dims:
            common = [rid for rid in a if d in a[rid] and d in b.get(rid, {})]
            summary["agreement"][d] = _kappa([a[r][d] for r in common], [b[r][d] for r in common])
    if judged:
        jrows = {r["id"]: r.get("judge_scores") or {} for r in read_jsonl(judged)}
        summary["judge_vs_human"] = {}
        for d in dims:
            jkey = "win" if key["mode"] == "pairwise" else d
            pairs = [(r["human"][d], jrows[r["id"]][jkey]) for r in rows
                     if d in r["human"] and jkey in jrows.get(r["id"], {})]
            agree = {"n": len(pairs), "pearson": pearson([p[0] for p in pairs], [p[1] for p in pairs])}
            if key["mode"] == "pairwise" and pairs:
                agree["agreement_rate"] = sum(round(h * 2) == round(j * 2) for h, j in pairs) / len(pairs)
            summary["judge_vs_human"][d] = agree
    return summary
