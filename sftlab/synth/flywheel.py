"""The data flywheel: served traffic -> new training data.

serve log (export-log records) -> drop prompts already in the training set (exact + MinHash near-duplicates of
the prompt) -> the curation clean rules -> drop repeated (prompt, reply) -> label each reply with its user
feedback (score -1/0/1 -> 0/0.5/1) or, without feedback, the eval judge (overall / 10) -> replies scoring
>= min_score become SFT records, the others bad cases (for review or a teacher's rewrite); a prompt with both
a good and a bad reply gives a preference pair. Every output row keeps its provenance in meta.flywheel.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.synth.best_of_n import format_pair


@dataclass
class FlywheelResult:
    sft: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    bad_cases: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def _prompt_key(rec: dict[str, Any]) -> str:
    return json.dumps(rec["messages"][:-1], ensure_ascii=False, sort_keys=True)


def _in_train(log: list[dict], train: list[dict], threshold: float) -> dict[str, str]:
    """log id -> id of the training record whose prompt it (near-)duplicates, directly or through an identical log
    prompt that does (the n choices of one request share their prompt): the root of its dedup cluster."""
    from sftlab.data.curate.dedup import dedup_records

    if not train or not log:
        return {}
    both = [{**r, "id": f"train\x00{r['id']}"} for r in train] + [{**r, "id": f"log\x00{r['id']}"} for r in log]
    res = dedup_records(both, {"field": "prompt", "mode": "near", "threshold": threshold, "keep": "first"})
    return {d["id"].split("\x00", 1)[1]: d["cluster"].split("\x00", 1)[1] for d in res.dropped
            if d["id"].startswith("log\x00") and d["cluster"].startswith("train\x00")}


def _feedback_score(rec: dict[str, Any]) -> float | None:
    """The user's feedback score (-1/0/1) of an exported serve record, None without feedback."""
    fb = (rec.get("meta") or {}).get("feedback")
    return float(fb["score"]) if isinstance(fb, dict) and fb.get("score") is not None else None


def flywheel(log: list[dict[str, Any]], train: list[dict[str, Any]], *, judge: Any = None, min_score: float = 0.5,
             dedup_threshold: float = 0.7, clean: dict | None = None) -> FlywheelResult:
    """Route exported serve records (see the module docstring); `judge` is an sftlab.eval.judge.Judge or None."""
    from sftlab.data.curate.clean import clean_records
    from sftlab.data.curate.dedup import dedup_records
    from sftlab.errors import UserError

    if not 0.0 <= min_score <= 1.0:  # labels are in [0, 1]: outside it every reply would land on one side
        raise UserError(f"--min-score {min_score}: labels are in [0, 1] (feedback -1/0/1 -> 0/0.5/1, judge /10)")
    dropped: list[dict[str, Any]] = []
    dup_of = _in_train(log, train, dedup_threshold)
    dropped += [{"id": r["id"], "step": "flywheel", "reason": "in_train_set", "duplicate_of": dup_of[r["id"]]}
                for r in log if r["id"] in dup_of]
    rest = [r for r in log if r["id"] not in dup_of]
    cleaned = clean_records(rest, clean or {})
    dropped += [{**d, "step": "flywheel", "reason": f"clean:{d['reason']}"} for d in cleaned.dropped]
    rest = cleaned.kept
    if rest:
        # a repeated (prompt, reply) keeps a copy with feedback over one without (the label is what we want)
        pos = {r["id"]: k for k, r in enumerate(rest)}
        exact = dedup_records(sorted(rest, key=lambda r: _feedback_score(r) is None), {"field": "both", "mode": "exact"})
        dropped += [{**d, "step": "flywheel", "reason": "duplicate_in_log"} for d in exact.dropped]
        rest = sorted(exact.kept, key=lambda r: pos[r["id"]])

    labels: dict[str, tuple[float, str]] = {}
    to_judge = []
    for r in rest:
        if (fb := _feedback_score(r)) is not None:
            labels[r["id"]] = ((fb + 1) / 2, "feedback")
        else:
            to_judge.append(r)
    judge_info = None
    if to_judge and judge is not None:
        from sftlab.eval.judge import judge_single

        rows = [{"prompt": r["messages"][:-1], "reply": r["messages"][-1]["content"], "task_type": r["task_type"]}
                for r in to_judge]
        judge_info = judge_single(rows, judge)
        for r, row in zip(to_judge, rows, strict=True):
            overall = row["judge_scores"].get("overall")
            if overall is not None:
                labels[r["id"]] = (overall / 10.0, f"judge:{judge.gen.model_id}")
    sft, bad = [], []
    by_prompt: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for r in rest:
        if r["id"] not in labels:
            reason = "unjudged" if judge is not None else "no_feedback_no_judge"
            dropped.append({"id": r["id"], "step": "flywheel", "reason": reason})
            continue
        score, label = labels[r["id"]]
        meta = r.get("meta") or {}
        prov = {"request_id": meta.get("response_id", r["id"]), "date": meta.get("created"), "score": score,
                "label": label, "source_model": meta.get("model") or r.get("source")}
        out = {**r, "meta": {**meta, "flywheel": prov}}
        (sft if score >= min_score else bad).append(out)
        by_prompt[_prompt_key(r)].append((score, out))
    pairs = []
    for group in by_prompt.values():
        good = [g for g in group if g[0] >= min_score]
        worse = [g for g in group if g[0] < min_score]
        if good and worse:
            (cs, c), (rs, rj) = max(good, key=lambda g: g[0]), min(worse, key=lambda g: g[0])
            meta = {"step": "flywheel", "chosen_id": c["id"], "rejected_id": rj["id"], "chosen_score": cs,
                    "rejected_score": rs, "margin": cs - rs, "chosen": c["meta"]["flywheel"],
                    "rejected": rj["meta"]["flywheel"]}
            pairs.append(format_pair(c["messages"][:-1], c["messages"][-1]["content"], rj["messages"][-1]["content"],
                                     "trl", meta, c.get("tools")))
    summary = {"step": "flywheel", "log_records": len(log), "train_records": len(train), "min_score": min_score,
               "sft": len(sft), "bad_cases": len(bad), "pairs": len(pairs),
               "dropped": dict(Counter(d["reason"] for d in dropped)),
               "labels": dict(Counter(v[1].split(":")[0] for v in labels.values())),
               "judge": judge_info and {k: judge_info[k] for k in ("model", "requests", "parse_failures")}}
    return FlywheelResult(sft, pairs, bad, dropped, summary)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records from a serve log: the SQLite file itself, or `sftlab serve export-log` output."""
    path = Path(path)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        from sftlab.serve.log import export_records

        return export_records(path)[0]
    from sftlab.data.curate.io import load_records

    return load_records(path)
