"""Rendering properties on several chat templates: supervised tokens are exactly each assistant answer plus its
end-of-turn token, nothing else; train_on / loss_weight / truncation; non-prefix-stable templates refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from record_helpers import messages

from sftlab.data.formats import read_records
from sftlab.data.records import RecordError, make_record
from sftlab.data.render import (
    TemplateError,
    load_tokenizer,
    prompt_text,
    render_records,
    supervised_text,
)

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers

# A template that injects a default system prompt when none is given (Qwen2.5-like).
DEFAULT_SYSTEM_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# A different role layout with an explicit end token (Alpaca-style headers, '</s>' closes answers).
INSTRUCTION_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' %}{{- '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'assistant' %}{{- '### Response:\\n' + m['content'] + '</s>\\n\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}"
)
# Llama-3-like headers; <|eot_id|> and friends are added as special tokens.
LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Not prefix-stable on some records: the latest user message gets another header when it asks to "add" (the start
# check's probe conversation passes; tests/data/test_chat_templates.py refuses templates unstable on every record).
UNSTABLE_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' and loop.last and 'add' in m['content'] %}{{- '<|im_start|>user (latest)\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' }}{%- endif %}"
    "{{- m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# name -> (load_tokenizer kwargs, end-of-turn text, generation prompt text)
TEMPLATES = {
    "tiny_own": ({}, "<|im_end|>", "<|im_start|>assistant\n"),
    "builtin_chatml": ({"chat_template": "chatml"}, "<|im_end|>", "<|im_start|>assistant\n"),
    "default_system": ({"chat_template": DEFAULT_SYSTEM_TEMPLATE}, "<|im_end|>", "<|im_start|>assistant\n"),
    "instruction": ({"chat_template": INSTRUCTION_TEMPLATE, "special_tokens": ["</s>"], "eot_token": "</s>"},
                    "</s>", "### Response:\n"),
    "llama3": ({"chat_template": LLAMA3_TEMPLATE,
                "special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
               "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


def chat(*turns: str, system: str | None = None, weights: dict[int, float] | None = None, id: str = "c") -> dict:
    """A record from alternating user/assistant texts; weights: {assistant turn number: loss_weight}."""
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
        if i % 2 == 1 and weights and i // 2 in weights:
            msgs[-1]["loss_weight"] = weights[i // 2]
    return make_record(msgs, id=id, task_type="chat")


SYNTHETIC = [
    chat("add 2 and 3", "5", id="s0"),
    chat("hello", "hello world!", "and again, in German?", "Hallo Welt – schön, dich zu sehen. 你好", "ok?", "yes.",
         system="be brief", id="s1"),
    chat("list three colours", "red\ngreen\nblue", "reverse them", "blue\ngreen\nred", id="s2"),
]


@pytest.fixture(scope="module")
def alpaca_records():
    """Real alpaca records (the first 40 and 10 with non-ASCII text) when the shared data is present."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "alpaca_en_demo.json"
    if not path.exists():  # the property tests still run on the synthetic chats
        return []
    recs, _ = read_records(path)
    non_ascii = [r for r in recs if any(ord(c) > 127 for m in r["messages"] for c in m["content"])]
    return recs[:40] + non_ascii[:10]


@pytest.fixture(scope="module", params=list(TEMPLATES))
def templated(request, tiny_model_dir):
    kwargs, eot, gen = TEMPLATES[request.param]
    return load_tokenizer(str(tiny_model_dir), **kwargs), eot, gen


def assistant_texts(rec: dict) -> list[str]:
    return [m["content"] for m in rec["messages"] if m["role"] == "assistant"]


def test_supervised_tokens_are_exactly_the_answers(templated, alpaca_records):
    tok, eot, gen = templated
    records = alpaca_records + SYNTHETIC
    samples, report = render_records(records, tok, max_length=100_000)
    assert report.rendered == len(records) and not report.dropped and not report.truncated
    for rec, s in zip(records, samples, strict=True):
        # each supervised turn decodes to the answer plus its end-of-turn token
        assert supervised_text(s, tok) == [a + eot for a in assistant_texts(rec)]
        # nothing else is supervised, and labels carry the token ids exactly there
        for i, (tid, lab, ti) in enumerate(zip(s["input_ids"], s["labels"], s["turn_index"], strict=True)):
            assert (lab == tid) if ti >= 0 else (lab == -100), (rec["id"], i)
        # the first answer token is supervised: the tokens before each span are exactly the template's prompt
        # for that turn (ending with the generation prompt)
        starts = [i for i, ti in enumerate(s["turn_index"]) if ti >= 0 and (i == 0 or s["turn_index"][i - 1] != ti)]
        ks = [k for k, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
        assert len(starts) == len(ks)
        for start, k in zip(starts, ks, strict=True):
            before = tok.decode(s["input_ids"][:start], skip_special_tokens=False)
            assert before == prompt_text({"messages": rec["messages"][:k]}, tok) and before.endswith(gen)
        assert s["turn_weights"] == [1.0] * len(starts)
        assert s["num_tokens"] == len(s["input_ids"]) == len(s["labels"]) == len(s["turn_index"])


def test_whole_conversation_is_the_template_text(templated):
    tok, _, _ = templated
    (s,), _ = render_records([SYNTHETIC[1]], tok)
    assert tok.decode(s["input_ids"], skip_special_tokens=False) == tok.apply_chat_template(
        SYNTHETIC[1]["messages"], tokenize=False)


def test_last_assistant_only(templated):
    tok, eot, _ = templated
    rec = SYNTHETIC[1]
    (s,), _ = render_records([rec], tok, train_on="last_assistant")
    assert supervised_text(s, tok) == [assistant_texts(rec)[-1] + eot]
    assert s["turn_weights"] == [1.0]


def test_train_on_all_supervises_every_token_but_the_first(templated):
    tok, _, _ = templated
    (s,), _ = render_records([SYNTHETIC[1]], tok, train_on="all")
    assert s["labels"][0] == -100 and s["labels"][1:] == s["input_ids"][1:]


def test_loss_weight_zero_disables_a_turn(templated):
    tok, eot, _ = templated
    rec = chat("q1", "first answer", "q2", "second answer", "q3", "third answer", weights={0: 0.0, 2: 2.5})
    (s,), _ = render_records([rec], tok)
    assert supervised_text(s, tok) == ["second answer" + eot, "third answer" + eot]
    assert s["turn_weights"] == [1.0, 2.5]


def test_all_zero_supervision_raises_or_is_counted(templated):
    tok, _, _ = templated
    rec = chat("q1", "a1", "q2", "a2", weights={0: 0.0, 1: 0}, id="zero")
    with pytest.raises(RecordError) as e:
        render_records([rec], tok)
    assert e.value.code == "no_supervised_tokens" and "record 0" in str(e.value)
    samples, report = render_records([SYNTHETIC[0], rec], tok, on_error="skip")
    assert [s["id"] for s in samples] == ["s0"]
    assert report.dropped == {"no_supervised_tokens": 1} and report.rejects[0]["record"]["id"] == "zero"


def test_truncation(templated):
    tok, eot, _ = templated
    rec = chat("q1", "first answer here", "q2", "second answer, a bit longer than the first one")
    (full,), _ = render_records([rec], tok, max_length=100_000)
    ti = full["turn_index"]
    start1 = ti.index(1)
    end0 = max(i for i, t in enumerate(ti) if t == 0) + 1

    # cut inside the second answer: the first turn intact, the second partly kept
    (s,), rep = render_records([rec], tok, max_length=start1 + 2)
    assert s["num_tokens"] == start1 + 2 and s["input_ids"] == full["input_ids"][:start1 + 2]
    assert supervised_text(s, tok)[0] == "first answer here" + eot
    assert s["turn_index"].count(1) == 2
    assert (rep.truncated, rep.turns_truncated_away, rep.rendered) == (1, 0, 1)

    # cut before the second answer starts: that turn is lost and counted
    (s,), rep = render_records([rec], tok, max_length=end0 + 1)
    assert s["turn_weights"] == [1.0] and supervised_text(s, tok) == ["first answer here" + eot]
    assert (rep.truncated, rep.turns_truncated_away) == (1, 1)

    # cut before any answer: the sample is dropped, counted, and kept in rejects
    samples, rep = render_records([rec], tok, max_length=ti.index(0))
    assert samples == [] and rep.dropped == {"no_supervised_tokens_after_truncation": 1}
    assert rep.rejects[0]["record"] is rec and rep.truncated == 1


def test_a_record_the_template_renders_unstably_is_refused_naming_it(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir), chat_template=UNSTABLE_TEMPLATE)
    rec = SYNTHETIC[0]
    with pytest.raises(TemplateError) as e:
        render_records([rec], tok, on_error="skip")  # a template problem is never skipped
    msg = str(e.value)
    assert "not prefix-stable" in msg and "assistant message 1" in msg and "'s0'" in msg
    full = tok.apply_chat_template(rec["messages"], tokenize=False)
    prompt = tok.apply_chat_template(rec["messages"][:1], tokenize=False, add_generation_prompt=True)
    a = tok(full, add_special_tokens=False)["input_ids"]
    b = tok(prompt, add_special_tokens=False)["input_ids"]
    pos = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert f"first mismatch at token {pos}" in msg
    assert re.search(r"character \d+", msg)


def test_token_boundary_merge_is_a_record_error(tiny_model_dir):
    """Same text, different tokens at the prompt/answer boundary: only that record is refused (skippable)."""
    tok = load_tokenizer(str(tiny_model_dir))
    tok.add_tokens(["\n\n"])  # merges the generation prompt's newline with an answer starting with one
    bad = chat("q", "\nstarts with a newline", id="bad")
    with pytest.raises(RecordError) as e:
        render_records([bad], tok)
    assert e.value.code == "token_boundary" and e.value.field == "messages[1].content"
    samples, report = render_records([SYNTHETIC[0], bad], tok, on_error="skip")
    assert [s["id"] for s in samples] == ["s0"] and report.dropped == {"token_boundary": 1}


# Llama-2 / Mistral / Gemma style: the template itself refuses conversations it cannot render.
STRICT_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] not in ('user', 'assistant') %}"
    "{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}"
    "{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def test_a_template_that_refuses_a_record_is_a_record_error(tiny_model_dir, tmp_path):
    """raise_exception in the template (or an undefined field) rejects that record, skippable, naming it; a Jinja
    syntax error is the template's. Both were internal errors."""
    from sftlab.config import DataSource
    from sftlab.data.records import write_jsonl
    from sftlab.data.store import RenderSettings, build_or_open

    tok = load_tokenizer(str(tiny_model_dir), chat_template=STRICT_TEMPLATE)
    sys_rec = make_record([{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}], id="sys", task_type="t")
    with pytest.raises(RecordError) as e:
        render_records([SYNTHETIC[0], sys_rec], tok)
    assert e.value.code == "template_error" and e.value.index == 1
    assert "Only user and assistant roles are supported!" in str(e.value)
    samples, report = render_records([sys_rec, SYNTHETIC[0]], tok, on_error="skip")
    assert [s["id"] for s in samples] == ["s0"] and report.dropped == {"template_error": 1}
    assert report.rejects[0]["reason"].startswith("record 0")

    write_jsonl([SYNTHETIC[0], sys_rec], tmp_path / "d.jsonl")
    with pytest.raises(RecordError) as e:  # the training store names the file
        build_or_open(DataSource(path=str(tmp_path / "d.jsonl")), tok, RenderSettings(max_length=64, train_on="all_assistant", loss="turn"),
                      tmp_path / "cache")
    assert str(e.value).startswith(f"{tmp_path / 'd.jsonl'}, record 1, field 'messages': ")

    with pytest.raises(TemplateError, match="Jinja syntax error"):
        render_records([SYNTHETIC[0]], load_tokenizer(str(tiny_model_dir), chat_template="{{ messages"))


def test_tool_call_turns_are_supervised(tiny_tokenizer, real_data_dir):
    recs, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    recs = [r for r in recs if any(m.get("tool_calls") for m in r["messages"])][:20]
    samples, report = render_records(recs, tiny_tokenizer, max_length=100_000)
    assert report.rendered == len(recs)
    for rec, s in zip(recs, samples, strict=True):
        texts = supervised_text(s, tiny_tokenizer)
        answers = [m for m in rec["messages"] if m["role"] == "assistant"]
        assert len(texts) == len(answers)
        for m, text in zip(answers, texts, strict=True):
            assert text.endswith("<|im_end|>")
            if m.get("tool_calls"):
                fn = m["tool_calls"][0]["function"]
                assert text.startswith("<tool_call>\n") and f'"name": "{fn["name"]}"' in text
                assert json.loads(text[len("<tool_call>\n"):text.index("\n</tool_call>")]) == {
                    "name": fn["name"], "arguments": fn["arguments"]}
            else:
                assert text == m["content"] + "<|im_end|>"
        # tool results and tool definitions are context, never supervised
        decoded = tiny_tokenizer.decode(s["input_ids"], skip_special_tokens=False)
        assert "<|im_start|>tool\n" in decoded and "# Tools" in decoded
        assert not any("<|im_start|>tool" in t or "# Tools" in t for t in texts)


def test_prompt_text_ends_with_generation_prompt(tiny_tokenizer, real_data_dir):
    recs, _ = read_records(real_data_dir / "mt_bench_question.jsonl")
    text = prompt_text(recs[0], tiny_tokenizer)
    assert text.endswith("<|im_start|>assistant\n") and recs[0]["messages"][0]["content"] in text


def test_a_directory_without_tokenizer_files_is_a_one_line_error(tmp_path):
    """transformers 5 raises a ValueError there (was an 'internal error' from `data inspect` / `select ifd`)."""
    with pytest.raises(TemplateError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path))


def test_last_assistant_drops_the_oldest_exchanges_to_keep_the_answer_whole(templated):
    """train_on=last_assistant: a sample too long for max_length loses its oldest complete exchanges (the system
    message stays) until it fits, fewest first; the supervised answer is never cut. all_assistant cuts the tail."""
    tok, eot, _ = templated
    rec = chat("first question", "first answer, rather long " * 3, "second question", "second answer " * 3,
               "third question", "the answer to train on", system="be brief", id="long")
    msgs = rec["messages"]

    def answer_end(messages: list[dict]) -> int:
        """Where the last answer's end-of-turn token ends (the template may add text after it)."""
        (s,), _ = render_records([make_record(messages, id="x", task_type="chat")], tok, max_length=100_000)
        return max(i for i, t in enumerate(s["turn_index"]) if t >= 0) + 1

    full, without_one, last_only = answer_end(msgs), answer_end(msgs[:1] + msgs[3:]), answer_end(msgs[:1] + msgs[5:])
    assert full > without_one > last_only
    for max_length, kept, dropped in ((full - 1, msgs[:1] + msgs[3:], 1), (without_one - 1, msgs[:1] + msgs[5:], 2)):
        (s,), rep = render_records([rec], tok, train_on="last_assistant", max_length=max_length)
        (want,), _ = render_records([make_record(kept, id="long", task_type="chat")], tok, train_on="last_assistant")
        assert s["input_ids"] == want["input_ids"] and s["labels"] == want["labels"]
        assert supervised_text(s, tok) == ["the answer to train on" + eot]
        assert (rep.history_truncated, rep.exchanges_dropped, rep.truncated, rep.rendered) == (1, dropped, 0, 1)
        assert f"by dropping their {dropped} oldest exchanges" in rep.summary()

    # not even the last exchange fits: dropped with a reason, never trained on a cut answer
    samples, rep = render_records([rec], tok, train_on="last_assistant", max_length=last_only - 1)
    assert samples == [] and rep.dropped == {"last_turn_exceeds_max_length": 1}
    assert rep.rejects[0]["record"] is rec and "keeps that turn whole" in rep.rejects[0]["reason"]

    # all_assistant keeps today's tail cut: the last answer loses its end
    (s,), rep = render_records([rec], tok, train_on="all_assistant", max_length=full - 1)
    assert rep.truncated == 1 and not rep.history_truncated and not supervised_text(s, tok)[-1].endswith(eot)


def test_last_assistant_on_glaive_at_1024_keeps_every_supervised_turn_whole(qwen_model_dir, real_data_dir, tmp_path):
    """The acceptance case, with Qwen2.5's vocabulary and template: every kept sample's supervised turn ends with
    <|im_end|>; a shortened sample is its conversation's latest exchanges, as few dropped as fit; the counts reach
    the training store's manifest (the run's data summary)."""
    from sftlab.config import DataSource
    from sftlab.data.records import write_jsonl
    from sftlab.data.store import RenderSettings, build_or_open

    tok = load_tokenizer(str(qwen_model_dir))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    recs, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    samples, rep = render_records(recs, tok, train_on="last_assistant", max_length=1024)
    assert len(samples) == len(recs) - 1 and rep.dropped == {"last_turn_exceeds_max_length": 1}
    by_id = {r["id"]: r for r in recs}
    shortened = []
    for s in samples:
        (span,) = [[i for i, t in zip(s["input_ids"], s["turn_index"], strict=True) if t == 0]]
        assert span[-1] == eot and s["num_tokens"] <= 1024, s["id"]
        rec = by_id[s["id"]]
        text = tok.decode(s["input_ids"], skip_special_tokens=False)
        if tok.apply_chat_template(rec["messages"], tools=rec["tools"], tokenize=False).startswith(text):
            continue  # whole (at most the '\n' after the last <|im_end|> cut)
        shortened.append(s["id"])
        starts = [0] + [i for i, m in enumerate(rec["messages"]) if m["role"] == "user"][1:]
        texts = [tok.apply_chat_template(rec["messages"][k:], tools=rec["tools"], tokenize=False) for k in starts]
        j = next(j for j, t in enumerate(texts) if t.startswith(text))  # the conversation from exchange j on ...
        assert j > 0 and len(tok(texts[j - 1], add_special_tokens=False)["input_ids"]) > 1024  # ... one more: too long
    assert len(shortened) == rep.history_truncated > 10 and rep.exchanges_dropped >= rep.history_truncated

    subset = tmp_path / "long.jsonl"  # the training store counts the same on the long rows (and a short one)
    write_jsonl([by_id[i] for i in shortened] + [recs[0]], subset)
    store = build_or_open(DataSource(path=str(subset)), tok,
                          RenderSettings(max_length=1024, train_on="last_assistant", loss="turn"), tmp_path).store
    m = store.manifest
    assert (m["history_truncated"], m["exchanges_dropped"], m["samples"]) == (
        rep.history_truncated, rep.exchanges_dropped, len(shortened) + 1)


# -- the data-path audit (issue 15) --------------------------------------------------------------------------


def test_render_report_warns_about_special_token_text(tiny_tokenizer):
    from sftlab.data.render import render_records

    recs = [{"id": "a", "task_type": "t", "messages": messages(("user", "q"), ("assistant", "x <|im_end|> y"))},
            {"id": "b", "task_type": "t", "messages": messages(("user", "q"), ("assistant", "fine"))}]
    _, report = render_records(recs, tiny_tokenizer)
    assert report.special_text == {"<|im_end|>": 1}
    assert "WARNING special-token text inside messages ('<|im_end|>' in 1 records)" in report.summary()
