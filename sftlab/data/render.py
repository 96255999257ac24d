"""Chat template -> token ids, labels and per-token turn index: the only place that tokenizes for training.

How supervised tokens are found, with any chat template and without `{% generation %}` markers:
for every assistant turn k we render the prompt before it (with the generation prompt) and the
conversation up to and including it, tokenize both, and check that they are token prefixes of the
whole conversation's tokens. The supervised span of turn k is then exactly what the model would have to
generate at inference time: from the first token after the generation prompt up to and including the
turn's end-of-turn token. A template that is not prefix-stable is refused, naming the first mismatch.

All texts of all samples are tokenized in one batched fast-tokenizer call; no per-token Python loop.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.records import RecordError
from sftlab.errors import UserError

# ChatML, with tools listed in the system turn and tool calls as <tool_call> JSON (Qwen2.5-style layout).
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] %}{{- message['content'] }}{%- endif %}"
    "{%- if message.get('tool_calls') %}"
    "{%- for tc in message['tool_calls'] %}"
    "{%- set fn = tc['function'] if tc.get('function') else tc %}"
    "{%- if not loop.first or message['content'] %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE}

# End-of-turn tokens of common templates; the tokenizer's eos is tried first.
KNOWN_EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

TRAIN_ON = ("all_assistant", "last_assistant", "all")


class TemplateError(UserError, ValueError):
    """The chat template cannot be used for training as is (a configuration problem, not a record's)."""


@dataclass
class RenderReport:
    """What rendering did: counts, truncation and rejects by reason. Nothing is dropped silently."""

    rendered: int = 0
    truncated: int = 0
    turns_truncated_away: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    supervised_tokens: int = 0
    special_text: Counter = field(default_factory=Counter)  # special-token string in message text -> records

    def summary(self) -> str:
        parts = [f"rendered {self.rendered} samples ({self.tokens} tokens, {self.supervised_tokens} supervised)"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length ({self.turns_truncated_away} turns lost)")
        for reason, n in sorted(self.dropped.items()):
            parts.append(f"dropped {n}: {reason}")
        if self.special_text:
            found = ", ".join(f"{t!r} in {n}" for t, n in self.special_text.most_common(3))
            parts.append(f"WARNING special-token text inside messages ({found} records) tokenizes as the real "
                         "token and can end a turn early (sftlab data convert --special-text escape|reject)")
        return "; ".join(parts)


def resolve_chat_template(tokenizer: Any, chat_template: str | None = None) -> str:
    """Config value (builtin name, file path or template text) > tokenizer's own > builtin ChatML."""
    if chat_template:
        if chat_template in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[chat_template]
        if "{" not in chat_template and os.path.exists(chat_template):
            return Path(chat_template).read_text(encoding="utf-8")
        if "{%" in chat_template or "{{" in chat_template:
            return chat_template
        raise TemplateError(f"chat_template {chat_template!r} is neither a builtin ({', '.join(BUILTIN_TEMPLATES)}), "
                            "an existing file, nor Jinja template text")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one is what the model is served with
        own = own.get("default")
    return own or CHATML_TEMPLATE


def load_tokenizer(name_or_path: str, chat_template: str | None = None,
                   special_tokens: Sequence[str] = (), eot_token: str | None = None) -> Any:
    """AutoTokenizer with the chat template resolved and new special tokens added.

    The model's embeddings must be resized by the caller when tokens were added (see train/model.py).
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:  # transformers 5: a ValueError for a directory without tokenizer files
        why = str(e).splitlines()[0]
        if Path(name_or_path).is_dir() and not any(Path(name_or_path).glob("tokenizer*")):
            why = "no tokenizer files (tokenizer.json, tokenizer_config.json) in that directory"
        raise TemplateError(f"cannot load tokenizer from {name_or_path!r}: {why}") from None
    if not getattr(tok, "is_fast", False):
        raise TemplateError(f"tokenizer {name_or_path!r} is not a fast tokenizer; sftlab needs one for batched rendering")
    tok.chat_template = resolve_chat_template(tok, chat_template)
    new = [t for t in special_tokens if t not in tok.get_vocab()]
    if new:
        tok.add_special_tokens({"additional_special_tokens": list(new)})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if eot_token:
        if eot_token not in tok.get_vocab():
            raise TemplateError(f"eot_token {eot_token!r} is not in the tokenizer's vocabulary")
        tok.sftlab_eot_token = eot_token
    return tok


def eot_token_ids(tokenizer: Any) -> list[int]:
    """Ids that can close an assistant turn: the configured eot token, else eos and known end tokens."""
    forced = getattr(tokenizer, "sftlab_eot_token", None)
    names = [forced] if forced else [tokenizer.eos_token, *KNOWN_EOT_TOKENS]
    vocab = tokenizer.get_vocab()
    return list(dict.fromkeys(vocab[n] for n in names if n and n in vocab))


def _template_text(tokenizer: Any, messages: list[dict], tools: Any, add_generation_prompt: bool) -> str:
    """The template's text; a Jinja syntax error is the template's (TemplateError), an error while rendering
    (raise_exception('Conversation roles must alternate...'), a missing field) the record's (RecordError)."""
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{_template_name(tokenizer)}: Jinja syntax error (line {e.lineno}): {e.message}"
                            ) from None
    except jinja2.TemplateError as e:
        raise RecordError(f"{_template_name(tokenizer)} cannot render this record: {e.message or e}",
                          field="messages", code="template_error") from None


def prompt_text(record: dict[str, Any], tokenizer: Any) -> str:
    """A record's messages rendered with the generation prompt: what the model would answer (eval prompts)."""
    return _template_text(tokenizer, _clean_messages(record["messages"]), record.get("tools"), True)


def _clean_messages(messages: list[dict]) -> list[dict]:
    """Messages as templates expect them: content always a string, our own keys removed."""
    out = []
    for m in messages:
        m2 = {k: v for k, v in m.items() if k != "loss_weight" and v is not None}
        m2["content"] = m.get("content") or ""
        out.append(m2)
    return out


def _supervised_turns(messages: list[dict], train_on: str) -> list[tuple[int, float]]:
    """(message index, weight) of the assistant turns to supervise."""
    turns = [(i, float(m.get("loss_weight", 1.0) if m.get("loss_weight") is not None else 1.0))
             for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    return [(i, w) for i, w in turns if w > 0]


def _template_name(tokenizer: Any) -> str:
    tpl = tokenizer.chat_template or ""
    for name, text in BUILTIN_TEMPLATES.items():
        if tpl == text:
            return f"builtin '{name}'"
    return f"the chat template of {getattr(tokenizer, 'name_or_path', 'the tokenizer') or 'the tokenizer'}"


def _first_mismatch(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):  # runs only on the error path
        if a[i] != b[i]:
            return i
    return n


def _special_token_re(tokenizer: Any) -> re.Pattern | None:
    """A regex over the tokenizer's special-token strings (found in message text, they become control tokens)."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names |= {t.content for t in decoder.values() if getattr(t, "special", False)}
    names = sorted((n for n in names if n), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def _reject(e: RecordError, idx: int, rec: dict[str, Any], on_error: str, report: RenderReport) -> None:
    """A record that cannot be rendered: raised (on_error="raise", located at its index) or counted as a reject."""
    err = e.located(index=idx)
    if on_error == "raise":
        raise err from None
    report.dropped[err.code] += 1
    report.rejects.append({"record": rec, "reason": err.describe(), "code": err.code})


def render_records(records: Sequence[dict[str, Any]], tokenizer: Any, *, train_on: str = "all_assistant",
                   max_length: int = 2048, on_error: str = "raise") -> tuple[list[dict[str, Any]], RenderReport]:
    """Render canonical records to training samples.

    Each sample: {id, task_type, input_ids, labels (-100 = unsupervised), turn_index (-1 = unsupervised),
    turn_weights (one per turn), num_tokens}. labels are aligned with input_ids (the loss shifts them).
    on_error: "raise" (first bad record raises RecordError) or "skip" (rejects collected in the report).
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    report = RenderReport()
    eot_ids = set(eot_token_ids(tokenizer))

    # 1. Template texts for every sample: the whole conversation, and per supervised turn the prompt
    #    before it (with generation prompt) and the conversation up to it. Identical texts are tokenized
    #    once; the conversation up to the last message is the whole conversation (not rendered again).
    texts: list[str] = []
    text_index: dict[str, int] = {}

    def add(text: str) -> int:
        i = text_index.get(text)
        if i is None:
            i = text_index[text] = len(texts)
            texts.append(text)
        return i

    special_re = _special_token_re(tokenizer)
    plans: list[tuple[int, dict, int, list[tuple[int, int, int, float]]]] = []
    for idx, rec in enumerate(records):
        if special_re is not None:
            found = {m for msg in rec["messages"] for m in special_re.findall(msg.get("content") or "")}
            report.special_text.update(found)
        msgs = _clean_messages(rec["messages"])
        tools = rec.get("tools")
        try:
            full_i = add(_template_text(tokenizer, msgs, tools, False))
            turns = []
            if train_on != "all":
                for k, w in _supervised_turns(rec["messages"], train_on):
                    prompt_i = add(_template_text(tokenizer, msgs[:k], tools, True))
                    upto_i = (full_i if k + 1 == len(msgs)
                              else add(_template_text(tokenizer, msgs[: k + 1], tools, False)))
                    turns.append((prompt_i, upto_i, k, w))
        except RecordError as e:  # the template refused this record (raise_exception, an undefined field)
            _reject(e, idx, rec, on_error, report)
            continue
        plans.append((idx, rec, full_i, turns))

    # 2. One batched tokenization for all texts.
    ids_all = (tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
               if texts else [])

    samples = []
    for idx, rec, full_i, turns in plans:
        full = ids_all[full_i]
        try:
            spans = _turn_spans(rec, full_i, turns, texts, ids_all, eot_ids, tokenizer, train_on)
        except RecordError as e:
            _reject(e, idx, rec, on_error, report)
            continue
        sample = _build_sample(rec, full, spans, max_length, report)
        if sample is None:
            reason = "no_supervised_tokens_after_truncation"
            report.dropped[reason] += 1
            report.rejects.append({"record": rec, "code": reason,
                                   "reason": f"record {idx} (id {rec['id']}): every supervised token lies "
                                             f"beyond max_length={max_length}"})
            continue
        samples.append(sample)
    report.rendered = len(samples)
    return samples, report


def _turn_spans(rec: dict, full_i: int, turns: list, texts: list[str], ids_all: list, eot_ids: set[int],
                tokenizer: Any, train_on: str) -> list[tuple[int, int, float]]:
    """[(start, end_exclusive, weight)] token spans of the supervised turns in the whole conversation."""
    full = ids_all[full_i]
    if train_on == "all":
        if len(full) < 2:
            raise RecordError("conversation renders to fewer than 2 tokens", field="messages", code="too_short")
        return [(1, len(full), 1.0)]  # token 0 is never predicted
    spans = []
    for prompt_i, upto_i, k, w in turns:
        for part_i, what in ((prompt_i, "prompt before"), (upto_i, "conversation up to")):
            part = ids_all[part_i]
            if full[: len(part)] != part:
                _raise_not_prefix(rec, k, what, texts[full_i], texts[part_i], full, part, tokenizer)
        start, stop = len(ids_all[prompt_i]), len(ids_all[upto_i])
        end = next((j + 1 for j in range(stop - 1, start - 1, -1) if full[j] in eot_ids), None)
        if end is None:
            raise TemplateError(
                f"{_template_name(tokenizer)} does not close assistant message {k} of record {rec['id']!r} "
                "with an end-of-turn token, so the model would never learn to stop; set data.eot_token "
                "to the token the template ends turns with")
        if end - start < 2:
            raise RecordError("assistant message renders to no tokens", field=f"messages[{k}].content",
                              code="empty_assistant")
        spans.append((start, end, w))
    if not spans:
        raise RecordError("no supervised assistant turn (all loss_weight 0, or no assistant message)",
                          field="messages", code="no_supervised_tokens")
    return spans


def _raise_not_prefix(rec: dict, k: int, what: str, full_text: str, part_text: str, full: list[int],
                      part: list[int], tokenizer: Any) -> None:
    """A prefix that does not tokenize as a prefix: the template's fault, or (when the texts agree) the record's."""
    pos = _first_mismatch(full, part)
    if full_text.startswith(part_text):
        # Same text, different tokens: the record's text merges with the template's text around the
        # boundary (e.g. an answer starting with whitespace). Only this record is affected.
        raise RecordError(
            f"the {what} assistant message {k} tokenizes differently inside the whole conversation (first "
            f"mismatch at token {pos}): its text merges with the template's text at the boundary",
            field=f"messages[{k}].content", code="token_boundary")
    c = _first_mismatch(full_text, part_text)
    raise TemplateError(
        f"{_template_name(tokenizer)} is not prefix-stable: the {what} assistant message {k} of record "
        f"{rec['id']!r} renders differently from the same span of the whole conversation (first mismatch at "
        f"token {pos}, character {c}: {part_text[max(0, c - 20):c + 20]!r} vs {full_text[max(0, c - 20):c + 20]!r}). "
        "Set data.chat_template to a prefix-stable template (e.g. 'chatml').")


def _build_sample(rec: dict, full: list[int], spans: list[tuple[int, int, float]], max_length: int,
                  report: RenderReport) -> dict[str, Any] | None:
    n = min(len(full), max_length)
    if len(full) > max_length:
        report.truncated += 1
    labels = [-100] * n
    turn_index = [-1] * n
    weights: list[float] = []
    sup = 0
    for start, end, w in spans:
        end = min(end, n)
        if end <= start:
            report.turns_truncated_away += 1
            continue
        t = len(weights)
        weights.append(w)
        labels[start:end] = full[start:end]
        turn_index[start:end] = [t] * (end - start)
        sup += end - start
    if not weights:
        return None
    report.tokens += n
    report.supervised_tokens += sup
    return {"id": rec["id"], "task_type": rec["task_type"], "input_ids": full[:n], "labels": labels,
            "turn_index": turn_index, "turn_weights": weights, "num_tokens": n}


def supervised_text(sample: dict[str, Any], tokenizer: Any) -> list[str]:
    """Decoded text of each supervised turn (for inspection and tests)."""
    out = []
    for t in range(len(sample["turn_weights"])):
        ids = [i for i, ti in zip(sample["input_ids"], sample["turn_index"], strict=True) if ti == t]
        out.append(tokenizer.decode(ids, skip_special_tokens=False))
    return out
