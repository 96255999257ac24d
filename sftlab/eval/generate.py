"""Replies for evaluation (through sftlab.infer, the one generation path) and exact-match scoring per task_type."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sftlab.infer import GenerationParams, Reply


def generate_replies(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], *,
                     max_new_tokens: int = 64, batch_size: int = 32, temperature: float = 0.0,
                     tools: list | None = None) -> list[dict[str, Any]]:
    """Reply to each conversation (ending on a user turn) with an in-memory model. Returns {text, stopped} per
    conversation; `stopped` is True when the model ended its turn with the end-of-turn token by itself."""
    from sftlab.infer.hf import HFGenerator  # lazy: the hf backend imports torch and transformers

    generator = HFGenerator(model, tokenizer, batch_size=batch_size, progress=len(conversations) > batch_size)
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature)
    return [{"text": row[0].text.strip(), "stopped": row[0].finish_reason == "stop"}
            for row in generator.generate(conversations, params, tools=tools)]


def exact_match_by_task(records: list[dict[str, Any]], replies: list[Any]) -> dict[str, dict[str, float]]:
    """Exact match (whitespace-trimmed) of each reply against the record's last assistant message. A reply is a
    `sftlab.infer.Reply` or a {text, stopped} dict from generate_replies."""
    hits: dict[str, list[int]] = defaultdict(list)
    stops: dict[str, list[int]] = defaultdict(list)
    for rec, rep in zip(records, replies, strict=True):
        if isinstance(rep, Reply):
            rep = {"text": rep.text.strip(), "stopped": rep.finish_reason == "stop"}
        target = rec["messages"][-1]["content"].strip()
        hits[rec["task_type"]].append(int(rep["text"] == target))
        stops[rec["task_type"]].append(int(rep["stopped"]))
    return {t: {"exact_match": sum(v) / len(v), "stopped": sum(stops[t]) / len(stops[t]), "n": len(v)}
            for t, v in sorted(hits.items())}
