"""Self-Instruct: a teacher writes new instructions per task_type from few-shot seed instructions, then answers
them; filters drop what is not new (ROUGE-L >= threshold to a seed or an already kept instruction of any
task_type, CJK-aware), what is too short/long or needs non-text input (blocked keywords), truncated answers, and
what fails the curation `clean` rules. kept + dropped = generated, per task_type.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sftlab.curate.clean import clean_records
from sftlab.eval import metrics
from sftlab.infer import GenerationParams, Generator
from sftlab.synth.teacher import ask, teacher_id

# Tasks a text model cannot do (the Self-Instruct paper's list).
BLOCKED_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "图片", "图像", "画一", "视频", "音频")

PROMPT = """Come up with {m} new, diverse task instructions of the type "{task_type}".
Here are examples of this type:
{examples}

Write {m} new instructions, one per line, numbered 1. to {m}. Each must be answerable with text alone and \
must not copy an example. Use the same language as the examples."""

_NUMBERED = re.compile(r"^\s*(?:(?:task|instruction)?\s*\d+\s*[.):：、]|[-*•])\s*", re.I)


@dataclass
class SynthResult:
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def parse_instructions(text: str) -> list[str]:
    """One instruction per non-empty line, numbering / bullets removed. When some lines are numbered or bulleted
    (as asked), only those: a chatty "Here are 8 new instructions:" / "Hope this helps!" is not an instruction."""
    lines = [line for line in text.splitlines() if line.strip()]
    marked = [line for line in lines if _NUMBERED.match(line)]
    return [s for s in (_NUMBERED.sub("", line).strip() for line in marked or lines) if s]


class RougeL:
    """ROUGE-L F1 with the eval metrics' CJK-aware tokenizer (one token per CJK character)."""

    def __init__(self) -> None:
        from rouge_score.rouge_scorer import RougeScorer  # lazy: rouge_score (nltk) takes seconds to import

        self.scorer = RougeScorer(["rougeL"], use_stemmer=False, tokenizer=metrics.RougeTokenizer())

    def max_sim(self, text: str, others: list[str]) -> tuple[float, str | None]:
        best, arg = 0.0, None
        for o in others:
            f = self.scorer.score(o, text)["rougeL"].fmeasure
            if f > best:
                best, arg = f, o
        return best, arg


def first_user(rec: dict[str, Any]) -> str:
    return next((m.get("content") or "" for m in rec["messages"] if m["role"] == "user"), "")


def self_instruct(seeds: list[dict[str, Any]], teacher: Generator, *, n: int, per_request: int = 8,
                  few_shot: int = 3, seed: int = 0, rouge_threshold: float = 0.7, min_chars: int = 8,
                  max_chars: int = 1000, blocked_keywords: tuple[str, ...] = BLOCKED_KEYWORDS,
                  temperature: float = 1.0, max_new_tokens: int = 512, clean: dict | None = None) -> SynthResult:
    """Generate n candidate instructions per task_type of the seeds, answer and filter them."""
    source = teacher_id(teacher)
    rouge = RougeL()
    by_type: dict[str, list[str]] = {}
    for rec in seeds:
        if (text := first_user(rec).strip()):
            by_type.setdefault(rec["task_type"], []).append(text)
    kept_instr: list[tuple[str, str, str, float]] = []  # (id, task_type, instruction, max rouge-L)
    # novelty is against every seed and every kept instruction, of any task_type (as in Self-Instruct's pool):
    # the same instruction under two task_types is still a duplicate prompt in the training data
    all_seeds = [text for texts in by_type.values() for text in texts]
    dropped: list[dict[str, Any]] = []
    generated: Counter = Counter()
    for task_type in sorted(by_type):
        pool = by_type[task_type]
        rng = random.Random(f"{seed}:{task_type}")
        candidates: list[str] = []
        for attempt in range(3):  # the teacher may return fewer lines than asked
            need = n - len(candidates)
            if need <= 0:
                break
            convs = []
            for _ in range(math.ceil(need / per_request)):
                shots = rng.sample(pool, min(few_shot, len(pool)))
                examples = "\n".join(f"{i}. {s}" for i, s in enumerate(shots, 1))
                convs.append([{"role": "user", "content": PROMPT.format(m=per_request, task_type=task_type,
                                                                       examples=examples)}])
            # identical requests (a small seed pool repeats its few-shot draw) with one seed get one identical
            # reply from a seeded teacher (vLLM, OpenAI): each copy of a request goes out in its own round, own seed
            rounds: list[list[list[dict]]] = []
            for conv in convs:
                free = next((r for r in rounds if conv not in r), None)
                if free is None:
                    rounds.append(free := [])
                free.append(conv)
            for k, batch in enumerate(rounds):
                params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                          seed=seed * 1000 + attempt + 3 * k)
                for reps in ask(teacher, batch, params, label=f"instructions ({task_type})"):
                    candidates += parse_instructions(reps[0].text)
        candidates = candidates[:n]
        generated[task_type] = len(candidates)
        for k, text in enumerate(candidates):
            cid = f"si-{task_type.replace('/', '_')}-{k}"
            base = {"id": cid, "step": "self_instruct", "task_type": task_type, "instruction": text}
            low = text.casefold()
            if len(text) < min_chars:
                dropped.append({**base, "reason": "too_short"})
            elif len(text) > max_chars:
                dropped.append({**base, "reason": "too_long"})
            elif (kw := next((w for w in blocked_keywords if re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", low)),
                             None)):
                dropped.append({**base, "reason": "blocked_keyword", "detail": kw})
            else:
                sim, near = rouge.max_sim(text, all_seeds + [k[2] for k in kept_instr])
                if sim >= rouge_threshold:
                    dropped.append({**base, "reason": "near_duplicate", "rouge_l": round(sim, 4), "similar_to": near})
                else:
                    kept_instr.append((cid, task_type, text, sim))

    answers = ask(teacher, [[{"role": "user", "content": text}] for _, _, text, _ in kept_instr],
                  GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed), label="answers")
    records = []
    for (rid, task_type, text, sim), reps in zip(kept_instr, answers, strict=True):
        reply = reps[0]
        if reply.finish_reason == "length":
            dropped.append({"id": rid, "step": "self_instruct", "task_type": task_type, "instruction": text,
                            "reason": "answer_truncated"})
            continue
        records.append({"id": rid, "task_type": task_type, "source": source, "tools": None,
                        "messages": [{"role": "user", "content": text},
                                     {"role": "assistant", "content": reply.text}],
                        "meta": {"synth": {"step": "self_instruct", "teacher": source, "seed": seed,
                                           "max_rouge_l": round(sim, 4)}}})
    cleaned = clean_records(records, clean or {})
    by_id = {r["id"]: r for r in records}
    for d in cleaned.dropped:
        r = by_id[d["id"]]
        dropped.append({**d, "step": "self_instruct", "task_type": r["task_type"], "reason": f"clean:{d['reason']}",
                        "instruction": r["messages"][0]["content"], "answer": r["messages"][1]["content"]})
    kept = cleaned.kept
    summary = {"step": "self_instruct", "teacher": source, "seed": seed, "rouge_threshold": rouge_threshold,
               "generated": sum(generated.values()), "kept": len(kept), "dropped": len(dropped),
               "per_task_type": {t: {"generated": generated[t], "kept": sum(r["task_type"] == t for r in kept),
                                     "dropped": dict(Counter(d["reason"] for d in dropped if d["task_type"] == t))}
                                 for t in sorted(generated)},
               "dropped_by_reason": dict(Counter(d["reason"] for d in dropped))}
    return SynthResult(kept, dropped, summary)
