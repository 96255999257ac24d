"""Chat template -> token ids, labels and per-token turn index: the only place that tokenizes for training.

How supervised tokens are found, with any chat template and without `{% generation %}` markers:
for every assistant turn k we render the prompt before it (with the generation prompt) and the
conversation up to and including it, tokenize both, and check that they are token prefixes of the
whole conversation's tokens. The supervised span of turn k is then exactly what the model would have to
generate at inference time: from the first token after the generation prompt up to and including the
turn's end-of-turn token. A template that is not prefix-stable is refused, naming the first mismatch, and
`check_template` refuses one whose answers cannot be located before any record is rendered.

Messages and tools reach the template through `template_inputs`, the same function the server's prompt path
uses, so training renders exactly the prompt a served request gets (tools in OpenAI's shape).

All texts of all samples are tokenized in one batched fast-tokenizer call; no per-token Python loop.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from sftlab.data.records import RecordError, openai_tools
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
    history_truncated: int = 0  # train_on last_assistant: samples that lost their oldest exchanges to fit
    exchanges_dropped: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    supervised_tokens: int = 0
    special_text: Counter = field(default_factory=Counter)  # special-token string in message text -> records

    def summary(self) -> str:
        parts = [f"rendered {self.rendered} samples ({self.tokens} tokens, {self.supervised_tokens} supervised)"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length ({self.turns_truncated_away} turns lost)")
        if self.history_truncated:
            parts.append(f"{self.history_truncated} shortened to max_length by dropping their "
                         f"{self.exchanges_dropped} oldest exchanges (the supervised last turn kept whole)")
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


def _describe_template(chat_template: str | None, name_or_path: str) -> str:
    """How errors name the template in use: the config value it came from, else the tokenizer's own."""
    if not chat_template:
        return f"the chat template of {name_or_path}"
    if chat_template in BUILTIN_TEMPLATES:
        return f"builtin chat template '{chat_template}'"
    if "{" not in chat_template:
        return f"chat template {chat_template}"
    return "the chat template text of data.chat_template"


def load_tokenizer(name_or_path: str, chat_template: str | None = None,
                   special_tokens: Sequence[str] = (), eot_token: str | None = None) -> Any:
    """AutoTokenizer with the chat template resolved and new special tokens added.

    The model's embeddings must be resized by the caller when tokens were added (see train/model.py).
    """
    from transformers import (
        AutoTokenizer,  # lazy: transformers takes seconds to import; reading data needs none
    )

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
    tok.sftlab_template_name = _describe_template(chat_template, name_or_path)
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


def template_inputs(messages: list[dict], tools: Any = None) -> tuple[list[dict], list[dict] | None]:
    """Messages and tools exactly as the chat template receives them, in training (`render_records`), evaluation
    prompts (`prompt_text`) and serving (`HFGenerator.prompt_ids`), so a model is trained on what it is served:

    - content always a string, sftlab's own keys (loss_weight) and empty fields removed;
    - tool-call arguments as objects: templates `tojson` them, and OpenAI requests carry them as JSON text (parsed
      here as vLLM does; text that is not a JSON object stays as it is);
    - tools in OpenAI's shape (`records.openai_tools`: bare function schemas wrapped), the list requests carry.
    """
    out = []
    for m in messages:
        m2 = {k: v for k, v in m.items() if k != "loss_weight" and v is not None}
        m2["content"] = m.get("content") or ""
        if m2.get("tool_calls"):
            m2["tool_calls"] = [_call_with_object_arguments(c) for c in m2["tool_calls"]]
        out.append(m2)
    return out, openai_tools(tools)


def _call_with_object_arguments(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    fn = call.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
        return {**call, "function": {**fn, "arguments": _json_object(fn["arguments"])}}
    if isinstance(call.get("arguments"), str):  # a flat {name, arguments} call
        return {**call, "arguments": _json_object(call["arguments"])}
    return call


def _json_object(text: str) -> Any:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text
    return value if isinstance(value, dict) else text


def _template_text(tokenizer: Any, messages: list[dict], tools: Any, add_generation_prompt: bool) -> str:
    """The template's text for template_inputs(messages, tools); a Jinja syntax error is the template's
    (TemplateError), an error while rendering (raise_exception('Conversation roles must alternate...'), a missing
    field) the record's (RecordError)."""
    messages, tools = template_inputs(messages, tools)
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{_template_name(tokenizer)}: Jinja syntax error (line {e.lineno}): {e.message}"
                            ) from None
    except jinja2.TemplateError as e:
        raise RecordError(f"{_template_name(tokenizer)} cannot render this record: {e.message or e}",
                          field="messages", code="template_error") from None


def prompt_text(record: dict[str, Any], tokenizer: Any) -> str:
    """A record's messages rendered with the generation prompt: what the model would answer (eval prompts)."""
    return _template_text(tokenizer, record["messages"], record.get("tools"), True)


def _supervised_turns(messages: list[dict], train_on: str) -> list[tuple[int, float]]:
    """(message index, weight) of the assistant turns to supervise."""
    turns = [(i, float(m.get("loss_weight", 1.0) if m.get("loss_weight") is not None else 1.0))
             for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last_assistant":
        turns = turns[-1:]
    return [(i, w) for i, w in turns if w > 0]


def _template_name(tokenizer: Any) -> str:
    named = getattr(tokenizer, "sftlab_template_name", None)
    tpl = tokenizer.chat_template or ""
    for name, text in BUILTIN_TEMPLATES.items():
        if tpl == text:
            return f"builtin chat template '{name}'"
    if named:
        return named
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


# ---------------------------------------------------------------------------------------------- the start check

# Two exchanges with distinctive answers (Latin and CJK text): where the template puts each answer must be found.
_PROBE = [{"role": "system", "content": "Answer briefly."},
          {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, 蓝色."},
          {"role": "user", "content": "再来一个？"}, {"role": "assistant", "content": "Green 绿色"}]


def check_template(tokenizer: Any) -> None:
    """Refuse, before any record is rendered, a template whose assistant turns cannot be located: each answer must
    start right after the template's generation prompt and end with an end-of-turn token, and the prompt and the
    conversation up to each answer must be token prefixes of the whole conversation. Otherwise labels would land
    on the wrong tokens silently. A template that refuses even the probe conversation (system role, then without
    it) is left to the per-record checks. Checked once per tokenizer and template."""
    tpl = tokenizer.chat_template
    if getattr(tokenizer, "_sftlab_checked_template", None) == tpl:
        return
    eot_ids = set(eot_token_ids(tokenizer))
    for msgs in (_PROBE, _PROBE[1:]):
        try:
            texts = [_template_text(tokenizer, msgs, None, False)]
            for k in (k for k, m in enumerate(msgs) if m["role"] == "assistant"):
                texts += [_template_text(tokenizer, msgs[:k], None, True),
                          _template_text(tokenizer, msgs[: k + 1], None, False)]
        except RecordError:
            continue
        why = _probe_problem(tokenizer, msgs, texts, eot_ids)
        if why:
            raise TemplateError(f"{_template_name(tokenizer)}: cannot locate the assistant turns to train on: {why}; "
                                "set data.chat_template to a template that renders each answer right after its "
                                "generation prompt (e.g. 'chatml')")
        break
    tokenizer._sftlab_checked_template = tpl


def _probe_problem(tokenizer: Any, msgs: list[dict], texts: list[str], eot_ids: set[int]) -> str | None:
    """Why the probe's answers cannot be located in its rendering, or None."""
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    full, answers = ids[0], [m["content"] for m in msgs if m["role"] == "assistant"]
    for t, answer in enumerate(answers):
        prompt, upto = ids[1 + 2 * t], ids[2 + 2 * t]
        if full[: len(prompt)] != prompt or full[: len(upto)] != upto:
            return (f"answer {t + 1} of a two-exchange conversation renders differently inside the whole "
                    "conversation (not prefix-stable)")
        end = next((j + 1 for j in range(len(upto) - 1, len(prompt) - 1, -1) if full[j] in eot_ids), None)
        if end is None:
            return f"answer {t + 1} is not closed by an end-of-turn token (set data.eot_token)"
        span = tokenizer.decode(full[len(prompt):end], skip_special_tokens=False)
        eot = tokenizer.decode(full[end - 1:end], skip_special_tokens=False)
        if not span.startswith(answer) or span[len(answer):-len(eot) or None].strip():
            return (f"the tokens after the generation prompt up to the end-of-turn token are {span!r}, not the "
                    f"answer {answer!r} (does the template ignore add_generation_prompt?)")
    return None


# ---------------------------------------------------------------------------------------------- rendering


@dataclass
class _Plan:
    """One record's template texts (indices into the text pool): the whole conversation, and per supervised turn
    (prompt before it with the generation prompt, conversation up to it, message index, weight)."""

    idx: int
    rec: dict[str, Any]
    messages: list[dict]
    full: int
    turns: list[tuple[int, int, int, float]]


class _TextPool:
    """Template texts, each distinct text tokenized once, in batched fast-tokenizer calls."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ids: list[list[int]] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.texts)
            self.texts.append(text)
        return i

    def tokenize(self, tokenizer: Any) -> None:
        """Tokenize the texts added since the last call, in one call."""
        new = self.texts[len(self.ids):]
        if new:
            self.ids += tokenizer(new, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def _reject(e: RecordError, idx: int, rec: dict[str, Any], on_error: str, report: RenderReport) -> None:
    """A record that cannot be rendered: raised (on_error="raise", located at its index) or counted as a reject."""
    err = e.located(index=idx)
    if on_error == "raise":
        raise err from None
    report.dropped[err.code] += 1
    report.rejects.append({"record": rec, "reason": err.describe(), "code": err.code})


def _drop(report: RenderReport, rec: dict[str, Any], code: str, reason: str) -> None:
    """A sample dropped for its length: counted and kept in the rejects, never raised."""
    report.dropped[code] += 1
    report.rejects.append({"record": rec, "code": code, "reason": reason})


def _plan(pool: _TextPool, tokenizer: Any, idx: int, rec: dict[str, Any], messages: list[dict],
          train_on: str) -> _Plan:
    """The template texts one sample needs; the conversation up to the last message is the whole one."""
    tools = rec.get("tools")
    full = pool.add(_template_text(tokenizer, messages, tools, False))
    turns = []
    if train_on != "all":
        for k, w in _supervised_turns(messages, train_on):
            prompt = pool.add(_template_text(tokenizer, messages[:k], tools, True))
            upto = full if k + 1 == len(messages) else pool.add(_template_text(tokenizer, messages[: k + 1], tools,
                                                                               False))
            turns.append((prompt, upto, k, w))
    return _Plan(idx, rec, messages, full, turns)


def render_records(records: Sequence[dict[str, Any]], tokenizer: Any, *, train_on: str = "all_assistant",
                   max_length: int = 2048, on_error: str = "raise") -> tuple[list[dict[str, Any]], RenderReport]:
    """Render canonical records to training samples.

    Each sample: {id, task_type, input_ids, labels (-100 = unsupervised), turn_index (-1 = unsupervised),
    turn_weights (one per turn), num_tokens}. labels are aligned with input_ids (the loss shifts them).
    on_error: "raise" (first bad record raises RecordError) or "skip" (rejects collected in the report).
    Too long: all_assistant / all cut the tail; last_assistant drops the oldest complete exchanges first, so the
    supervised turn stays whole (`_shorten_histories`).
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    check_template(tokenizer)
    report = RenderReport()
    eot_ids = set(eot_token_ids(tokenizer))
    special_re = _special_token_re(tokenizer)
    pool = _TextPool()
    plans: list[_Plan] = []
    for idx, rec in enumerate(records):
        if special_re is not None:
            report.special_text.update({m for msg in rec["messages"]
                                        for m in special_re.findall(msg.get("content") or "")})
        try:
            plans.append(_plan(pool, tokenizer, idx, rec, rec["messages"], train_on))
        except RecordError as e:  # the template refused this record (raise_exception, an undefined field)
            _reject(e, idx, rec, on_error, report)
    pool.tokenize(tokenizer)  # one batched call for all texts

    located: list[tuple[_Plan, list[tuple[int, int, float]]]] = []
    for plan in plans:
        try:
            located.append((plan, _turn_spans(plan, pool, eot_ids, tokenizer, train_on)))
        except RecordError as e:
            _reject(e, plan.idx, plan.rec, on_error, report)
    if train_on == "last_assistant":
        located = _shorten_histories(located, pool, tokenizer, eot_ids, max_length, report)

    samples = []
    for plan, spans in located:
        sample = _build_sample(plan.rec, pool.ids[plan.full], spans, max_length, report)
        if sample is None:
            _drop(report, plan.rec, "no_supervised_tokens_after_truncation",
                  f"record {plan.idx} (id {plan.rec['id']}): every supervised token lies beyond "
                  f"max_length={max_length}")
            continue
        samples.append(sample)
    report.rendered = len(samples)
    return samples, report


def _exchange_starts(messages: list[dict], k: int) -> list[int]:
    """Where the second, third, ... exchange before message k starts: its user messages after the first one (a
    leading system message always stays)."""
    users = [i for i, m in enumerate(messages[:k]) if m.get("role") == "user"]
    return users[1:]


def _shorten_histories(located: list, pool: _TextPool, tokenizer: Any, eot_ids: set[int], max_length: int,
                       report: RenderReport) -> list:
    """train_on=last_assistant: a sample whose supervised turn ends beyond max_length loses its oldest complete
    exchanges (user message to the next user message; the system message stays) until it fits, fewest first; one
    that does not fit even with only its last exchange is dropped with a reason. The supervised turn is never cut."""
    long = [i for i, (_, spans) in enumerate(located) if spans[-1][1] > max_length]
    candidates: dict[int, list[tuple[int, _Plan]]] = {}
    for i in long:
        plan = located[i][0]
        k = plan.turns[-1][2]
        system = [m for m in plan.messages[:1] if m.get("role") == "system"]
        candidates[i] = []
        for n, start in enumerate(_exchange_starts(plan.messages, k), start=1):
            try:
                shorter = _plan(pool, tokenizer, plan.idx, plan.rec, system + plan.messages[start:], "last_assistant")
            except RecordError:  # the template refuses the shortened conversation: try dropping more
                continue
            candidates[i].append((n, shorter))
    pool.tokenize(tokenizer)
    out = list(located)
    for i in long:
        plan, full_len = located[i][0], located[i][1][-1][1]
        fit = None
        for n, shorter in candidates[i]:
            try:
                spans = _turn_spans(shorter, pool, eot_ids, tokenizer, "last_assistant")
            except RecordError:
                continue
            if spans[-1][1] <= max_length:
                fit = (n, shorter, spans)
                break
        if fit is None:
            out[i] = None
            _drop(report, plan.rec, "last_turn_exceeds_max_length",
                  f"record {plan.idx} (id {plan.rec['id']}): its supervised turn ends at token {full_len}, and "
                  f"beyond max_length={max_length} even with only its last exchange (train_on last_assistant "
                  "keeps that turn whole)")
            continue
        n, shorter, spans = fit
        out[i] = (shorter, spans)
        report.history_truncated += 1
        report.exchanges_dropped += n
    return [x for x in out if x is not None]


def _turn_spans(plan: _Plan, pool: _TextPool, eot_ids: set[int], tokenizer: Any,
                train_on: str) -> list[tuple[int, int, float]]:
    """[(start, end_exclusive, weight)] token spans of the supervised turns in the whole conversation."""
    full = pool.ids[plan.full]
    if train_on == "all":
        if len(full) < 2:
            raise RecordError("conversation renders to fewer than 2 tokens", field="messages", code="too_short")
        return [(1, len(full), 1.0)]  # token 0 is never predicted
    spans = []
    for prompt_i, upto_i, k, w in plan.turns:
        for part_i, what in ((prompt_i, "prompt before"), (upto_i, "conversation up to")):
            part = pool.ids[part_i]
            if full[: len(part)] != part:
                _raise_not_prefix(plan.rec, k, what, pool.texts[plan.full], pool.texts[part_i], full, part,
                                  tokenizer)
        start, stop = len(pool.ids[prompt_i]), len(pool.ids[upto_i])
        end = next((j + 1 for j in range(stop - 1, start - 1, -1) if full[j] in eot_ids), None)
        if end is None:
            raise TemplateError(
                f"{_template_name(tokenizer)} does not close assistant message {k} of record {plan.rec['id']!r} "
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
