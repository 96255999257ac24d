"""`sftlab data inspect | render | convert`: one-line errors for bad input, rejects files, highlighted spans."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import read_jsonl, run_sftlab, write_lines
from record_helpers import QA, messages

from sftlab.data.formats import read_records
from sftlab.data.records import iter_jsonl

GOOD = {"instruction": "Say hi", "input": "", "output": "Hi!"}
# (name, bad record, line text in the message, field, reason)
BAD_CASES = [
    ("malformed_json", '{"instruction": "x", "output": ', None, "malformed JSON"),
    ("missing_field", {"instruction": "no answer"}, "field 'output'", "missing field"),
    ("empty_assistant", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
     "field 'conversations[1].value'", "empty assistant message"),
    ("unknown_role", {"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]},
     "field 'messages[1].role'", "unknown role 'wizard'"),
    ("not_ending_on_assistant", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                                   {"from": "human", "value": "more?"}]},
     "field 'conversations[2].from'", "not an assistant turn"),
]


def write_bad(path, bad):
    lines = [json.dumps(GOOD), bad if isinstance(bad, str) else json.dumps(bad), json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["convert", "inspect"])
@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_one_line_error(tmp_path, capsys, command, case):
    name, bad, field, reason = case
    path = write_bad(tmp_path / f"{name}.jsonl", bad)
    extra = ["-o", tmp_path / "out.jsonl"] if command == "convert" else []
    code, out, err = run_sftlab(capsys, "data", command, path, *extra)
    assert code != 0
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    msg = lines[0]
    assert str(path) in msg and "line 2" in msg and reason in msg
    if field:
        assert field in msg
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_input_subprocess_no_traceback(tmp_path):
    path = tmp_path / "bad.json"  # a JSON list: errors name the 0-based record index
    path.write_text(json.dumps([GOOD, {"instruction": "no answer"}]), encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "sftlab", "data", "convert", str(path), "-o", str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"error: {path}, index 1, field 'output': missing field"


def all_bad_file(tmp_path):
    lines = [json.dumps(GOOD)] + [c[1] if isinstance(c[1], str) else json.dumps(c[1]) for c in BAD_CASES]
    lines.append(json.dumps({**GOOD, "instruction": "Say hello"}))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def printed_counts(out: str) -> dict[str, int]:
    line = next(ln for ln in out.splitlines() if ln.startswith("rejected "))
    total = int(line.split()[1])
    counts = dict((k, int(v)) for k, v in (p.rsplit(" ", 1) for p in line.split(": ", 1)[1].split(" -> ")[0].split(", ")))
    assert sum(counts.values()) == total
    return counts


def test_convert_skip_writes_rejects(tmp_path, capsys):
    path = all_bad_file(tmp_path)
    out_path = tmp_path / "out.jsonl"
    code, out, err = run_sftlab(capsys, "data", "convert", path, "-o", out_path, "--on-error", "skip")
    assert code == 0, err
    recs, _ = read_records(out_path)
    assert [r["id"] for r in recs] == ["mixed-0", "mixed-6"]
    rejects_path = tmp_path / "out.jsonl.rejects.jsonl"
    rejects = [o for _, o in iter_jsonl(rejects_path)]
    counts = printed_counts(out)
    assert counts == {c[0]: 1 for c in BAD_CASES}
    assert len(rejects) == sum(counts.values()) == len(BAD_CASES)
    assert [r["code"] for r in rejects] == [c[0] for c in BAD_CASES]
    assert all(r["file"] == str(path) and r["unit"] == "line" for r in rejects)
    assert [r["index"] for r in rejects] == [2, 3, 4, 5, 6]
    # an explicit rejects path
    code, out, _ = run_sftlab(capsys, "data", "convert", path, "-o", out_path, "--on-error", "skip",
                       "--rejects", tmp_path / "r.jsonl")
    assert len(list(iter_jsonl(tmp_path / "r.jsonl"))) == sum(printed_counts(out).values())


def test_inspect_skip_writes_rejects_in_cwd(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_sftlab(capsys, "data", "inspect", all_bad_file(tmp_path), "--on-error", "skip")
    assert code == 0, err
    counts = printed_counts(out)
    assert len(list(iter_jsonl(tmp_path / "rejects.jsonl"))) == sum(counts.values()) == len(BAD_CASES)
    assert "rejects by reason" in out and "missing_field" in out


def test_convert_round_trip_via_cli(real_data_dir, tmp_path, capsys):
    out_path = tmp_path / "all.jsonl"
    inputs = [real_data_dir / n for n in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json",
                                          "mt_bench_question.jsonl")]
    code, out, err = run_sftlab(capsys, "data", "convert", *inputs, "-o", out_path)
    assert code == 0, err
    assert "wrote 1379 records" in out and "json/alpaca" in out and "json/sharegpt" in out
    expected = [r for p in inputs for r in read_records(p)[0]]
    assert read_records(out_path)[0] == expected
    lines = [json.loads(x) for x in out_path.read_text(encoding="utf-8").splitlines()]
    assert list(lines[0]) == ["id", "messages", "tools", "task_type", "source", "meta"]
    # glaive's bare function schemas are written in OpenAI's shape, the tools an OpenAI request carries
    tools = [t for r in lines if r["tools"] for t in r["tools"]]
    assert len(tools) > 191 and all(set(t) == {"type", "function"} and t["type"] == "function" for t in tools)


def test_convert_options(tmp_path, capsys):
    src = tmp_path / "qa.jsonl"
    src.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n", encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "convert", src, "-o", tmp_path / "o.jsonl", "--columns",
                       "question=instruction,answer=output", "--task-type", "math", "--format", "alpaca")
    assert code == 0, err
    (rec,), _ = read_records(tmp_path / "o.jsonl")
    assert rec["task_type"] == "math" and rec["messages"][1]["content"] == "4"
    code, _, err = run_sftlab(capsys, "data", "convert", src, "-o", tmp_path / "o.jsonl", "--format", "yaml")
    assert code == 2 and "unknown format 'yaml'" in err
    code, _, err = run_sftlab(capsys, "data", "convert", tmp_path / "missing.json", "-o", tmp_path / "o.jsonl")
    assert code == 2 and "missing.json" in err and "Traceback" not in err


def test_render_marks_supervised_spans(real_data_dir, tiny_model_dir, capsys):
    path = real_data_dir / "alpaca_en_demo.json"
    recs, _ = read_records(path)
    code, out, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", 1, "--count", 2,
                         "--plain")
    assert code == 0, err
    for rec in recs[1:3]:
        user, answer = (m["content"] for m in rec["messages"])
        assert f"<|im_start|>assistant\n⟦{answer}<|im_end|>⟧\n" in out
        assert f"<|im_start|>user\n{user}<|im_end|>" in out  # the prompt is not marked
    assert out.count("⟦") == 2 and out.count("⟧") == 2
    heads = [ln for ln in out.splitlines() if ln.startswith("── record")]
    assert len(heads) == 2 and heads[0].startswith(f"── record 1 id={recs[1]['id']}") and "supervised in 1 turns" in heads[0]


def test_render_rich_and_errors(real_data_dir, tiny_model_dir, capsys):
    path = real_data_dir / "identity.json"
    code, out, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir)
    assert code == 0, err
    assert "⟦" not in out and "{{name}}" in out and "tokens," in out
    code, _, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", 500)
    assert code == 2 and "out of range (91 records)" in err
    code, out, err = run_sftlab(capsys, "data", "render", real_data_dir / "mt_bench_question.jsonl", "--tokenizer",
                         tiny_model_dir, "--plain")
    assert code == 0 and "prompt only" in out and "⟦" not in out


def test_inspect_real_data(real_data_dir, tiny_model_dir, capsys):
    code, out, err = run_sftlab(capsys, "data", "inspect", real_data_dir / "glaive_toolcall_en_demo.json",
                         real_data_dir / "mt_bench_question.jsonl")
    assert code == 0, err
    for word in ("json/sharegpt", "jsonl/prompts", "tool", "assistant (tool calls)", "211", "writing",
                 "380 records (80 prompt-only"):
        assert word in out, word
    code, out, err = run_sftlab(capsys, "data", "inspect", real_data_dir / "identity.json",
                         real_data_dir / "mt_bench_question.jsonl", "--tokenizer", tiny_model_dir)
    assert code == 0, err
    for word in ("p50", "p90", "p99", "max", "supervised tokens", "prompt tokens", "rendered 91 of 91"):
        assert word in out, word


def test_render_last_assistant_shortening_and_a_refused_template(real_data_dir, tiny_model_dir, tmp_path, capsys):
    """`data render --train-on last_assistant`: a row too long keeps its last answer whole, says how many exchanges
    it lost; a template whose answers cannot be located is one line naming it, exit 2."""
    from sftlab.data.render import load_tokenizer, render_records

    path = real_data_dir / "glaive_toolcall_en_demo.json"
    (s,), _ = render_records(read_records(path)[0][:1], load_tokenizer(str(tiny_model_dir)), train_on="last_assistant",
                             max_length=100_000)
    end = max(i for i, t in enumerate(s["turn_index"]) if t >= 0) + 1
    code, out, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--train-on", "last_assistant",
                         "--max-length", end - 1, "--plain")
    assert code == 0, err
    assert "oldest exchanges dropped to fit --max-length" in out and out.count("⟦") == 1 and "<|im_end|>⟧" in out
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}", encoding="utf-8")
    code, out, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--chat-template", bad)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"chat template {bad}: cannot locate the assistant turns" in err


# -- skip mode, chat-control text, render, one reader for every command (the data-path audit, issue 15) ------


def test_large_reject_share_is_loud(tmp_path, capsys):
    path = write_lines(tmp_path / "x.jsonl", [QA[0], {"instruction": "q"}, {"instruction": "q2"}])
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl", "--on-error", "skip")
    assert code == 0
    assert "warning: 2 of 3 records (67%) were rejected" in err


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_nothing_kept_is_an_error(tmp_path, capsys, command):
    path = tmp_path / "x.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode("utf-16"))
    extra = ["-o", tmp_path / "o.jsonl"] if command == "convert" else ["--rejects", tmp_path / "r.jsonl"]
    code, _, err = run_sftlab(capsys, "data", command, path, "--on-error", "skip", *extra)
    assert code == 2 and "every record was rejected (1 of 1" in err


def test_end_of_turn_text_is_counted_escaped_or_rejected(tmp_path, capsys, tiny_model_dir):
    from sftlab.data.render import load_tokenizer, render_records, supervised_text

    row = {"instruction": "What ends a ChatML turn?", "output": "The string <|im_end|> does."}
    path = write_lines(tmp_path / "eot.jsonl", [row, QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out)
    assert code == 0 and f"warning: {path}: 1 message(s) hold chat-control strings" in err

    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out, "--special-text", "reject")
    assert code == 2 and "field 'output'" in err and "<|im_end|>" in err
    two = write_lines(tmp_path / "two.jsonl", [{"instruction": "Say <|im_end|>", "output": "<|im_end|>"}])
    code, _, err = run_sftlab(capsys, "data", "convert", two, "-o", out)  # the count is of messages (was of records)
    assert code == 0 and f"warning: {two}: 2 message(s) hold chat-control strings" in err

    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out, "--special-text", "escape")
    assert code == 0
    rec = read_jsonl(out)[0]
    tok = load_tokenizer(str(tiny_model_dir))
    (sample,), _ = render_records([rec], tok)
    # the whole answer is supervised, closed by the template's own end-of-turn token only
    assert supervised_text(sample, tok)[0].replace("\u200b", "") == "The string <|im_end|> does.<|im_end|>"
    assert sample["input_ids"].count(tok.convert_tokens_to_ids("<|im_end|>")) == 2  # user turn + assistant turn


def test_render_of_assistant_first_is_one_line(tmp_path, capsys, tiny_model_dir):
    path = write_lines(tmp_path / "a.jsonl", [{"messages": messages(("assistant", "hi"))}])
    code, _, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir)
    assert code == 2 and err.startswith("error: ") and "starts with an assistant turn" in err


def test_render_answer_beyond_max_length(tmp_path, capsys, tiny_model_dir):
    path = write_lines(tmp_path / "r.jsonl", [{"instruction": "a long question " * 20, "output": "the answer"}])
    code, _, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--max-length", "8")
    assert code == 2 and "beyond max_length=8" in err and "--max-length" in err


@pytest.mark.parametrize("command", ["convert", "inspect", "clean", "dedup"])
def test_empty_file_is_an_error_everywhere(tmp_path, capsys, command):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    extra = [] if command == "inspect" else ["-o", tmp_path / "o.jsonl"]
    code, _, err = run_sftlab(capsys, "data", command, path, *extra)
    assert code == 2 and "empty file (no records)" in err


@pytest.mark.parametrize("command", ["convert", "clean", "dedup"])
def test_bom_jsonl_is_accepted_everywhere(tmp_path, capsys, command):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in QA).encode("utf-8") + b"\n")
    code, _, err = run_sftlab(capsys, "data", command, path, "-o", tmp_path / "o.jsonl")
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 5


def test_render_shows_a_good_record_despite_a_bad_line_elsewhere(tmp_path, capsys, tiny_model_dir):
    path = write_lines(tmp_path / "r.jsonl", [QA[0], "{broken", QA[1]])
    code, out, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", "2", "--plain")
    assert code == 0, err
    assert "── record 2" in out and "answer 1" in out
    code, _, err = run_sftlab(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", "1")
    assert code == 2 and "line 2: malformed JSON" in err
