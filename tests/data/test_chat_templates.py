"""Real chat templates (tests/fixtures/chat_templates, sources in SOURCES.md: Qwen2.5-Instruct, Llama-3.1-Instruct,
Gemma) on every row of the shared demo files and on Chinese conversations: render == `apply_chat_template(messages,
tools=...)` token for token, and the supervised spans are exactly where each template puts the answer and its
end-of-turn token. Training and serving prompts agree on tool rows; templates whose answers cannot be located are
refused before any record is rendered. All on Qwen2.5's vocabulary (the qwen extra; skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from sftlab.data.formats import read_records
from sftlab.data.render import TemplateError, load_tokenizer, prompt_text, render_records, supervised_text
from sftlab.infer.hf import HFGenerator
from sftlab.serve.chat import ServeState, prepare
from sftlab.serve.protocol import ChatCompletionRequest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
DEMO_FILES = ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "identity.json")


def _qwen_span(m: dict) -> str:
    """Qwen2.5: the answer, each call as <tool_call> JSON, then <|im_end|> (the '\\n' after it is not generated)."""
    calls = ["<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": _args(c)}, ensure_ascii=False)
             + "\n</tool_call>" for c in m.get("tool_calls") or []]
    return "\n".join(([m["content"]] if m["content"] else []) + calls) + "<|im_end|>"


def _llama_span(m: dict) -> str:
    """Llama 3.1: the trimmed answer, or the one call as {"name", "parameters"} JSON (content dropped), <|eot_id|>."""
    if m.get("tool_calls"):
        (c,) = m["tool_calls"]
        return json.dumps({"name": c["function"]["name"], "parameters": _args(c)}, ensure_ascii=False) + "<|eot_id|>"
    return m["content"].strip() + "<|eot_id|>"


def _gemma_span(m: dict) -> str:
    return m["content"].strip() + "<end_of_turn>"


# name -> (template file, special tokens its text uses, bos, eos, the supervised text of an assistant message)
TEMPLATES = {
    "qwen2.5": ("qwen2.5-instruct.jinja", [], None, "<|im_end|>", _qwen_span),
    "llama3.1": ("llama-3.1-instruct.jinja", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                              "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
                 "<|begin_of_text|>", "<|eot_id|>", _llama_span),
    "gemma": ("gemma-it.jinja", ["<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>"], "<bos>", "<eos>",
              _gemma_span),
}


def _args(call: dict) -> dict:
    a = call["function"]["arguments"]
    return json.loads(a) if isinstance(a, str) else a


def hf_messages(messages: list[dict]) -> list[dict]:
    """Messages as transformers' docs ask for them (tool-call arguments as objects), built here independently."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != "loss_weight"}
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _args(c)}} for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.fixture(scope="module")
def records(real_data_dir):
    recs = [r for name in DEMO_FILES for r in read_records(real_data_dir / name)[0]]
    return recs + read_records(FIXTURES / "zh_conversations.jsonl")[0]


@pytest.fixture(scope="module", params=list(TEMPLATES))
def templated(request, qwen_model_dir):
    file, extra, bos, eos, span = TEMPLATES[request.param]
    tok = load_tokenizer(str(qwen_model_dir), chat_template=str(FIXTURES / file), special_tokens=extra)
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    return request.param, tok, span


def reference_text(tok, messages: list[dict], tools: list | None, add_generation_prompt: bool = False) -> str | None:
    """transformers' own rendering (None where the template refuses the conversation)."""
    try:
        return tok.apply_chat_template(hf_messages(messages), tools=tools, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError:
        return None


def test_render_is_apply_chat_template_with_spans_where_the_template_puts_answers(templated, records):
    name, tok, span_text = templated
    samples, report = render_records(records, tok, max_length=1_000_000, on_error="skip")
    by_id = {s["id"]: s for s in samples}
    refused = {r["record"]["id"] for r in report.rejects}
    assert all(r["code"] == "template_error" for r in report.rejects)
    texts = {r["id"]: reference_text(tok, r["messages"], r["tools"]) for r in records}
    assert {i for i, t in texts.items() if t is None} == refused  # refused exactly where the template refuses
    kept = [r for r in records if texts[r["id"]] is not None]
    # apply_chat_template(tokenize=True) tokenizes its text without adding special tokens: one batched call here
    reference = tok([texts[r["id"]] for r in kept], add_special_tokens=False)["input_ids"]
    for rec, ref in zip(kept, reference, strict=True):
        s = by_id[rec["id"]]
        assert s["input_ids"] == ref, rec["id"]
        answers = [m for m in rec["messages"] if m["role"] == "assistant"]
        assert supervised_text(s, tok) == [span_text(m) for m in answers], rec["id"]
        for i, (tid, lab, ti) in enumerate(zip(s["input_ids"], s["labels"], s["turn_index"], strict=True)):
            assert (lab == tid) if ti >= 0 else (lab == -100), (rec["id"], i)
        starts = [i for i, ti in enumerate(s["turn_index"]) if ti >= 0 and (i == 0 or s["turn_index"][i - 1] != ti)]
        ks = [k for k, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
        for start, k in zip(starts, ks, strict=True):  # each answer starts right after the template's prompt for it
            prompt = reference_text(tok, rec["messages"][:k], rec["tools"], add_generation_prompt=True)
            assert tok.decode(s["input_ids"][:start], skip_special_tokens=False) == prompt, (rec["id"], k)
    calls = [r for r in records if any(m.get("tool_calls") for m in r["messages"])]
    assert (len(records), sum(bool(r["tools"]) for r in records), len(calls)) == (999 + 300 + 91 + 10, 191 + 4, 156)
    if name == "gemma":  # no system role, strict alternation: every tool-call row and system prompt is refused
        assert {r["id"] for r in calls} | {"zh-system", "zh-multi"} <= refused and len(samples) > 1000
    else:
        assert not refused and len(samples) == len(records)


def test_prompt_only_rows_render_the_generation_prompt(templated, real_data_dir):
    _, tok, _ = templated
    prompts, _ = read_records(real_data_dir / "mt_bench_question.jsonl")
    assert len(prompts) == 80
    for rec in prompts:
        try:
            want = tok.apply_chat_template(rec["messages"], tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError:  # Gemma: two user turns in a row do not alternate
            with pytest.raises(Exception, match="alternate"):
                prompt_text(rec, tok)
            continue
        assert prompt_text(rec, tok) == want


@pytest.fixture(scope="module")
def served(qwen_model_dir):
    """The hf backend as `sftlab serve` loads it (Qwen2.5's template from the model dir)."""
    return HFGenerator.from_dir(qwen_model_dir, device="cpu")


def openai_request(rec: dict, k: int, raw_tools: list | None) -> dict:
    """The chat-completions body an OpenAI client sends for the prompt before assistant message k: tool calls with
    ids and JSON-text arguments, tool results with tool_call_id, tools as the client declares them."""
    msgs, calls = [], 0
    for m in rec["messages"][:k]:
        if m.get("tool_calls"):
            ids = [f"call_{calls + j}" for j in range(len(m["tool_calls"]))]
            calls += len(ids)
            msgs.append({"role": "assistant", "content": m["content"] or None, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c["function"]["name"],
                                                           "arguments": json.dumps(_args(c))}}
                for i, c in zip(ids, m["tool_calls"], strict=True)]})
        elif m["role"] == "tool":
            msgs.append({"role": "tool", "content": m["content"], "tool_call_id": f"call_{calls - 1}"})
        else:
            msgs.append({"role": m["role"], "content": m["content"]})
    body = {"model": "qwen", "messages": msgs}
    if raw_tools:
        body["tools"] = [{"type": "function", "function": t} for t in raw_tools]
    return body


def served_prompt_ids(gen, body: dict) -> list[int]:
    """The prompt `sftlab serve` builds for an OpenAI request body: the contract model, the chat path's
    request -> job step (conversation and tools as the generator gets them), the hf backend's prompt_ids."""
    state = ServeState(generator=gen, batcher=None, log=None, model_id="qwen", max_context=None,
                       system_fingerprint="test")
    job = prepare(state, ChatCompletionRequest.model_validate(body))
    return gen.prompt_ids(job.messages, job.tools)


def test_training_prompts_are_the_served_prompts_on_tool_rows(served, real_data_dir):
    """Glaive's bare function schemas become OpenAI tools when read; every prompt before an answer of a tool row
    equals what `sftlab serve` (request model -> chat.prepare -> the hf backend's prompt_ids) builds for the same
    conversation sent by an OpenAI client."""
    raw = json.loads((real_data_dir / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    recs, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    gen = served
    samples, report = render_records(recs, gen.tokenizer, max_length=1_000_000)
    assert report.rendered == len(recs) == len(raw)
    differ, compared, bare_differ = set(), set(), set()
    for rec, x, s in zip(recs, raw, samples, strict=True):
        tools = json.loads(x["tools"]) or None
        if not tools:
            continue
        compared.add(rec["id"])
        ti = s["turn_index"]
        ks = [k for k, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
        for t, k in enumerate(ks):
            if served_prompt_ids(gen, openai_request(rec, k, tools)) != s["input_ids"][:ti.index(t)]:
                differ.add(rec["id"])
        # before: the tools block listed the bare schemas, which no request ever carries
        bare = gen.tokenizer.apply_chat_template(hf_messages(rec["messages"][:ks[0]]), tools=tools, tokenize=True,
                                                 add_generation_prompt=True, return_dict=False)
        if bare != s["input_ids"][:ti.index(0)]:
            bare_differ.add(rec["id"])
    assert len(compared) == 191 and not differ
    assert bare_differ == compared


def test_chinese_tool_rows_train_what_is_served(served):
    recs, _ = read_records(FIXTURES / "zh_conversations.jsonl")
    gen = served
    samples, _ = render_records(recs, gen.tokenizer, max_length=1_000_000)
    tool_rows = 0
    for rec, s in zip(recs, samples, strict=True):
        if not rec["tools"]:
            continue
        tool_rows += 1
        assert all(t["type"] == "function" for t in rec["tools"])  # bare schemas were wrapped when read
        raw_tools = [t["function"] for t in rec["tools"]]
        for t, k in enumerate(k for k, m in enumerate(rec["messages"]) if m["role"] == "assistant"):
            assert served_prompt_ids(gen, openai_request(rec, k, raw_tools)) == \
                s["input_ids"][:s["turn_index"].index(t)], (rec["id"], k)
    assert tool_rows == 4


# A template that ignores add_generation_prompt: the assistant header would be trained as part of the answer.
NO_GENERATION_PROMPT = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}")
# Not prefix-stable: the latest user message gets a different header than earlier ones.
UNSTABLE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' and loop.last %}{{- '<|im_start|>user (latest)\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' }}{%- endif %}"
    "{{- m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.mark.parametrize(("template", "why"), [(NO_GENERATION_PROMPT, "add_generation_prompt"),
                                               (UNSTABLE, "not prefix-stable")])
def test_a_template_whose_answers_cannot_be_located_is_refused_at_start(template, why, tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jinja"
    path.write_text(template, encoding="utf-8")
    tok = load_tokenizer(str(tiny_model_dir), chat_template=str(path))
    with pytest.raises(TemplateError) as e:
        render_records([], tok, on_error="skip")  # before any record, whatever the data and on_error
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"chat template {path}: cannot locate the assistant turns") and why in msg


def test_the_start_check_passes_every_fixture_template(templated):
    _, tok, _ = templated
    samples, report = render_records([], tok)
    assert samples == [] and report.rendered == 0
