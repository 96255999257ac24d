"""`sftlab eval`: eval sets → replies (through sftlab.infer) → metrics and judges → OUT/{predictions.jsonl,
summary.json, bad_cases.jsonl, report.html}. Resumable: replies already in OUT/predictions.jsonl are kept."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sftlab.data.formats import read_records
from sftlab.errors import UserError
from sftlab.eval.benchmarks import check_benchmarks, run_benchmarks
from sftlab.eval.config import EvalConfig
from sftlab.eval.judge import ReferenceMatchJudge, run_judge
from sftlab.eval.metrics import METRICS, make_checker, score_rows
from sftlab.eval.report import write_eval_report
from sftlab.eval.stats import summarize
from sftlab.infer import GenerationParams, load_generator
from sftlab.io import JsonlAppender, progress_bar, read_jsonl, write_json, write_jsonl

SUMMARY_VERSION = 1


# ---- eval items ------------------------------------------------------------------------------------------------

def load_items(cfg: EvalConfig) -> list[dict[str, Any]]:
    """Eval items: one per record (prompt = messages up to the last assistant reply, which is the reference), or for
    prompt-only sets (mt_bench `turns`) one per user turn, answered turn by turn with the model's own replies."""
    items: list[dict[str, Any]] = []
    names: dict[str, int] = {}
    for k, s in enumerate(cfg.sets()):
        name = s.name or Path(s.path).stem
        if name in names:  # item ids are "<set>:<record id>": two sets of one name would overwrite each other
            raise UserError(f"data[{k}] ({s.path}): the set name {name!r} is taken by data[{names[name]}]; give "
                            f"each set its own name, e.g. {{path: {s.path}, name: {name}_{k}}}")
        names[name] = k
        recs, _ = read_records(s.path, s.format, task_type=s.task_type)
        if cfg.limit:
            recs = recs[:cfg.limit]
        for rec in recs:
            msgs = rec["messages"]
            base = {"set": name, "record_id": rec["id"], "task_type": rec["task_type"], "tools": rec.get("tools")}
            if rec.get("meta", {}).get("prompt_only"):
                refs = rec["meta"].get("reference") or []  # mt_bench: one reference answer per turn
                refs = [refs] if isinstance(refs, str) else refs
                users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
                for k, at in enumerate(users):
                    items.append({**base, "id": f"{name}:{rec['id']}#t{k + 1}", "turn": k + 1,
                                  "prompt": msgs[:at + 1] if k == 0 else [msgs[at]],
                                  "reference": refs[k] if k < len(refs) else None,
                                  "history_from": f"{name}:{rec['id']}#t{k}" if k else None})
            else:
                last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
                items.append({**base, "id": f"{name}:{rec['id']}", "turn": 1, "prompt": msgs[:last],
                              "reference": msgs[last].get("content"), "history_from": None})
    return items


def _conversation(item: dict[str, Any], done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The full prompt of an item: for a later turn of a prompt-only record, the earlier turns with the model's
    own replies, then this turn's user message."""
    if not item["history_from"]:
        return item["prompt"]
    prev = done[item["history_from"]]
    return prev["prompt"] + [{"role": "assistant", "content": prev["reply"]}] + item["prompt"]


# What generate_rows writes; scores, judge results and baseline replies of an earlier run are not kept from the file.
GENERATED_FIELDS = ("id", "set", "record_id", "turn", "task_type", "reference", "prompt", "reply", "finish_reason",
                    "prompt_tokens", "completion_tokens", "generated_by")


def generate_rows(generator: Any, items: list[dict[str, Any]], cfg: EvalConfig, out_path: Path,
                  label: str = "generate") -> list[dict[str, Any]]:
    """Replies for every item, appended to out_path as they come (kept on rerun); later turns wait for earlier ones."""
    g = cfg.generation
    params = GenerationParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                              seed=g.seed if g.seed is not None else cfg.seed)
    # Replies are reused only when made by the same model with the same decoding params.
    fingerprint = hashlib.sha256(json.dumps([generator.model_id, asdict(params)], sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
    done: dict[str, dict[str, Any]] = {}
    if out_path.exists():
        for row in read_jsonl(out_path):
            if row.get("reply") is not None and row.get("generated_by") == fingerprint:
                done[row["id"]] = {k: v for k, v in row.items() if k in GENERATED_FIELDS}  # not last run's scores
        # A kept reply must answer the item's prompt as the data has it now (items are in turn order, so an earlier
        # turn is checked first); the reference and task_type always come from the data, never from the old row.
        for it in items:
            row = done.get(it["id"])
            if row is None:
                continue
            if (it["history_from"] and it["history_from"] not in done) or row["prompt"] != _conversation(it, done):
                del done[it["id"]]
            else:
                row.update({k: it[k] for k in ("set", "record_id", "turn", "task_type", "reference")})
        write_jsonl(list(done.values()), out_path, allow_nan=True)  # drop stale replies before appending
    todo = [it for it in items if it["id"] not in done]
    with JsonlAppender(out_path, allow_nan=True) as replies_file, progress_bar() as progress:
        task = progress.add_task(f"{label} ({len(done)} already done)", total=len(todo))
        while todo:
            ready = [it for it in todo if not it["history_from"] or it["history_from"] in done]
            if not ready:
                raise UserError(f"eval items wait on turns that were never generated (first: {todo[0]['id']})")
            by_tools: dict[str, list[dict]] = defaultdict(list)
            for it in ready:
                by_tools[json.dumps(it["tools"], sort_keys=True)].append(it)
            for group in by_tools.values():
                for start in range(0, len(group), g.batch_size):
                    chunk = group[start:start + g.batch_size]
                    convs = [_conversation(it, done) for it in chunk]
                    replies = _generate_naming_item(generator, chunk, convs, params)
                    rows = []
                    for it, conv, rep in zip(chunk, convs, replies, strict=True):
                        r = rep[0]
                        row = {k: it[k] for k in ("id", "set", "record_id", "turn", "task_type", "reference")}
                        row.update(prompt=conv, reply=r.text, finish_reason=r.finish_reason,
                                   prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                                   generated_by=fingerprint)
                        done[it["id"]] = row
                        rows.append(row)
                    replies_file.append(rows)
                    progress.advance(task, len(chunk))
            ids = {it["id"] for it in ready}
            todo = [it for it in todo if it["id"] not in ids]
    return [done[it["id"]] for it in items]


def _generate_naming_item(generator: Any, chunk: list[dict[str, Any]], convs: list[list[dict]], params: Any
                          ) -> list[list[Any]]:
    """generator.generate on one chunk; when it refuses a conversation (a prompt above the model's context, a
    template that rejects it), the error names the eval item instead of its position in the chunk."""
    try:
        return generator.generate(convs, params, tools=chunk[0]["tools"])
    except UserError as e:
        if len(chunk) == 1:
            raise UserError(f"eval item {chunk[0]['id']}: {str(e).removeprefix('conversation 0: ')}") from None
        for it, conv in zip(chunk, convs, strict=True):  # find the item the backend refuses
            _generate_naming_item(generator, [it], [conv], params)
        raise


# ---- scoring and outputs ---------------------------------------------------------------------------------------

def primary_score(row: dict[str, Any]) -> float | None:
    """The score bad cases are ranked by: the judge's overall / win, else the first reference metric."""
    js = row.get("judge_scores") or {}
    for k in ("overall", "win"):
        if js.get(k) is not None:
            return js[k]
    scores = row.get("scores") or {}
    for k in ("exact_match", "rougeL", "chrf", "bleu"):
        if k in scores:
            return scores[k]
    return next(iter(scores.values()), None)


def bad_cases(rows: list[dict[str, Any]], per_task: int) -> list[dict[str, Any]]:
    """The lowest-scoring rows of each task_type (below its best score), plus every row the judge could not grade."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    out = []
    for r in rows:
        if r.get("judge") and not r.get("judge_scores"):
            out.append({**r, "bad_reason": "judge_unparseable"})
        elif primary_score(r) is not None:
            by_task[r["task_type"]].append(r)
    for task in sorted(by_task):
        best = max(primary_score(r) for r in by_task[task])  # a reply at the task's best score is not a bad case
        worst = sorted((r for r in by_task[task] if primary_score(r) < best), key=primary_score)[:per_task]
        out += [{**r, "bad_reason": "lowest_score", "primary_score": primary_score(r)} for r in worst]
    return out


def build_summary(rows: list[dict[str, Any]], judge: dict[str, Any] | None, info: dict[str, Any]) -> dict[str, Any]:
    """The stable summary.json layout (documented in docs/evaluation.md)."""
    by_task: dict[str, int] = defaultdict(int)
    for r in rows:
        by_task[r["task_type"]] += 1
    summary = {"version": SUMMARY_VERSION, **info, "n": len(rows), "task_types": dict(sorted(by_task.items())),
               "metrics": summarize(rows, "scores")}
    if judge is not None:
        summary["judge"] = judge
        overall = judge["scores"].get("all", {}).get("overall" if judge["mode"] == "single" else "win")
        summary["overall"] = overall
    return summary


def finish(rows: list[dict[str, Any]], out: Path, cfg_dict: dict[str, Any], *, metrics: list[str],
           checkers: list[dict] = (), normalization: dict | None = None, judge_cfg: dict | None = None,
           info: dict[str, Any] | None = None, n_bad: int = 5, generator: Any = None) -> dict[str, Any]:
    """Score, judge, and write predictions.jsonl, summary.json, bad_cases.jsonl and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["scores"] = {}
    score_rows(rows, metrics, checkers, normalization)
    judge = run_judge(rows, judge_cfg, generator) if judge_cfg else None
    summary = build_summary(rows, judge, {"config": cfg_dict, **(info or {})})
    write_jsonl(rows, out / "predictions.jsonl", allow_nan=True)
    write_jsonl(bad_cases(rows, n_bad), out / "bad_cases.jsonl", allow_nan=True)
    write_json(summary, out / "summary.json", allow_nan=True)
    write_eval_report(out)
    return summary


def _load_model(model: str | dict, backend: str, batch_size: int = 32) -> Any:
    if isinstance(model, dict) or backend == "openai":
        return load_generator(model, backend=backend)
    if (Path(model) / "final").is_dir() and not (Path(model) / "config.json").exists():
        model = str(Path(model) / "final")  # a run dir: evaluate its final model
    return load_generator(model, backend=backend, **({"batch_size": batch_size} if backend in ("auto", "hf") else {}))


def _baseline_replies(cfg: EvalConfig, items: list[dict], out: Path) -> dict[str, str]:
    base = cfg.baseline
    if isinstance(base, str) and base.endswith(".jsonl") and Path(base).is_file():
        rows = read_jsonl(base)
        return {r["id"]: r["reply"] for r in rows if r.get("reply") is not None}
    gen = _load_model(base, cfg.backend, cfg.generation.batch_size)
    rows = generate_rows(gen, items, cfg, out / "baseline_predictions.jsonl", label="baseline")
    return {r["id"]: r["reply"] for r in rows}


def _check_scoring(cfg: EvalConfig, judge_generator: Any = None) -> None:
    """Errors in metrics, checkers and the judge section, before any reply is generated (not after an hour of it)."""
    for m in cfg.metrics:
        if m not in METRICS:
            raise UserError(f"unknown metric {m!r} (known: {', '.join(METRICS)}; custom checks go in 'checkers')")
    for spec in cfg.checkers:
        make_checker(spec)
    if isinstance(cfg.baseline, str) and cfg.baseline.endswith(".jsonl") and not Path(cfg.baseline).is_file():
        raise UserError(f"baseline: predictions file not found: {cfg.baseline}")
    if cfg.judge is not None:
        if judge_generator is None and not (cfg.judge.base_url and cfg.judge.model):
            raise UserError("judge: set judge.base_url and judge.model (an OpenAI-compatible endpoint)")
        if cfg.judge.mode == "pairwise" and cfg.baseline is None:
            raise UserError("judge.mode=pairwise needs `baseline` (a predictions.jsonl or a model)")
        key_env = cfg.judge.api_key_env
        if judge_generator is None and key_env and not os.environ.get(key_env):  # the judge client checks it too late
            raise UserError(f"judge: environment variable {key_env} (api_key_env) is not set: export the API key there")


def run_eval(cfg: EvalConfig, judge_generator: Any = None) -> dict[str, Any]:
    """The whole `sftlab eval CONFIG` run; returns summary.json's content."""
    t0 = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.benchmarks is not None:
        check_benchmarks(cfg.benchmarks, cfg.model)  # refused (install line, unknown task) before any generation
        if not cfg.data:
            return _benchmarks_only(cfg, out, t0)
    items = load_items(cfg)
    if not items:
        raise UserError("no eval items: the data sets are empty")
    _check_scoring(cfg, judge_generator)
    gen = _load_model(cfg.model, cfg.backend, cfg.generation.batch_size)
    partial = out / "predictions.jsonl"
    t_gen = time.time()
    rows = generate_rows(gen, items, cfg, partial)
    gen_s = time.time() - t_gen
    if cfg.baseline is not None:
        base = _baseline_replies(cfg, items, out)
        for r in rows:
            r["baseline_reply"] = base.get(r["id"])
    judge_cfg = cfg.judge.as_dict() if cfg.judge else None
    info = {"model": getattr(gen, "model_id", str(cfg.model)), "sets": sorted({i["set"] for i in items}),
            "timing": {"generate_s": round(gen_s, 2)}}
    if cfg.benchmarks is not None:
        del gen  # the harness loads its own copy of the model
        info["benchmarks"] = run_benchmarks(cfg.benchmarks, cfg.model, out)
    summary = finish(rows, out, cfg.model_dump(mode="json"), metrics=cfg.metrics, checkers=cfg.checkers,
                     normalization=cfg.normalization.model_dump(), judge_cfg=judge_cfg, info=info,
                     n_bad=cfg.bad_cases, generator=judge_generator)
    summary["timing"]["total_s"] = round(time.time() - t0, 2)
    write_json(summary, out / "summary.json", allow_nan=True)
    return summary


def _benchmarks_only(cfg: EvalConfig, out: Path, t0: float) -> dict[str, Any]:
    """An eval config with `benchmarks:` and no data: summary.json and report.html hold the harness's results."""
    bench = run_benchmarks(cfg.benchmarks, cfg.model, out)
    summary = build_summary([], None, {"config": cfg.model_dump(mode="json"), "model": str(cfg.model),
                                       "benchmarks": bench, "timing": {"total_s": round(time.time() - t0, 2)}})
    write_json(summary, out / "summary.json", allow_nan=True)
    write_eval_report(out)
    return summary


def rows_from_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a user's predictions file ({"id", "task_type", "reply", "reference", "prompt"?} per line)."""
    rows = read_jsonl(path)
    seen: dict[Any, int] = {}
    for i, r in enumerate(rows, 1):
        for key in ("id", "reply"):
            if r.get(key) is None:
                raise UserError(f"{path}: line {i}: missing field '{key}' (each line needs id, task_type, reply, "
                                "reference)")
        if r["id"] in seen:  # replies are matched by id (baseline, compare, sheets): a second one would be lost
            raise UserError(f"{path}: line {i}: field 'id': {r['id']!r} is also the id of line {seen[r['id']]}")
        seen[r["id"]] = i
        r.setdefault("task_type", "default")
        p = r.get("prompt")
        r["prompt"] = [{"role": "user", "content": p}] if isinstance(p, str) else (p or [])
    return rows


def score_predictions(pred: str | Path, out: str | Path, metrics: list[str]) -> dict[str, Any]:
    """`sftlab eval metrics`: score the replies of a predictions file against its references, without generating;
    writes OUT like an eval run and returns summary.json's content."""
    rows = rows_from_predictions(pred)
    return finish(rows, Path(out), {"pred": str(pred), "metrics": metrics}, metrics=metrics,
                  info={"model": str(pred)})


def judge_predictions(pred: str | Path, out: str | Path, judge_cfg: dict[str, Any],
                      baseline: str | Path | None = None) -> dict[str, Any]:
    """`sftlab eval judge`: judge the replies of a predictions file (single-answer, or pairwise against the
    baseline file's replies) without generating; writes OUT like an eval run and returns summary.json's content."""
    if not judge_cfg.get("base_url"):
        raise UserError("eval judge: give the judge endpoint, e.g. base_url=http://host/v1 model=NAME (or --config)")
    rows = rows_from_predictions(pred)
    for i, r in enumerate(rows, 1):  # without the question the judge would grade replies to nothing
        if not r["prompt"]:
            raise UserError(f"{pred}: line {i}: missing field 'prompt' (the question the reply answers: a string "
                            "or a message list)")
    if baseline is not None:
        base = {r["id"]: r["reply"] for r in rows_from_predictions(baseline)}
        for r in rows:
            r["baseline_reply"] = base.get(r["id"])
    return finish(rows, Path(out), {"pred": str(pred), "judge": judge_cfg}, metrics=[], judge_cfg=judge_cfg,
                  info={"model": str(pred)})


def compare_models_on_records(records_path: str | Path, model: str, baseline: str, out: str | Path,
                              max_new_tokens: int = 32) -> dict[str, Any]:
    """Pairwise eval of `model` vs `baseline` on a records file with right answers, judged by the rule-based
    ReferenceMatchJudge (no LLM needed): the demo's closing eval."""
    out = Path(out)
    cfg = EvalConfig(model=str(model), baseline=str(baseline), data=[str(records_path)], output_dir=str(out),
                     metrics=["exact_match"], generation={"max_new_tokens": max_new_tokens},
                     judge={"mode": "pairwise", "dimensions": ["correctness"],
                            "cache": str(out / "judge_cache.sqlite")})
    return run_eval(cfg, judge_generator=ReferenceMatchJudge())
