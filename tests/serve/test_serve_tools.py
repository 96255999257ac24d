"""Tool calls from the served model. The splitter (hermes layout) on its own: plain and streamed splits agree,
malformed blocks stay content and are counted. End to end: the tiny model trained on real glaive_toolcall records
(up to their first call) is served, the official openai client gets `tool_calls` plain and streamed, and
`serve export-log` -> `sftlab flywheel` turns the call back into a training record."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import openai
import pytest
import yaml

from sftlab.cli import main
from sftlab.data.formats import read_records
from sftlab.data.records import write_jsonl
from sftlab.infer import load_generator
from sftlab.serve.app import create_app, start_in_thread
from sftlab.serve.log import RequestLog
from sftlab.serve.tool_calls import TOOL_CALL_PARSERS, ToolCallSplitter, get_parser, split_reply

HERMES = TOOL_CALL_PARSERS["hermes"]
CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def streamed(text: str, size: int) -> ToolCallSplitter:
    """The same text fed in pieces of `size` characters (as a streaming model delivers it)."""
    s = ToolCallSplitter(HERMES)
    pieces = []
    for i in range(0, len(text), size):
        pieces += s.feed(text[i:i + size])
    pieces += s.end()
    assert "".join(p.text for p in pieces) == s.content  # what was streamed is the content
    assert [p.call for p in pieces if p.call] == s.calls
    return s


@pytest.mark.parametrize(("text", "content", "calls", "malformed"), [
    (CALL, "", [("add", {"a": 2, "b": 3})], 0),
    ("Let me add.\n" + CALL, "Let me add.", [("add", {"a": 2, "b": 3})], 0),
    (CALL + "\n" + CALL.replace("add", "mul"), "", [("add", {"a": 2, "b": 3}), ("mul", {"a": 2, "b": 3})], 0),
    ("no call here, just text <tool", "no call here, just text <tool", [], 0),
    ("  spaced text  \n", "  spaced text  \n", [], 0),  # a plain reply is returned exactly
    ('<tool_call>\n{"name": "add", "arguments": {"a": 2,}\n</tool_call>',  # bad JSON: stays content
     '<tool_call>\n{"name": "add", "arguments": {"a": 2,}\n</tool_call>', [], 1),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', [], 1),  # no name
    ('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',  # not storable JSON
     '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>', [], 1),
    ('<tool_call>\n{"name": "add", "arguments": {"a"', '<tool_call>\n{"name": "add", "arguments": {"a"', [], 1),
    ('<tool_call>{"name": "f", "arguments": "{\\"q\\": 1}"}</tool_call>', "", [("f", {"q": 1})], 0),
])
def test_hermes_split_plain_equals_streamed(text, content, calls, malformed):
    whole = split_reply(text, HERMES)
    assert whole.content == content and whole.malformed == malformed
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole.calls] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole.calls)
    for size in (1, 3, 7, len(text)):
        piecewise = streamed(text, size)
        assert (piecewise.content, piecewise.malformed) == (content, malformed)
        assert [c["function"] for c in piecewise.calls] == [c["function"] for c in whole.calls]


def test_parser_registry_by_name():
    assert get_parser("hermes") is HERMES and get_parser("none") is None and get_parser(None) is None
    with pytest.raises(ValueError, match="known: hermes, none"):
        get_parser("mistral")


def test_serve_rejects_an_unknown_parser_name(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(tmp_path), "--tool-call-parser", "llama9"])
    assert exit_info.value.code == 2 and "known parsers are auto, none, hermes" in capsys.readouterr().err


# ---- end to end: train on real tool-call records, serve, call tools ----

RECORD = "glaive_toolcall_en_demo-7"  # "Can you tell me more about the movie with ID 12345?" -> get_movie_details


def openai_tools(tools: list[dict]) -> list[dict]:
    """Tools in OpenAI's shape (what clients send), so the trained prompt is the served prompt."""
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


@pytest.fixture(scope="module")
def tool_model(tiny_model_dir, real_data_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny model overfit (constant high lr) on one real glaive record cut after its first tool call."""
    records, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    rec = next(r for r in records if r["id"] == RECORD)
    first_call = next(i for i, m in enumerate(rec["messages"]) if m.get("tool_calls"))
    rec = {**rec, "messages": rec["messages"][:first_call + 1], "tools": openai_tools(rec["tools"])}
    tmp = tmp_path_factory.mktemp("tools")
    write_jsonl([rec], tmp / "calls.jsonl")
    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(tmp / "calls.jsonl")], "max_length": 512},
           "train": {"output_dir": str(tmp / "run"), "per_device_train_batch_size": 1, "learning_rate": 1e-2,
                     "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "max_steps": 80, "logging_steps": 20,
                     "seed": 0, "report_to": []}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp / "cfg.yaml")])
    return tmp / "run" / "final", rec


@pytest.fixture(scope="module")
def tool_server(tool_model, tmp_path_factory):
    final, rec = tool_model
    db = tmp_path_factory.mktemp("tools-log") / "serve.db"
    url, srv = start_in_thread(create_app(load_generator(final, model_id="tooly"), RequestLog(db)))
    yield url, db, rec
    srv.should_exit = True


def test_trained_model_calls_tools_plain_and_streamed_and_the_flywheel_keeps_the_call(tool_server, tmp_path):
    url, db, rec = tool_server
    prompt, expected = rec["messages"][:-1], rec["messages"][-1]["tool_calls"][0]["function"]
    expected_args = expected["arguments"] if isinstance(expected["arguments"], dict) else \
        json.loads(expected["arguments"])
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)

    plain = c.chat.completions.create(model="tooly", messages=prompt, tools=rec["tools"], temperature=0,
                                      max_tokens=100)
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == expected["name"]
    assert json.loads(call.function.arguments) == expected_args

    chunks = list(c.chat.completions.create(model="tooly", messages=prompt, tools=rec["tools"], temperature=0,
                                            max_tokens=100, stream=True))
    deltas = [tc for ch in chunks for d in ch.choices for tc in (d.delta.tool_calls or [])]
    assert {d.index for d in deltas} == {0} and deltas[0].id.startswith("call_") and len(deltas) >= 2
    assert deltas[0].function.name == expected["name"] and deltas[0].function.arguments == ""
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == expected_args
    assert not "".join(d.delta.content or "" for ch in chunks for d in ch.choices)
    assert [d.finish_reason for ch in chunks for d in ch.choices if d.finish_reason] == ["tool_calls"]

    # "none": no call is parsed, the model's text comes back as it is
    as_text = c.chat.completions.create(model="tooly", messages=prompt, tools=rec["tools"], temperature=0,
                                        max_tokens=100, tool_choice="none")
    assert as_text.choices[0].message.tool_calls is None and "<tool_call>" in as_text.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="'required' is not supported"):
        c.chat.completions.create(model="tooly", messages=prompt, tools=rec["tools"], tool_choice="required")

    c.post("/feedback", body={"id": plain.id, "score": 1}, cast_to=dict)
    with sqlite3.connect(db) as conn:
        logged = json.loads(conn.execute("SELECT choices FROM requests WHERE id = ?", (plain.id,)).fetchone()[0])
    assert logged[0]["tool_calls"][0]["function"]["arguments"] == call.function.arguments

    export, fw = tmp_path / "log.jsonl", tmp_path / "fw"
    main(["serve", "export-log", str(db), "-o", str(export), "--min-score", "1"])
    main(["flywheel", str(export), "-o", str(fw)])
    sft = [json.loads(line) for line in (fw / "sft.jsonl").read_text().splitlines()]
    assert [r["meta"]["response_id"] for r in sft] == [plain.id]
    reply = sft[0]["messages"][-1]
    assert reply["role"] == "assistant" and reply["tool_calls"][0]["id"] == call.id
    assert reply["tool_calls"][0]["function"] == {"name": expected["name"], "arguments": call.function.arguments}
    assert sft[0]["messages"][:-1] == prompt and sft[0]["tools"] == rec["tools"]
