"""Issue 35 item 3: a record's tools reach the teacher (OpenAI shape) in synth best-of-n, multi-turn and evolve,
and replies that call tools are kept as tool-call records, against a real HTTP teacher that calls tools."""

from __future__ import annotations

import json
from pathlib import Path

from synth_server import ScriptedTeacher, calls_tools  # noqa: E402

from sftlab.cli import main
from sftlab.data.formats import read_records

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CITIES = ["Paris", "Lima", "Tokyo", "Cairo"]


def _call(city: str, name: str = "get_weather") -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _prompt_records() -> list[dict]:
    """Tool prompts whose reference answer is the right call: tools as glaive / LLaMA-Factory data carry them
    (bare function schemas) and in OpenAI shape; one with an earlier call and its result (arguments an object,
    no ids, a loss_weight: what records hold); one without tools."""
    rows = [{"id": f"w{i}", "task_type": "tools", "tools": [WEATHER] if i % 2 else [{"type": "function",
                                                                                    "function": WEATHER}],
             "messages": [{"role": "user", "content": f"What is the weather in {city}?"},
                          {"role": "assistant", "content": "", "tool_calls": [_call(city)]}]}
            for i, city in enumerate(CITIES)]
    history = [{"role": "user", "content": "What is the weather in Rome?"},
               {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                   "name": "get_weather", "arguments": {"city": "Rome"}}}], "loss_weight": 0.0},
               {"role": "tool", "content": '{"temp_c": 21}'},
               {"role": "assistant", "content": "It is 21 °C in Rome.", "loss_weight": 0.0},
               {"role": "user", "content": "And what is the weather in Oslo?"},
               {"role": "assistant", "content": "", "tool_calls": [_call("Oslo")]}]
    rows.append({"id": "h", "task_type": "tools", "tools": [WEATHER], "messages": history})
    rows.append({"id": "plain", "task_type": "tools", "messages": [
        {"role": "user", "content": "What is the weather in Bern?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("Bern")]}]})
    return rows


def test_best_of_n_sends_tools_and_keeps_tool_call_replies(tmp_path):
    src = _write(tmp_path / "prompts.jsonl", _prompt_records())
    with ScriptedTeacher(calls_tools) as t:
        main(["synth", "best-of-n", str(src), "--teacher", t.base_url, "-n", "3", "--verifier", "tool_call",
              "--seed", "1", "-o", str(tmp_path / "bon")])
        bodies = {b["messages"][-1]["content"]: b for b in t.bodies}
    # every tool record's request declared its tools in OpenAI shape; the one without tools declared none
    for q in [f"What is the weather in {city}?" for city in CITIES] + ["And what is the weather in Oslo?"]:
        assert bodies[q]["tools"] == [{"type": "function", "function": WEATHER}]
    assert "tools" not in bodies["What is the weather in Bern?"]
    # the earlier turns went out as the OpenAI API takes them: arguments as JSON text, ids linked, no loss_weight
    sent = bodies["And what is the weather in Oslo?"]["messages"]
    call = sent[1]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"city": "Rome"}' and sent[2]["tool_call_id"] == call["id"]
    assert not any("loss_weight" in m for m in sent)

    out = tmp_path / "bon"
    sft, pairs, dropped = (_lines(out / f) for f in ("sft.jsonl", "pairs.jsonl", "dropped.jsonl"))
    assert sorted(r["id"] for r in sft) == sorted([f"w{i}-bon" for i in range(4)] + ["h-bon"])
    for rec in sft:  # the chosen reply is a tool call of the asked city, and the record keeps its tools
        city = rec["messages"][-2]["content"].split(" in ")[1].rstrip("?")
        last = rec["messages"][-1]
        assert last["role"] == "assistant" and last["tool_calls"][0]["function"]["name"] == "get_weather"
        assert json.loads(last["tool_calls"][0]["function"]["arguments"]) == {"city": city}
        assert rec["tools"]
    for p in pairs:  # chosen: the right call; rejected: the call for the wrong city
        assert json.loads(p["rejected"][0]["tool_calls"][0]["function"]["arguments"]) == {"city": "Atlantis"}
        assert json.loads(p["chosen"][0]["tool_calls"][0]["function"]["arguments"])["city"] != "Atlantis"
    assert len(pairs) == 5
    assert [(d["id"], d["reason"]) for d in dropped] == [("plain", "no_reply_passed")]  # text only: no tools
    # the kept records are training data: sftlab's reader takes them as they are
    records, rejects = read_records(out / "sft.jsonl")
    assert len(records) == 5 and not rejects


def test_multi_turn_sends_tools_and_ends_a_dialogue_on_a_tool_call(tmp_path):
    rows = [{"id": "a", "task_type": "tools", "tools": [WEATHER], "messages": [
                {"role": "user", "content": "Which tools can you use?"},
                {"role": "assistant", "content": "I can look up the current weather of a city."}]},
            {"id": "b", "task_type": "tools", "tools": [WEATHER], "messages": [
                {"role": "user", "content": "Tell me about Bergen."},
                {"role": "assistant", "content": "Bergen is a rainy city on Norway's west coast."}]},
            {"id": "c", "task_type": "tools", "tools": [WEATHER], "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [_call("Paris")]}]}]
    src = _write(tmp_path / "in.jsonl", rows)

    def script(body: dict, choice: int) -> str | dict:
        if body["messages"][-1]["content"].startswith("Here is a conversation") and "Bergen" in str(body):
            return "What is the forecast in Bergen?"  # get_forecast: not a tool of the record
        return calls_tools(body, choice)

    with ScriptedTeacher(script) as t:
        main(["synth", "multi-turn", str(src), "--teacher", t.base_url, "--turns", "3", "-o",
              str(tmp_path / "mt.jsonl")])
        answered = [b for b in t.bodies if not b["messages"][-1]["content"].startswith("Here is a conversation")]
    assert answered and all(b["tools"] == [{"type": "function", "function": WEATHER}] for b in answered)
    kept = _lines(tmp_path / "mt.jsonl")
    dropped = {d["id"]: d for d in _lines(tmp_path / "mt.dropped.jsonl")}
    assert [r["id"] for r in kept] == ["a-mt"]
    last = kept[0]["messages"][-1]  # the follow-up was answered with a call: the dialogue ends there
    assert [m["role"] for m in kept[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert last["tool_calls"][0]["function"]["name"] == "get_weather"  # (choice 0 of the script: city Atlantis)
    assert set(json.loads(last["tool_calls"][0]["function"]["arguments"])) == {"city"}
    assert kept[0]["tools"] == [{"type": "function", "function": WEATHER}]  # canonical records: OpenAI shape
    assert dropped["b"]["reason"] == "invalid_tool_call" and "get_forecast" in dropped["b"]["detail"]
    assert dropped["c"]["reason"] == "ends_on_tool_call"  # the tool's result comes next, not a user question
    summary = json.loads((tmp_path / "mt.summary.json").read_text())
    assert summary["ended_on_tool_call"] == 1
    records, rejects = read_records(tmp_path / "mt.jsonl")
    assert len(records) == 1 and not rejects


def test_tools_in_an_unknown_shape_name_the_record(tmp_path, capsys):
    from cli_helpers import run_cli

    src = _write(tmp_path / "p.jsonl", [{"id": "x", "task_type": "t", "tools": [{"description": "no name"}],
                                         "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}])
    with ScriptedTeacher(calls_tools) as t:
        code, _, err = run_cli(["synth", "best-of-n", src, "--teacher", t.base_url, "--verifier", "tool_call",
                                "-o", tmp_path / "o"], capsys)
    assert code == 2 and "p.jsonl, line 1, field 'tools[0]': a function tool needs a name" in err  # the reader names it
