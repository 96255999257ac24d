"""`train.eval_generate`: generation metrics on a small eval subset at every eval step of training, logged as
`eval_gen/<task_type>/<metric>` (and `eval_gen/<metric>` over the subset) next to the channel losses.

Training does not import this package: the caller of `sftlab.train.loop.train` (the CLI, the demo, a run plan)
passes `generation_eval`, which training calls with the run's config once its data is loaded."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sftlab.data.formats import read_records
from sftlab.eval.metrics import score_rows
from sftlab.eval.stats import group_scores
from sftlab.infer import GenerationParams
from sftlab.infer.hf import HFGenerator


def generation_eval(cfg: Any) -> Callable[[Any, Any], dict[str, float]] | None:
    """The run's generation evaluation: its eval subset, fixed now, scored by `eval_generate(model, tokenizer)`
    at every eval; None when the eval set has no assistant turn to score against. (Training has checked the
    settings: data.eval and train.eval_steps are set.)"""
    records = eval_subset(cfg)
    if not records:
        return None
    return functools.partial(eval_generate, records=records, cfg=cfg)


def eval_subset(cfg: Any) -> list[dict[str, Any]]:
    """Up to eval_generate.max_samples eval records, spread evenly over task_types (first ones of each; fixed)."""
    per_task: dict[str, list[dict]] = defaultdict(list)
    for src in cfg.data.eval:
        recs, _ = read_records(src.path, src.format, task_type=src.task_type)
        for r in recs:
            if any(m["role"] == "assistant" for m in r["messages"]):
                per_task[r["task_type"]].append(r)
    limit = cfg.train.eval_generate.max_samples
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in per_task.values()):
        chosen += [v[depth] for _, v in sorted(per_task.items()) if depth < len(v)][:limit - len(chosen)]
        depth += 1
    return chosen


def eval_generate(model: Any, tokenizer: Any, records: list[dict[str, Any]], cfg: Any) -> dict[str, float]:
    """Greedy replies to each record's prompt (up to its last assistant turn), scored against that turn. A prompt
    that fills the model's context is skipped and counted (eval_gen/skipped_too_long)."""
    eg = cfg.train.eval_generate
    was_training = model.training
    gen = HFGenerator(model, tokenizer, batch_size=eg.batch_size)
    rows = []
    prompts = []
    too_long = 0
    for r in records:
        last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
        if gen.max_context and len(gen.prompt_ids(r["messages"][:last])) >= gen.max_context:
            too_long += 1  # training cuts it to max_length; generation cannot: counted, not a crash mid-run
            continue
        prompts.append(r["messages"][:last])
        rows.append({"task_type": r["task_type"], "reference": r["messages"][last].get("content") or ""})
    if not prompts:
        return {"eval_gen/skipped_too_long": float(too_long)}
    try:
        replies = gen.generate(prompts, GenerationParams(max_new_tokens=eg.max_new_tokens, temperature=0.0))
    finally:
        model.train(was_training)
    for row, rep in zip(rows, replies, strict=True):
        row["reply"] = rep[0].text.strip()
    score_rows(rows, list(eg.metrics))
    out = {}
    for task, metrics in group_scores(rows).items():
        for name, values in metrics.items():
            key = f"eval_gen/{name}" if task == "all" else f"eval_gen/{task}/{name}"
            out[key] = sum(values) / len(values)
    if too_long:
        out["eval_gen/skipped_too_long"] = float(too_long)
    return out
