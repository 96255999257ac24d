"""Best-of-N: sample N replies per prompt, score them with a verifier, keep the best as SFT data and pair the
best with the worst as a preference pair.

A prompt gives an SFT record when its best reply scores >= threshold (ties: the first sampled), and a pair when
its worst reply also scores < threshold and the margin is >= min_margin: so with a 0/1 rule verifier every
chosen reply passed and every rejected one failed. Truncated replies (finish_reason "length") are never chosen;
replies the verifier could not score (NaN: an unreadable judge verdict) are neither chosen nor rejected.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sftlab.errors import UserError
from sftlab.infer import GenerationParams, Generator
from sftlab.synth.teacher import ask, message_text, record_tools, reply_message, teacher_id
from sftlab.synth.verifiers import Verifier

PAIRS_FORMATS = ("trl", "llamafactory")
_SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


@dataclass
class BestOfNResult:
    sft: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def split_prompt(rec: dict[str, Any]) -> tuple[list[dict], str | None]:
    """(prompt messages, reference): the reference is `reference`/`meta.reference`, else the last assistant turn."""
    msgs = rec["messages"]
    ref = rec.get("reference", (rec.get("meta") or {}).get("reference"))
    if isinstance(ref, int | float) and not isinstance(ref, bool):
        ref = str(ref)  # JSON numbers ("reference": 42, GSM8K style): the checkers read text, and 0 is a reference
    elif ref is not None and not isinstance(ref, str):
        raise UserError(f"record {rec['id']!r}, field 'reference': must be a string or a number, "
                        f"got {type(ref).__name__}")
    if msgs and msgs[-1]["role"] == "assistant":
        return msgs[:-1], ref if ref is not None else msgs[-1].get("content")
    return msgs, ref


def best_of_n(records: list[dict[str, Any]], teacher: Generator, verifier: Verifier, *, n: int = 4,
              temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
              threshold: float = 1.0, min_margin: float = 1e-9, pairs_format: str = "trl",
              batch_size: int = 64) -> BestOfNResult:
    """Run best-of-n over prompt records (see the module docstring)."""
    if pairs_format not in PAIRS_FORMATS:
        raise UserError(f"--pairs-format {pairs_format!r}: use one of {', '.join(PAIRS_FORMATS)}")
    if not 0.0 <= threshold <= 1.0:  # scores are in [0, 1]: above 1 nothing passes, below 0 everything does
        raise UserError(f"--threshold {threshold}: verifier scores are in [0, 1]")
    if n < 2:
        raise UserError(f"-n must be >= 2 for best-of-n (got {n}): pairs need two replies to compare")
    start = time.perf_counter()
    dropped: list[dict[str, Any]] = []
    todo: list[tuple[dict, list[dict], str | None]] = []
    tools: list[list[dict] | None] = []  # per todo entry, in the shape the teacher takes
    for rec in records:
        prompt, ref = split_prompt(rec)
        if not prompt or prompt[-1]["role"] not in ("user", "tool"):
            dropped.append({"id": rec["id"], "step": "best_of_n", "reason": "no_prompt"})
        elif verifier.needs_reference and not ref:
            dropped.append({"id": rec["id"], "step": "best_of_n", "reason": "no_reference"})
        else:
            todo.append((rec, prompt, ref))
            tools.append(record_tools(rec))

    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed)
    replies = ask(teacher, [p for _, p, _ in todo], params, batch_size, label=f"best-of-{n}", tools=tools)
    gen_s = time.perf_counter() - start
    flat = [(i, r) for i, reps in enumerate(replies) for r in reps]
    scores = verifier.score([todo[i][1] for i, _ in flat], [reply_message(r) for _, r in flat],
                            [todo[i][2] for i, _ in flat], [todo[i][0] for i, _ in flat])
    per_prompt: list[list[tuple[float, Any]]] = [[] for _ in todo]
    for (i, r), s in zip(flat, scores, strict=True):
        per_prompt[i].append((s, r))

    source = teacher_id(teacher)
    sft, pairs = [], []
    counts: Counter = Counter()
    for (rec, prompt, _ref), scored in zip(todo, per_prompt, strict=True):
        all_scores = [None if math.isnan(s) else s for s, _ in scored]  # None: the verifier gave no score
        graded = [(s, k) for k, s in enumerate(all_scores) if s is not None]
        choosable = [(s, k) for s, k in graded if scored[k][1].finish_reason != "length"]
        best_s, best_k = max(choosable, key=lambda x: (x[0], -x[1])) if choosable else (None, None)
        worst_s, worst_k = min(graded) if graded else (None, None)
        prov = {"step": "best_of_n", "teacher": source, "verifier": verifier.spec, "n": n, "seed": seed,
                "temperature": temperature, "scores": all_scores, "source_id": rec["id"]}
        if best_s is None or best_s < threshold:
            reason = "unscored" if not graded else "all_truncated" if best_s is None else "no_reply_passed"
            dropped.append({"id": rec["id"], "step": "best_of_n", "reason": reason, "scores": all_scores,
                            "replies": [message_text(reply_message(r)) for _, r in scored]})
            continue
        best = reply_message(scored[best_k][1])  # a tool call stays a tool call (the record's tools go along)
        meta = {**(rec.get("meta") or {}), "synth": {**prov, "score": best_s}}
        sft.append({"id": f"{rec['id']}-bon", "messages": prompt + [best],
                    "tools": rec.get("tools"), "task_type": rec["task_type"], "source": source, "meta": meta})
        margin = best_s - worst_s
        if worst_s >= threshold:
            counts["no_pair_all_passed"] += 1
        elif margin < min_margin:
            counts["no_pair_small_margin"] += 1
        else:
            pair_meta = {**prov, "chosen_score": best_s, "rejected_score": worst_s, "margin": margin}
            pairs.append(format_pair(prompt, best, reply_message(scored[worst_k][1]), pairs_format, pair_meta,
                                     rec.get("tools")))
    elapsed = time.perf_counter() - start
    summary = {
        "step": "best_of_n", "teacher": source, "verifier": verifier.spec, "n": n, "seed": seed,
        "temperature": temperature, "threshold": threshold, "pairs_format": pairs_format,
        "prompts": len(records), "sampled_prompts": len(todo), "replies": len(flat),
        "replies_passed": sum(s >= threshold for s in scores), "replies_unscored": sum(math.isnan(s) for s in scores),
        "pass_rate": (sum(s >= threshold for s in scores) / len(scores)) if scores else None,
        "sft": len(sft), "pairs": len(pairs), "dropped": dict(Counter(d["reason"] for d in dropped)),
        "no_pair": dict(counts), "generate_s": round(gen_s, 3), "elapsed_s": round(elapsed, 3),
        "prompts_per_s": round(len(todo) / gen_s, 3) if gen_s > 0 and todo else None,
    }
    return BestOfNResult(sft, pairs, dropped, summary)


def format_pair(prompt: list[dict], chosen: dict | str, rejected: dict | str, fmt: str, meta: dict,
                tools: list | None = None) -> dict[str, Any]:
    """One preference pair: TRL conversational DPO or LLaMA-Factory sharegpt ranking (dpo_en_demo.json layout: the
    system prompt and earlier turns inside `conversations`, from system / human / gpt / function_call / observation).
    chosen / rejected: assistant messages (tool calls kept) or their text."""
    chosen, rejected = (m if isinstance(m, dict) else {"role": "assistant", "content": m} for m in (chosen, rejected))
    if fmt == "trl":
        return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], "meta": meta}
    row: dict[str, Any] = {"conversations": [_sharegpt_turn(m) for m in prompt],
                           "chosen": _sharegpt_turn(chosen), "rejected": _sharegpt_turn(rejected)}
    if tools:
        row["tools"] = json.dumps(tools, ensure_ascii=False)
    row["meta"] = meta
    return row


def _sharegpt_turn(m: dict[str, Any]) -> dict[str, str]:
    """One sharegpt turn; an assistant tool call is LLaMA-Factory's `function_call` turn, value
    {"name", "arguments"} as JSON (a list for parallel calls), the layout sftlab's sharegpt reader reads back."""
    if m["role"] == "assistant" and m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            fn = c.get("function") or c
            args = fn.get("arguments")
            if isinstance(args, str):  # OpenAI sends arguments as a JSON string; LLaMA-Factory wants the object
                with contextlib.suppress(json.JSONDecodeError):
                    args = json.loads(args)
            calls.append({"name": fn.get("name"), "arguments": args})
        return {"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls,
                                                             ensure_ascii=False)}
    return {"from": _SHAREGPT_ROLE.get(m["role"], m["role"]), "value": m.get("content") or ""}
