"""The data flywheel: served traffic -> new training data.

serve log (export-log records) -> drop prompts already in the training set (exact + MinHash near-duplicates of
the prompt) -> drop repeated (prompt, reply) -> label each reply with its user feedback (score -1/0/1 ->
0/0.5/1) or, without feedback, the eval judge (overall / 10) -> replies scoring >= min_score that pass the
curation clean rules and were not cut at max_tokens become SFT records, the others bad cases (for review or a
teacher's rewrite); a prompt with both a good and a bad reply gives a preference pair. Every output row keeps its
provenance in meta.flywheel.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.curate.clean import clean_records
from sftlab.curate.dedup import DedupConfig, dedup_records, lsh_bands, lsh_candidates, signatures
from sftlab.curate.files import load_records
from sftlab.curate.text import prompt_text, token_hashes
from sftlab.errors import UserError
from sftlab.eval.judge import judge_single
from sftlab.serve.log import export_records
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
    """log id -> id of the most similar training record whose prompt it duplicates (exact, or shingle Jaccard >=
    threshold via MinHash LSH, the dedup step's measure). Every log prompt is checked against every training
    prompt: a keep-first dedup over train + log missed log prompts near a training prompt that was itself removed
    as a near copy of another training prompt."""
    if not train or not log:
        return {}
    cfg = DedupConfig(threshold=threshold)  # the dedup step's ngram, num_perm and seed
    th, lens = token_hashes([prompt_text(r) for r in train] + [prompt_text(r) for r in log])
    rows = np.flatnonzero(lens > 0)  # texts with tokens (signature rows) -> position in train + log
    if not len(rows):
        return {}
    flat, off, sig = signatures(th, lens[lens > 0], cfg.ngram, cfg.num_perm, cfg.seed)
    ci, cj = lsh_candidates(sig, lsh_bands(threshold, cfg.num_perm))
    n_train = len(train)
    best: dict[int, tuple[float, int]] = {}  # log position -> (similarity, train position)
    for u, v in zip(ci.tolist(), cj.tolist(), strict=True):  # u < v and train rows come first
        if not rows[u] < n_train <= rows[v]:
            continue
        a, b = set(flat[off[u]:off[u + 1]].tolist()), set(flat[off[v]:off[v + 1]].tolist())
        sim = len(a & b) / len(a | b)
        if sim >= threshold and sim > best.get(int(rows[v]), (-1.0, 0))[0]:
            best[int(rows[v])] = (sim, int(rows[u]))
    return {log[pos - n_train]["id"]: train[t]["id"] for pos, (_, t) in best.items()}


def _feedback_score(rec: dict[str, Any]) -> float | None:
    """The user's feedback score (-1/0/1) of an exported serve record, None without feedback."""
    fb = (rec.get("meta") or {}).get("feedback")
    return float(fb["score"]) if isinstance(fb, dict) and fb.get("score") is not None else None


def flywheel(log: list[dict[str, Any]], train: list[dict[str, Any]], *, judge: Any = None, min_score: float = 0.5,
             dedup_threshold: float = 0.7, clean: dict | None = None) -> FlywheelResult:
    """Route exported serve records (see the module docstring); `judge` is an sftlab.eval.judge.Judge or None."""
    if not 0.0 <= min_score <= 1.0:  # labels are in [0, 1]: outside it every reply would land on one side
        raise UserError(f"--min-score {min_score}: labels are in [0, 1] (feedback -1/0/1 -> 0/0.5/1, judge /10)")
    dropped: list[dict[str, Any]] = []
    dup_of = _in_train(log, train, dedup_threshold)
    dropped += [{"id": r["id"], "step": "flywheel", "reason": "in_train_set", "duplicate_of": dup_of[r["id"]]}
                for r in log if r["id"] in dup_of]
    rest = [r for r in log if r["id"] not in dup_of]
    if rest:
        # a repeated (prompt, reply) keeps a copy with feedback over one without (the label is what we want)
        pos = {r["id"]: k for k, r in enumerate(rest)}
        exact = dedup_records(sorted(rest, key=lambda r: _feedback_score(r) is None),
                              {"field": "both", "mode": "exact"})
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
        rows = [{"prompt": r["messages"][:-1], "reply": r["messages"][-1]["content"], "task_type": r["task_type"]}
                for r in to_judge]
        judge_info = judge_single(rows, judge)
        for r, row in zip(to_judge, rows, strict=True):
            overall = row["judge_scores"].get("overall")
            if overall is not None:
                labels[r["id"]] = (overall / 10.0, f"judge:{judge.gen.model_id}")
    # the clean rules guard the SFT data: a disliked refusal or degenerate reply stays a bad case (and a rejected reply)
    cleaned = clean_records([r for r in rest if r["id"] in labels and labels[r["id"]][0] >= min_score], clean or {})
    dropped += [{**d, "step": "flywheel", "reason": f"clean:{d['reason']}"} for d in cleaned.dropped]
    unclean = {d["id"] for d in cleaned.dropped}
    sft, bad = [], []
    by_prompt: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for r in rest:
        if r["id"] not in labels:
            reason = "unjudged" if judge is not None else "no_feedback_no_judge"
            dropped.append({"id": r["id"], "step": "flywheel", "reason": reason})
            continue
        if r["id"] in unclean:
            continue
        score, label = labels[r["id"]]
        meta = r.get("meta") or {}
        if score >= min_score and meta.get("finish_reason") == "length":
            # cut at max_tokens: as SFT data it would teach the model to stop mid-reply
            dropped.append({"id": r["id"], "step": "flywheel", "reason": "truncated"})
            continue
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
        export = export_records(path)
        if export.rejects:  # never silently: export-log writes them out with their reasons
            print(f"warning: {len(export.rejects)} rows of {path} cannot be read as records and are left out; "
                  f"`sftlab serve export-log {path} -o OUT` lists them in OUT.rejects.jsonl", file=sys.stderr)
        return export.records
    return load_records(path)
