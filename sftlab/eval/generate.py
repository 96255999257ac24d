"""Generation with the model's chat template, and exact-match scoring per task_type."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch


def generate_replies(model: Any, tokenizer: Any, conversations: list[list[dict[str, Any]]], *,
                     max_new_tokens: int = 64, batch_size: int = 32, temperature: float = 0.0,
                     tools: list | None = None) -> list[dict[str, Any]]:
    """Reply to each conversation (ending on a user turn). Returns {text, stopped} per conversation;
    `stopped` is True when the model ended its turn with the end-of-turn token by itself."""
    from sftlab.data.render import eot_token_ids

    eot = eot_token_ids(tokenizer)
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[dict[str, Any]] = []
    model.eval()
    try:
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(c, tools=tools, tokenize=False, add_generation_prompt=True)
                     for c in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": eot,
                                      "pad_token_id": tokenizer.pad_token_id}
            kwargs.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
            with torch.no_grad():
                gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in new.tolist():
                stop_at = next((i for i, t in enumerate(row) if t in eot), None)
                body = row[:stop_at] if stop_at is not None else row
                out.append({"text": tokenizer.decode(body, skip_special_tokens=True).strip(),
                            "stopped": stop_at is not None})
    finally:
        tokenizer.padding_side = old_side
    return out


def exact_match_by_task(records: list[dict[str, Any]], replies: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Exact match (whitespace-trimmed) of each reply against the record's last assistant message."""
    hits: dict[str, list[int]] = defaultdict(list)
    stops: dict[str, list[int]] = defaultdict(list)
    for rec, rep in zip(records, replies, strict=True):
        target = rec["messages"][-1]["content"].strip()
        hits[rec["task_type"]].append(int(rep["text"] == target))
        stops[rec["task_type"]].append(int(rep["stopped"]))
    return {t: {"exact_match": sum(v) / len(v), "stopped": sum(stops[t]) / len(stops[t]), "n": len(v)}
            for t, v in sorted(hits.items())}
