"""synth evolve and synth multi-turn against a real HTTP teacher with scripted good and failed rewrites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_server import ScriptedTeacher  # noqa: E402

from sftlab.cli import main

QUESTIONS = ["Explain how a refrigerator keeps food cold.", "Describe the water cycle for a school class.",
             "Give advice on learning to play the guitar.", "Summarise why bees matter for farming.",
             "Explain what inflation means for savings."]


def _records(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "task_type": "qa", "messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": "A fine answer to that."}]}) + "\n"
        for i, q in enumerate(QUESTIONS)))
    return path


def evolve_script(body: dict, choice: int) -> str:
    p = body["messages"][-1]["content"]
    if "Given prompt:" in p:
        given = p.rsplit("Given prompt:\n", 1)[1]
        if "refrigerator" in given:
            return given  # no information gain
        if "water cycle" in given:
            return "#Rewritten Prompt#: " + given  # copies the template
        if "guitar" in given:
            return "Give detailed, step-by-step advice on learning fingerstyle guitar as an adult with 20 minutes a day."
        if "bees" in given:
            return "Compare the economic value of wild bees and honeybees for almond farms in California, with numbers."
        return "Explain, with a worked numeric example over ten years, how 3% yearly inflation erodes cash savings."
    if "Here is a conversation" in p:
        if "guitar" in p:
            return "What should I practise in my first week?"
        return p.split("user: ", 1)[1].split("\n", 1)[0]  # repeats the first question
    if "bees" in p:
        return "I'm sorry, but as an AI language model I cannot help with that."  # unusable answer
    return "Here is a useful, detailed answer with several concrete steps and examples."


def test_evolve_keeps_real_rewrites_and_eliminates_failures(tmp_path):
    out = tmp_path / "evol.jsonl"
    with ScriptedTeacher(evolve_script) as t:
        main(["synth", "evolve", str(_records(tmp_path / "in.jsonl")), "--teacher", t.base_url, "--seed", "2",
              "-o", str(out)])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = {d["parent_id"]: d["reason"] for d in map(json.loads, (tmp_path / "evol.dropped.jsonl")
                                                          .read_text().splitlines())}
    assert len(kept) + len(dropped) == len(QUESTIONS)
    assert dropped == {"r0": "no_information_gain", "r1": "copied_prompt_template", "r3": "clean:refusal"}
    assert {r["meta"]["synth"]["parent_id"] for r in kept} == {"r2", "r4"}
    for r in kept:
        assert r["meta"]["synth"]["op"] in ("constraints", "deepen", "concretize", "reasoning", "breadth")
        assert r["messages"][0]["content"] != QUESTIONS[int(r["meta"]["synth"]["parent_id"][1:])]
    summary = json.loads((tmp_path / "evol.summary.json").read_text())
    assert summary["kept"] == 2 and sum(summary["ops"].values()) == len(QUESTIONS)


def test_multi_turn_chains_followups_and_drops_repeats(tmp_path):
    out = tmp_path / "mt.jsonl"
    with ScriptedTeacher(evolve_script) as t:
        main(["synth", "multi-turn", str(_records(tmp_path / "in.jsonl")), "--teacher", t.base_url, "-o", str(out)])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "mt.dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == len(QUESTIONS)
    assert [r["id"] for r in kept] == ["r2-mt"]
    assert [m["role"] for m in kept[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert kept[0]["messages"][2]["content"] == "What should I practise in my first week?"
    assert {d["reason"] for d in dropped} == {"followup_repeats_question"}


def rewrite_script(body: dict, choice: int) -> str:
    p = body["messages"][-1]["content"]
    q = p.split("Question:\n", 1)[1].split("\n\nAnswer:", 1)[0]
    if "as one valid JSON object" in p:
        if "guitar" in q:
            return '{"advice": ["practise daily", "learn chords"'  # truncated JSON
        if "bees" in q:
            return '```json\n{"summary": "bees pollinate crops", "effect": "higher yields"}\n```'
        return '{"answer": "a fine answer"}'
    if "as plain text" in p:
        if "refrigerator" in q:
            return "## Answer\n- A fine answer to that."  # still Markdown
        if "water cycle" in q:
            return "A fine answer  to that."  # unchanged up to whitespace
        return "A fine answer, in plain words."
    return "# Answer\n\n**A fine answer** to that."


def test_rewrite_format_rewrites_answers_and_drops_invalid_forms(tmp_path):
    out = tmp_path / "fmt.jsonl"
    with ScriptedTeacher(rewrite_script) as t:
        main(["synth", "evolve", str(_records(tmp_path / "in.jsonl")), "--teacher", t.base_url,
              "--rewrite-format", "json", "--rewrite-format", "plain", "-o", str(out)])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "fmt.dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == 2 * len(QUESTIONS)
    assert {(d["parent_id"], d["evolve"], d["reason"]) for d in dropped} == {
        ("r2", "format:json", "format_invalid"), ("r0", "format:plain", "format_invalid"),
        ("r1", "format:plain", "no_change")}
    by_id = {r["id"]: r for r in kept}
    assert json.loads(by_id["r3-json"]["messages"][-1]["content"]) == {"summary": "bees pollinate crops",
                                                                       "effect": "higher yields"}
    assert by_id["r3-json"]["meta"]["synth"]["evolve"] == "format:json"
    assert by_id["r3-json"]["meta"]["synth"]["parent_id"] == "r3"
    assert by_id["r3-json"]["messages"][0]["content"] == QUESTIONS[3] + "\n\nReply with a JSON object only."
    assert by_id["r4-plain"]["messages"][-1]["content"] == "A fine answer, in plain words."
    assert by_id["r4-plain"]["meta"]["synth"]["evolve"] == "format:plain"


def test_rewrite_format_markdown_and_unknown_form(tmp_path):
    out = tmp_path / "md.jsonl"
    with ScriptedTeacher(rewrite_script) as t:
        main(["synth", "evolve", str(_records(tmp_path / "in.jsonl")), "--teacher", t.base_url,
              "--rewrite-format", "markdown", "-o", str(out)])
        kept = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(kept) == len(QUESTIONS)
        assert all(r["messages"][-1]["content"].startswith("# Answer") for r in kept)
        assert {r["meta"]["synth"]["evolve"] for r in kept} == {"format:markdown"}
        with pytest.raises(SystemExit) as e:
            main(["synth", "evolve", str(tmp_path / "in.jsonl"), "--teacher", t.base_url,
                  "--rewrite-format", "yaml", "-o", str(out)])
        assert e.value.code == 2
        with pytest.raises(SystemExit) as e:  # no evolution left after the commas: one line, not an IndexError
            main(["synth", "evolve", str(tmp_path / "in.jsonl"), "--teacher", t.base_url, "--ops", ",", "-o", str(out)])
        assert e.value.code == 2
