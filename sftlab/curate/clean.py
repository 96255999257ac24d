"""`clean`: heuristic quality rules. Each rule that fires drops the record with its own reason.

Rules run in a fixed order and the first one that fires names the reason, so the dropped file says
exactly why. Lengths are in characters, or in tokens when a tokenizer is given (one batched call).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.step import StepResult, drop
from sftlab.curate.text import (
    answer_text,
    natural_text,
    normalise,
    prompt_text,
    script_words,
    shingles,
    tokens,
)
from sftlab.errors import UserError

DEFAULT_REFUSALS = (
    "as an ai language model", "as a language model", "as an ai assistant, i cannot",
    "i'm sorry, but i cannot", "i am sorry, but i cannot", "i'm sorry, but i can't", "i cannot fulfill",
    "i can't assist with", "i cannot assist with", "i am unable to provide", "i'm unable to provide",
    "i do not have the ability to", "i don't have personal opinions", "i cannot provide assistance",
)

_RUN_RE = re.compile(r"(.)\1{3,}", re.DOTALL)  # a character repeated 4+ times in a row
_FENCE_RE = re.compile(r"^\s*```", re.MULTILINE)


class CleanConfig(StepConfig):
    """Thresholds of the clean rules; None switches a rule off."""

    min_prompt_len: int | None = Field(1, ge=0)
    max_prompt_len: int | None = Field(None, ge=1)
    min_answer_len: int | None = Field(1, ge=0)
    max_answer_len: int | None = Field(None, ge=1)
    max_char_repeat_ratio: float | None = Field(0.5, ge=0, le=1)
    max_line_repeat_ratio: float | None = Field(0.5, ge=0, le=1)
    min_lines_for_repeat: int = Field(4, ge=1)
    echo_similarity: float | None = Field(0.9, ge=0, le=1)
    check_code_fences: bool = True
    refusal_phrases: list[str] | None = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    max_minority_script_ratio: float | None = Field(0.3, ge=0, le=0.5)
    min_words_for_script: int = Field(10, ge=1)
    check_alternation: bool = True
    length_unit: Literal["chars", "tokens"] = "chars"


def _alternation_error(messages: list[dict[str, Any]]) -> str | None:
    prev = None
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system":
            if i != 0:
                return f"system message at position {i}"
        elif role == "assistant":
            if prev in (None, "system", "assistant"):
                return f"assistant message {i} does not follow a user or tool turn"
        elif role == "tool":
            if prev not in ("assistant", "tool") or (prev == "assistant" and not messages[i - 1].get("tool_calls")):
                return f"tool message {i} does not follow an assistant tool call"
        elif prev not in (None, "system", "assistant"):  # user or a custom role
            return f"{role} message {i} follows a {prev} message"
        prev = role
    return None


def _repeat_char_ratio(text: str) -> float:
    if not text:
        return 0.0
    return sum(len(m.group(0)) for m in _RUN_RE.finditer(text)) / len(text)


def _repeat_line_ratio(text: str, min_lines: int) -> float:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < min_lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def _echo_similarity(prompt: str, answer: str) -> float:
    """Jaccard of token 3-gram sets: 1.0 when the answer only repeats the prompt."""
    p, a = set(shingles(tokens(prompt), 3)), set(shingles(tokens(answer), 3))
    if not p or not a:
        return 0.0
    return len(p & a) / len(p | a)


def clean_records(records: Sequence[dict[str, Any]], config: CleanConfig | dict | None = None, *,
                  tokenizer: Any = None) -> StepResult:
    """Drop records that break a rule; kept records are returned unchanged and in order."""
    cfg = config if isinstance(config, CleanConfig) else parse_config(CleanConfig, "clean", config)
    prompts = [prompt_text(r) for r in records]
    answers = [answer_text(r) for r in records]
    if cfg.length_unit == "tokens" and tokenizer is None:
        raise UserError("clean: length_unit 'tokens' needs a tokenizer (--tokenizer)")
    unit = "tokens" if tokenizer is not None else "chars"
    if tokenizer is not None:
        enc = tokenizer(prompts + answers, add_special_tokens=False)["input_ids"]
        lens = [len(x) for x in enc]
        p_len, a_len = lens[: len(records)], lens[len(records):]
    else:
        p_len, a_len = [len(p.strip()) for p in prompts], [len(a.strip()) for a in answers]
    refusal_re = (re.compile("|".join(re.escape(p.casefold()) for p in cfg.refusal_phrases))
                  if cfg.refusal_phrases else None)

    kept, dropped = [], []
    for rec, prompt, answer, pl, al in zip(records, prompts, answers, p_len, a_len, strict=True):
        reason, detail = _first_failure(cfg, rec, prompt, answer, pl, al, refusal_re, unit)
        if reason is None:
            kept.append(rec)
        else:
            dropped.append(drop(rec, "clean", reason, detail=detail))
    return StepResult("clean", kept, dropped)


def clean_stream(chunks: Iterable[Sequence[dict[str, Any]]], config: CleanConfig | dict | None = None, *,
                 tokenizer: Any = None) -> Iterator[StepResult]:
    """clean_records chunk by chunk: every rule looks at one record only, so the kept and dropped rows
    are the same as cleaning the whole list at once, and memory is bounded by the chunk."""
    cfg = config if isinstance(config, CleanConfig) else parse_config(CleanConfig, "clean", config)
    for chunk in chunks:
        yield clean_records(chunk, cfg, tokenizer=tokenizer)


def _first_failure(cfg: CleanConfig, rec: dict, prompt: str, answer: str, pl: int, al: int,
                   refusal_re: re.Pattern | None, unit: str) -> tuple[str | None, str]:
    if not answer.strip() or any(m.get("role") == "assistant" and not (m.get("content") or "").strip()
                                 and not m.get("tool_calls") for m in rec["messages"]):
        return "empty_answer", "an assistant turn is empty or whitespace"
    if cfg.check_alternation and (err := _alternation_error(rec["messages"])):
        return "bad_alternation", err
    if cfg.min_prompt_len is not None and pl < cfg.min_prompt_len:
        return "prompt_too_short", f"{pl} < {cfg.min_prompt_len} {unit}"
    if cfg.max_prompt_len is not None and pl > cfg.max_prompt_len:
        return "prompt_too_long", f"{pl} > {cfg.max_prompt_len} {unit}"
    if cfg.min_answer_len is not None and al < cfg.min_answer_len:
        return "answer_too_short", f"{al} < {cfg.min_answer_len} {unit}"
    if cfg.max_answer_len is not None and al > cfg.max_answer_len:
        return "answer_too_long", f"{al} > {cfg.max_answer_len} {unit}"
    if cfg.max_char_repeat_ratio is not None and (r := _repeat_char_ratio(answer)) > cfg.max_char_repeat_ratio:
        return "repeated_chars", f"{r:.2f} of the answer is runs of one character"
    if cfg.max_line_repeat_ratio is not None and (
            r := _repeat_line_ratio(answer, cfg.min_lines_for_repeat)) > cfg.max_line_repeat_ratio:
        return "repeated_lines", f"{r:.2f} of the answer's lines are repeats"
    if cfg.echo_similarity is not None and prompt.strip() and (
            normalise(answer) == normalise(prompt) or _echo_similarity(prompt, answer) >= cfg.echo_similarity):
        return "answer_repeats_prompt", "the answer repeats the prompt"
    if cfg.check_code_fences and len(_FENCE_RE.findall(answer)) % 2:
        return "unbalanced_code_fence", "odd number of ``` fences in the answer"
    if refusal_re is not None and (m := refusal_re.search(answer.casefold())):
        return "refusal", f"contains {m.group(0)!r}"
    if cfg.max_minority_script_ratio is not None:
        cjk, latin = script_words(natural_text(rec))  # prose only: code and tool-call JSON are not a language
        if cjk + latin >= cfg.min_words_for_script:
            minority = min(cjk, latin) / (cjk + latin)
            if minority > cfg.max_minority_script_ratio:
                return "mixed_language", (f"{minority:.2f} of the words are the minority script "
                                          f"({cjk} CJK characters, {latin} Latin words)")
    return None, ""
