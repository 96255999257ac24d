"""The Eval page: an eval output dir (`sftlab eval`) as tables — task_type × metric/dimension with confidence
intervals, the judge-bias panel, bad cases with filters, predictions a page at a time, and two dirs' predictions side
by side with the judge's rationale.

Eval dirs written by an older sftlab (another summary version, fields missing, unreadable lines) are shown as far as
they can be, with notes saying what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.eval.report import score_table
from sftlab.eval.run import SUMMARY_VERSION

PAGE = 50


@dataclass
class EvalView:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pairwise(self) -> bool:
        return any(r.get("baseline_reply") is not None for r in self.predictions[:50])

    def task_types(self) -> list[str]:
        return sorted({str(r.get("task_type", "default")) for r in self.predictions})

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): r for r in self.predictions}


def is_eval_dir(path: Path) -> bool:
    """What `sftlab eval` writes (predictions as they are generated, then summary.json and bad_cases.jsonl)."""
    return (path / "predictions.jsonl").is_file() or ((path / "summary.json").is_file()
                                                      and (path / "bad_cases.jsonl").is_file())


def _read_rows(path: Path, notes: list[str], need: tuple[str, ...] = ("id", "reply")) -> list[dict[str, Any]]:
    """The rows of a JSONL output; unreadable lines and rows without the fields the page needs become one note."""
    if not path.is_file():
        return []
    rows, bad, missing = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            if not isinstance(row, dict) or any(row.get(k) is None for k in need):
                missing.append(i)
                continue
            row["id"] = str(row["id"])
            rows.append(row)
    if bad:
        notes.append(f"{path.name}: {len(bad)} line(s) are not valid JSON and were skipped (line "
                     f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''})")
    if missing:
        notes.append(f"{path.name}: {len(missing)} row(s) lack {' or '.join(need)} and were skipped (line "
                     f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''})")
    return rows


def load_eval(path: Path) -> EvalView:
    view = EvalView(path=path)
    if not path.is_dir():
        view.notes.append(f"{path}: the directory is gone")
        return view
    spath = path / "summary.json"
    if not spath.is_file():
        view.notes.append("no summary.json: the eval did not finish (replies in predictions.jsonl are kept; rerun "
                          "`sftlab eval` with the same output dir to score them)")
    else:
        try:
            summary = json.loads(spath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            summary = None
            view.notes.append(f"summary.json is not valid JSON ({e}); scores are not shown")
        if isinstance(summary, dict):
            view.summary = summary
            view.notes += _version_notes(summary)
        elif summary is not None:
            view.notes.append("summary.json is not a JSON object; scores are not shown")
    view.predictions = _read_rows(path / "predictions.jsonl", view.notes)
    view.bad = _read_rows(path / "bad_cases.jsonl", view.notes)
    return view


def _version_notes(summary: dict[str, Any]) -> list[str]:
    version = summary.get("version")
    notes = []
    if version is None:
        notes.append(f"summary.json has no 'version': written by an sftlab older than summary version "
                     f"{SUMMARY_VERSION}; fields this page reads may be missing (rerun `sftlab eval` with the same "
                     "output dir to rewrite it: replies are kept)")
    elif version != SUMMARY_VERSION:
        notes.append(f"summary.json is version {version}, this sftlab reads version {SUMMARY_VERSION}: some "
                     "numbers may be missing or mean something else")
    if "metrics" not in summary and "judge" not in summary:
        notes.append("summary.json holds neither 'metrics' nor 'judge': no scores to show")
    return notes


def scores(view: EvalView) -> tuple[list[str], list[list[Any]]]:
    """score_table of the summary, or a note when its layout is not the one this version writes."""
    try:
        return score_table(view.summary)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        view.notes.append(f"the score table could not be read from summary.json ({type(e).__name__}: {e}; an eval "
                          "dir from an older version?)")
        return [], []


LC_CAVEATS = (
    "The length-controlled win rate is a one-feature logistic regression of the outcome on tanh(Δlength/sd) "
    "(AlpacaEval 2 style), read at equal length. It removes only the part of the judge's preference that length "
    "explains linearly; with few items its uncertainty is large (it has no CI here), and where longer replies are "
    "really better it removes a real effect too.")


def judge_panel(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The judge statistics and warnings worth reading before trusting the scores."""
    j = summary.get("judge")
    if not isinstance(j, dict):
        return None
    pair = j.get("pairwise") if isinstance(j.get("pairwise"), dict) else {}
    rows = [(k, j.get(k)) for k in ("mode", "model", "dimensions", "requests", "cache_hits", "parse_failures",
                                     "refused", "unjudged", "repeats", "repeats_std", "length_corr") if k in j]
    rows += [(k, v) for k, v in pair.items()]
    warnings = []
    sc, fp, lc = pair.get("swap_consistency"), pair.get("first_position_win_rate"), pair.get("length_corr")
    if isinstance(sc, (int, float)) and sc < 0.8:
        warnings.append(f"swap consistency {sc:.2f}: the verdict changed with the order for {1 - sc:.0%} of the "
                        "items (they count as ties)")
    if isinstance(fp, (int, float)) and abs(fp - 0.5) > 0.15:
        warnings.append(f"first-position win rate {fp:.2f}: the judge prefers the reply shown "
                        f"{'first' if fp > 0.5 else 'second'}")
    length = lc if lc is not None else j.get("length_corr")
    if isinstance(length, (int, float)) and abs(length) > 0.3:
        warnings.append(f"length correlation {length:+.2f}: the verdicts follow reply length; read the LC win "
                        "rate next to the win rate")
    if j.get("unjudged"):
        warnings.append(f"{j['unjudged']} item(s) unjudged (unreadable verdicts or refused requests): left out of "
                        "the means")
    return {"rows": rows, "warnings": warnings, "lc": pair.get("lc_win_rate"), "win": pair.get("win_rate"),
            "caveats": LC_CAVEATS if "lc_win_rate" in pair else None}


def primary(row: dict[str, Any]) -> float | None:
    """The score a row is ranked by (the judge's overall / win, else the first reference metric)."""
    if isinstance(row.get("primary_score"), (int, float)):
        return row["primary_score"]
    js = row.get("judge_scores") or {}
    for k in ("overall", "win"):
        if isinstance(js.get(k), (int, float)):
            return js[k]
    sc = row.get("scores") or {}
    return next((v for v in sc.values() if isinstance(v, (int, float))), None)


def rationale(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) of the judge's last reply per request: pairwise both orders, single each repeat."""
    raw = (row.get("judge") or {}).get("raw")
    if isinstance(raw, dict):
        return [(k.replace("_", " "), v[-1]) for k, v in raw.items() if isinstance(v, list) and v]
    if isinstance(raw, list):
        return [(f"repeat {i + 1}" if len(raw) > 1 else "judge", tries[-1]) for i, tries in enumerate(raw)
                if isinstance(tries, list) and tries]
    return []


def filter_rows(rows: list[dict[str, Any]], task_type: str = "", reason: str = "", q: str = "",
                order: str = "") -> list[dict[str, Any]]:
    q = q.lower().strip()
    out = [r for r in rows if (not task_type or r.get("task_type") == task_type)
           and (not reason or r.get("bad_reason") == reason)
           and (not q or q in json.dumps([r.get("prompt"), r.get("reply"), r.get("reference")],
                                         ensure_ascii=False).lower())]
    if order == "score":
        out.sort(key=lambda r: (primary(r) is None, primary(r) if primary(r) is not None else 0.0))
    return out


def paginate(rows: list[Any], number: int, size: int = PAGE) -> tuple[list[Any], int, int]:
    """(the rows of page `number` (1-based, clipped), that page, the number of pages)."""
    pages = max(1, -(-len(rows) // size))
    number = min(max(1, number), pages)
    return rows[(number - 1) * size:number * size], number, pages


def side_by_side(a: EvalView, b: EvalView) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row of a, row of b) for the item ids both dirs answered, in a's order."""
    bb = b.by_id()
    return [(r, bb[r["id"]]) for r in a.predictions if r["id"] in bb]
