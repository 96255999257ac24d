"""Readers: real public files, every input type, format details, round trip, and bad-input errors."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from cli_helpers import read_jsonl, run_sftlab, write_lines
from record_helpers import QA, messages

from sftlab.data.formats import (
    detect_format,
    format_reject_counts,
    read_many,
    read_records,
    reject_counts,
    write_rejects,
)
from sftlab.data.records import RecordError, iter_jsonl, validate_record, write_jsonl

REAL = {"alpaca_en_demo.json": 999, "identity.json": 91, "glaive_toolcall_en_demo.json": 300,
        "mt_bench_question.jsonl": 80}


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def alpaca_raw(real_data_dir):
    return json.loads((real_data_dir / "alpaca_en_demo.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.parametrize("name", list(REAL))
def test_real_file_loads(real_data_dir, name):
    recs, rejects = read_records(real_data_dir / name)
    assert len(recs) == REAL[name] and rejects == []
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        validate_record(r, require_answer=not r["meta"].get("prompt_only"))


def test_alpaca_fields(real_data_dir, alpaca_raw):
    recs, _ = read_records(real_data_dir / "alpaca_en_demo.json")
    for raw, rec in zip(alpaca_raw, recs, strict=True):
        user, answer = rec["messages"]
        assert user["role"] == "user" and answer["role"] == "assistant"
        expected = raw["instruction"] + "\n" + raw["input"] if raw["input"] else raw["instruction"]
        assert user["content"] == expected and answer["content"] == raw["output"]
    assert recs[0]["id"] == "alpaca_en_demo-0" and recs[0]["task_type"] == "alpaca_en_demo"
    # non-ASCII text is kept as is
    non_ascii = [(raw, rec) for raw, rec in zip(alpaca_raw, recs, strict=True)
                 if any(ord(c) > 127 for c in raw["output"])]
    assert non_ascii
    assert all(rec["messages"][1]["content"] == raw["output"] for raw, rec in non_ascii)


def test_identity_keeps_placeholders_and_non_ascii(real_data_dir):
    raw = json.loads((real_data_dir / "identity.json").read_text(encoding="utf-8"))
    recs, _ = read_records(real_data_dir / "identity.json")
    assert "{{name}}" in recs[0]["messages"][1]["content"]
    texts = [m["content"] for r in recs for m in r["messages"]]
    assert sum(any(ord(c) > 127 for c in t) for t in texts) == sum(
        any(ord(c) > 127 for c in x["instruction"] + x["input"]) + any(ord(c) > 127 for c in x["output"])
        for x in raw)


def test_glaive_tool_calls_observations_and_tools(real_data_dir):
    raw = json.loads((real_data_dir / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    recs, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    roles = Counter(m["role"] for r in recs for m in r["messages"])
    froms = Counter(m["from"] for r in raw for m in r["conversations"])
    assert roles["tool"] == froms["observation"] > 0
    assert roles["assistant"] == froms["gpt"] + froms["function_call"]
    assert roles["user"] == froms["human"]
    for r, x in zip(recs, raw, strict=True):
        # parsed from the JSON string, each bare function schema wrapped in OpenAI's shape (what requests carry)
        assert r["tools"] == ([{"type": "function", "function": t} for t in json.loads(x["tools"])] or None)
        for m, c in zip(r["messages"], x["conversations"], strict=True):
            if c["from"] == "function_call":
                call = json.loads(c["value"])
                assert m["tool_calls"] == [{"type": "function", "function": {"name": call["name"],
                                                                             "arguments": call["arguments"]}}]
            else:
                assert m["content"] == c["value"]
    assert sum(r["tools"] is not None for r in recs) > 0


def test_mt_bench_prompts(real_data_dir):
    recs, _ = read_records(real_data_dir / "mt_bench_question.jsonl")
    assert recs[0]["id"] == "81" and recs[0]["task_type"] == "writing"
    assert Counter(r["task_type"] for r in recs) == {c: 10 for c in (
        "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")}
    for r in recs:
        assert r["meta"]["prompt_only"] is True
        assert [m["role"] for m in r["messages"]] == ["user", "user"]


@pytest.mark.parametrize("name", list(REAL))
def test_round_trip_is_lossless(real_data_dir, tmp_path, name):
    recs, _ = read_records(real_data_dir / name)
    write_jsonl(recs, tmp_path / "out.jsonl")
    again, rejects = read_records(tmp_path / "out.jsonl")
    assert again == recs and rejects == []
    # explicit format override reads the same
    assert read_records(tmp_path / "out.jsonl", "openai")[0] == recs


# ------------------------------------------------------------------------------------------ input types


ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Translate", "input": "Guten Tag – schön", "output": "Good day,\nnice\n\n— ok"},
    {"instruction": "Sum", "input": "2, 3", "output": "5", "system": "Be exact.", "history": [["1+1?", "2"]]},
]


def uniform(rows):
    """Every row with every key (Arrow's from_pylist takes the columns from the first row); absent -> None."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


@pytest.fixture
def expected_rows(tmp_path):
    return read_records(write_json(tmp_path / "ref.json", ROWS))[0]


def same_except_naming(a, b):
    strip = [{**r, "id": r["id"].split("-")[-1], "source": "", "task_type": ""} for r in a]
    return strip == [{**r, "id": r["id"].split("-")[-1], "source": "", "task_type": ""} for r in b]


def test_alpaca_details(expected_rows):
    r0, r1, r2 = expected_rows
    assert r0["messages"] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert r1["messages"][0]["content"] == "Translate\nGuten Tag – schön"
    assert [m["role"] for m in r2["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert r2["messages"][1:3] == [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]


def test_jsonl_input(tmp_path, expected_rows):
    recs, _ = read_records(write_lines(tmp_path / "ref.jsonl", ROWS))
    assert recs == expected_rows


def test_json_dict_holding_one_list_and_jsonl_named_json(tmp_path, expected_rows):
    assert read_records(write_json(tmp_path / "ref.json", {"data": ROWS}))[0] == expected_rows
    assert read_records(write_lines(tmp_path / "ref.json", ROWS))[0] == expected_rows
    with pytest.raises(RecordError, match="several lists"):
        read_records(write_json(tmp_path / "two.json", {"train": ROWS, "test": ROWS}))


def test_parquet_input(tmp_path, expected_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(uniform(ROWS)), tmp_path / "ref.parquet")
    recs, _ = read_records(tmp_path / "ref.parquet")
    assert recs == expected_rows  # Arrow's nulls for absent fields (system/history) are treated as absent


def test_parquet_canonical_records(tmp_path, expected_rows):
    """Canonical records as Parquet: nested structs, and nested columns stored as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{**r, "meta": {"n": i}, "messages": [dict(m, loss_weight=1.0) if m["role"] == "assistant" else m
                                                 for m in r["messages"]]}
            for i, r in enumerate(expected_rows)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "structs.parquet")
    assert read_records(tmp_path / "structs.parquet")[0] == recs
    as_text = [{**r, "messages": json.dumps(r["messages"]), "meta": json.dumps(r["meta"])} for r in recs]
    pq.write_table(pa.Table.from_pylist(as_text), tmp_path / "text.parquet")
    assert read_records(tmp_path / "text.parquet")[0] == recs


def test_csv_input_with_column_mapping(tmp_path, expected_rows):
    path = tmp_path / "ref.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "context", "answer", "system", "history"])
        for r in ROWS:
            w.writerow([r["instruction"], r["input"], r["output"], r.get("system", ""),
                        json.dumps(r["history"]) if "history" in r else ""])
    recs, _ = read_records(path, columns={"question": "instruction", "context": "input", "answer": "output"})
    assert recs == expected_rows


def test_hf_datasets_dir(tmp_path, expected_rows):
    import datasets

    datasets.Dataset.from_list(uniform(ROWS)).save_to_disk(str(tmp_path / "ref"))
    assert read_records(tmp_path / "ref")[0] == expected_rows
    datasets.DatasetDict({"train": datasets.Dataset.from_list(uniform(ROWS))}).save_to_disk(str(tmp_path / "dd" / "ref"))
    assert same_except_naming(read_records(tmp_path / "dd" / "ref")[0], expected_rows)
    two = datasets.DatasetDict({"train": datasets.Dataset.from_list(uniform(ROWS)), "test": datasets.Dataset.from_list(uniform(ROWS))})
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(RecordError, match="splits train, test"):
        read_records(tmp_path / "two")
    assert same_except_naming(read_records(tmp_path / "two" / "test")[0], expected_rows)


# ------------------------------------------------------------------------------------------ formats


def test_detect_format():
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"messages": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert detect_format({"messages": [{"role": "user", "content": "x"}]}) == "openai"
    assert detect_format({"question_id": 1, "turns": ["x"]}) == "prompts"
    assert detect_format({"text": "x"}) is None


def test_openai_messages_details(tmp_path):
    row = {"id": "r1", "task_type": "tools/weather", "source": "mine", "meta": {"k": [1, 2]},
           "tools": json.dumps([{"type": "function", "function": {"name": "get_weather"}}]),
           "model": "gpt-x",
           "messages": [{"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "nice"}]},
                        {"role": "user", "content": "weather?"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                        {"role": "assistant", "content": "Sunny.", "loss_weight": 2.0}]}
    (rec,), _ = read_records(write_lines(tmp_path / "x.jsonl", [row]))
    assert rec["id"] == "r1" and rec["task_type"] == "tools/weather" and rec["source"] == "mine"
    assert rec["meta"] == {"model": "gpt-x", "k": [1, 2]}  # unknown fields are kept in meta
    assert rec["tools"] == [{"type": "function", "function": {"name": "get_weather"}}]
    msgs = rec["messages"]
    assert msgs[0]["content"] == "be nice"
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": row["messages"][2]["tool_calls"]}
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert msgs[4]["loss_weight"] == 2.0
    bad = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                        {"role": "assistant", "content": "ok"}]}
    with pytest.raises(RecordError) as e:
        read_records(write_lines(tmp_path / "img.jsonl", [bad]))
    assert e.value.code == "unsupported_content" and e.value.field == "messages[0].content[0]"


def test_openai_finetuning_weight_zero_is_not_supervised(tmp_path, tiny_tokenizer):
    """OpenAI fine-tuning data marks assistant messages not to train on with `weight: 0`: read as loss_weight 0
    (was kept as an unknown key and the turn trained on)."""
    from sftlab.data.render import render_records

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad", "weight": 0},
                        {"role": "user", "content": "again"}, {"role": "assistant", "content": "good", "weight": 1}]}
    (rec,), _ = read_records(write_lines(tmp_path / "w.jsonl", [row]))
    assert [m.get("loss_weight") for m in rec["messages"]] == [None, 0, None, 1]
    assert all("weight" not in m for m in rec["messages"])
    (sample,), _ = render_records([rec], tiny_tokenizer)
    supervised = tiny_tokenizer.decode([t for t, lab in zip(sample["input_ids"], sample["labels"], strict=True)
                                        if lab != -100])
    assert "good" in supervised and "bad" not in supervised
    for weight, reason in (("0", "must be a number >= 0"), (True, "must be a number >= 0")):
        bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": weight}]}
        with pytest.raises(RecordError, match=reason) as e:
            read_records(write_lines(tmp_path / "bad.jsonl", [bad]))
        assert e.value.field == "messages[1].weight"


def test_openai_developer_role_and_legacy_function_calling(tmp_path):
    """OpenAI's `developer` role is the system turn; the legacy function-calling fine-tuning layout (`functions`,
    an assistant `function_call`, a `function` result) reads as tools, tool_calls and a tool turn (all were refused
    as 'unknown role' / 'content: missing field')."""
    fn = {"name": "add", "description": "add numbers", "parameters": {"type": "object", "properties": {}}}
    row = {"functions": [fn],
           "messages": [{"role": "developer", "content": "be terse"}, {"role": "user", "content": "2+3?"},
                        {"role": "assistant", "content": None,
                         "function_call": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}},
                        {"role": "function", "name": "add", "content": "5"},
                        {"role": "assistant", "content": "5"}]}
    (rec,), _ = read_records(write_lines(tmp_path / "f.jsonl", [row]))
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    call = rec["messages"][2]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "add"
    assert json.loads(call["function"]["arguments"]) == {"a": 2, "b": 3}
    assert rec["tools"] == [{"type": "function", "function": fn}] and "functions" not in rec["meta"]
    both = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "", "function_call": {"name": "add", "arguments": "{}"},
                          "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": "{}"}}]},
                         {"role": "tool", "content": "0"}, {"role": "assistant", "content": "0"}]}
    with pytest.raises(RecordError, match="not both") as e:
        read_records(write_lines(tmp_path / "both.jsonl", [both]))
    assert e.value.field == "messages[1].function_call"


def test_sharegpt_details_and_extra_roles(tmp_path):
    row = {"system": "sys", "tools": [{"name": "f"}],
           "conversations": [{"from": "human", "value": "q"},
                             {"from": "function_call", "value": '[{"name": "f", "arguments": "{\\"a\\": 1}"}]'},
                             {"from": "observation", "value": "r"},
                             {"from": "critic", "value": "meh"},
                             {"from": "gpt", "value": "done"}]}
    path = write_json(tmp_path / "s.json", [row])
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert e.value.code == "unknown_role" and e.value.field == "conversations[3].from" and e.value.index == 0
    (rec,), _ = read_records(path, extra_roles=["critic"])
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "tool", "critic", "assistant"]
    assert rec["messages"][2]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert rec["tools"] == [{"type": "function", "function": {"name": "f"}}]


def test_tools_are_read_in_openai_shape(tmp_path):
    """Bare function schemas (glaive, sharegpt, LLaMA-Factory files) are wrapped as OpenAI tools, the shape requests
    carry; OpenAI tools are kept; a wrapped tool missing its type gets it; a tool without a name is refused, naming
    tools[i], in any format; records read back from canonical files keep the wrapped form."""
    bare = {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}
    wrapped = {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}
    conv = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows = [{"conversations": conv, "tools": json.dumps([bare, wrapped])},
            {"conversations": conv, "tools": {"function": {"name": "h"}}},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [bare]},
            {"instruction": "q", "output": "a", "tools": "[]"}]
    recs, _ = read_records(write_lines(tmp_path / "t.jsonl", rows))
    assert [r["tools"] for r in recs] == [[{"type": "function", "function": bare}, wrapped],
                                          [{"type": "function", "function": {"name": "h"}}],
                                          [{"type": "function", "function": bare}], None]
    write_jsonl(recs, tmp_path / "canonical.jsonl")
    assert read_records(tmp_path / "canonical.jsonl")[0] == recs
    for bad, field in (([bare, {"description": "no name"}], "tools[1]"), (["f"], "tools[0]"),
                       ([{"type": "function", "function": {"name": " "}}], "tools[0]")):
        with pytest.raises(RecordError) as e:
            read_records(write_lines(tmp_path / "bad.jsonl", [{"conversations": conv, "tools": bad}]))
        assert e.value.field == field and e.value.code == "bad_tools" and e.value.index == 1


def test_task_type_and_id_precedence(tmp_path):
    rows = [{"instruction": "a", "output": "b", "task_type": "own", "category": "cat"},
            {"instruction": "a", "output": "b", "category": "cat", "id": 7},
            {"instruction": "a", "output": "b"}]
    path = write_json(tmp_path / "stemname.json", rows)
    recs, _ = read_records(path, task_type="arg")
    assert [r["task_type"] for r in recs] == ["own", "cat", "arg"]
    assert [r["id"] for r in recs] == ["stemname-0", "7", "stemname-2"]
    assert recs[0]["meta"] == {"category": "cat"}
    assert [r["task_type"] for r in read_records(path)[0]] == ["own", "cat", "stemname"]
    assert read_records(path, "alpaca", source="src")[0][2]["source"] == "src"


def test_read_many_and_duplicate_ids(tmp_path):
    a = write_json(tmp_path / "a.json", ROWS)
    b = write_lines(tmp_path / "b.jsonl", [{"id": "x", "instruction": "q", "output": "a"}])
    recs, _ = read_many([a, b])
    assert [r["id"] for r in recs] == ["a-0", "a-1", "a-2", "x"]
    with pytest.raises(RecordError) as e:
        read_many([b, b])
    assert e.value.code == "duplicate_id" and "first at" in e.value.reason


# ------------------------------------------------------------------------------------------ bad input

BAD_JSONL = [
    {"instruction": "ok", "output": "fine"},                                          # line 1: good
    '{"instruction": "broken", "output": ',                                           # line 2: malformed JSON
    {"instruction": "no answer"},                                                     # line 3: missing field
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},   # 4: empty answer
    {"conversations": [{"from": "human", "value": "q"}, {"from": "wizard", "value": "a"}]},  # 5: unknown role
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                       {"from": "human", "value": "and?"}]},                          # 6: ends on a user turn
    [1, 2],                                                                           # 7: not an object
    {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{oops"}]},  # 8
]
EXPECTED = [(2, "malformed_json", None), (3, "missing_field", "output"),
            (4, "empty_assistant", "conversations[1].value"), (5, "unknown_role", "conversations[1].from"),
            (6, "not_ending_on_assistant", "conversations[2].from"), (7, "not_an_object", None),
            (8, "bad_tool_call", "conversations[1].value")]


def test_bad_records_raise_with_location(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", BAD_JSONL)
    with pytest.raises(RecordError) as e:
        read_records(path)
    err = e.value
    assert (err.file, err.index, err.unit, err.code) == (str(path), 2, "line", "malformed_json")
    assert str(err).startswith(f"{path}, line 2: malformed JSON")
    for lineno, code, field in EXPECTED[1:]:
        one = write_lines(tmp_path / f"one{lineno}.jsonl", [BAD_JSONL[0], BAD_JSONL[lineno - 1]])
        with pytest.raises(RecordError) as e:
            read_records(one)  # the format is detected per record
        assert (e.value.index, e.value.code, e.value.field) == (2, code, field)


def test_bad_records_skipped_into_rejects(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", BAD_JSONL)
    recs, rejects = read_records(path, on_error="skip")
    assert [r["id"] for r in recs] == ["bad-0"]
    assert [(r["index"], r["code"], r["field"]) for r in rejects] == EXPECTED
    assert all(r["file"] == str(path) and r["unit"] == "line" for r in rejects)
    assert rejects[0]["raw"] == BAD_JSONL[1] and rejects[1]["raw"] == BAD_JSONL[2]
    assert reject_counts(rejects)["missing_field"] == 1
    assert format_reject_counts(rejects).startswith("rejected 7 records: bad_tool_call 1, empty_assistant 1")
    n = write_rejects(rejects, tmp_path / "rejects.jsonl")
    assert n == 7 and [o["code"] for _, o in iter_jsonl(tmp_path / "rejects.jsonl")] == [c for _, c, _ in EXPECTED]


def test_index_based_errors_for_json(tmp_path):
    path = write_json(tmp_path / "x.json", [ROWS[0], {"instruction": "q", "output": ""}])
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert (e.value.index, e.value.unit, e.value.field, e.value.code) == (1, "index", "output", "empty_assistant")
    assert "index 1" in str(e.value) and "field 'output'" in str(e.value)
    (tmp_path / "broken.json").write_text('[{"instruction": "q",\n "output": }]', encoding="utf-8")
    with pytest.raises(RecordError, match="malformed JSON .* at line 2 column"):
        read_records(tmp_path / "broken.json")


def test_bad_utf8_line_is_a_reject(tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b'{"instruction": "q", "output": "a"}\n{"instruction": "\xff", "output": "a"}\n')
    recs, rejects = read_records(path, on_error="skip")
    assert len(recs) == 1 and rejects[0]["code"] == "bad_encoding" and rejects[0]["index"] == 2


def test_unknown_format_and_undetectable_rows(tmp_path):
    path = write_json(tmp_path / "t.json", [{"text": "free text"}])
    with pytest.raises(RecordError, match="cannot detect the format"):
        read_records(path)
    with pytest.raises(RecordError, match="unknown format 'yaml'"):
        read_records(path, "yaml")


# -- bad input through `sftlab data convert | inspect` (the data-path audit, issue 15) -----------------------


def test_same_file_name_in_two_folders_keeps_every_record(tmp_path, capsys):
    en = tmp_path / "en" / "train.json"
    zh = tmp_path / "zh" / "train.json"
    for p in (en, zh):
        p.parent.mkdir()
        p.write_text(json.dumps(QA), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, _, err = run_sftlab(capsys, "data", "convert", en, zh, "-o", out, "--on-error", "skip")
    assert code == 0, err
    recs = read_jsonl(out)
    assert len(recs) == 10 and len({r["id"] for r in recs}) == 10
    assert {r["task_type"] for r in recs} == {"en/train", "zh/train"}
    assert recs[0]["id"] == "en/train-0" and recs[5]["id"] == "zh/train-0"


def test_file_labels_are_the_shortest_distinct_path_tails(tmp_path):
    from sftlab.data.formats import file_labels

    paths = [tmp_path / "en" / "train.json", tmp_path / "zh" / "train.json", tmp_path / "a" / "dev.json",
             tmp_path / "x" / "t.json", tmp_path / "x" / "t.jsonl"]
    assert file_labels(paths) == ["en/train", "zh/train", "dev", "t.json", "t.jsonl"]
    assert file_labels([tmp_path / "data.json"]) == ["data"]


TOOL_CASES = [
    ("args_not_json", [{"type": "function", "function": {"name": "f", "arguments": "{not json"}}],
     "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
    ("args_json_list", [{"type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}],
     "messages[1].tool_calls[0].function.arguments", "must be a JSON object"),
    ("no_name", [{"type": "function", "function": {"arguments": "{}"}}],
     "messages[1].tool_calls[0].function.name", "no function name"),
    ("not_a_list", {"type": "function", "function": {"name": "f", "arguments": {}}},
     "messages[1].tool_calls", "must be a list"),
]


@pytest.mark.parametrize("case", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_bad_openai_tool_calls_are_one_line_errors(tmp_path, capsys, case):
    _, calls, field, reason = case
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls},
                        {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "done"}]}
    path = write_lines(tmp_path / "t.jsonl", [row])
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2
    assert err.count("\n") == 1 and f"field '{field}'" in err and reason in err and "line 1" in err


def test_sharegpt_function_call_string_arguments_must_be_json(tmp_path, capsys):
    call = json.dumps({"name": "get_weather", "arguments": "city=Paris"})
    row = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": call},
                             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "sunny"}]}
    good = dict(row, conversations=[row["conversations"][0],
                                    {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                                   "arguments": '{"city": "Paris"}'})},
                                    *row["conversations"][2:]])
    path = write_lines(tmp_path / "g.jsonl", [row, good])
    out = tmp_path / "o.jsonl"
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0
    rejects = read_jsonl(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["index"], r["code"], r["field"]) for r in rejects] == [(1, "bad_tool_call", "conversations[1].value.arguments")]
    (kept,) = read_jsonl(out)
    assert kept["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_kto_records_are_refused(tmp_path, capsys):
    rows = [{"messages": messages(("user", "q"), ("assistant", "good")), "label": True},
            {"messages": messages(("user", "q"), ("assistant", "bad")), "label": False}]
    path = tmp_path / "kto_en_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "KTO record" in err and "field 'label'" in err


def test_multimodal_records_are_refused(tmp_path, capsys):
    rows = [{"messages": messages(("user", "<image>Who are they?"), ("assistant", "Two players.")),
             "images": ["mllm_demo_data/1.jpg"]}]
    path = tmp_path / "mllm_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "multimodal record" in err and "field 'images'" in err


def test_dpo_file_is_named_preference_data(tmp_path, capsys):
    rows = [{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
             "rejected": {"from": "gpt", "value": "bad"}}]
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "inspect", path)
    assert code == 2 and "preference (DPO) record" in err and "DPOTrainer" in err
    assert "ends on a 'user' turn" not in err


def test_utf16_says_utf16(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode("utf-16"))
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "UTF-16" in err


def test_nan_is_rejected_and_never_written(tmp_path, capsys):
    path = write_lines(tmp_path / "n.jsonl", ['{"instruction": "q", "output": "a", "score": NaN}',
                                        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                                        '"content": "a", "loss_weight": Infinity}]}', QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0
    def strict(constant):
        raise AssertionError(f"invalid JSON constant {constant} written")

    for f in (out, tmp_path / "o.jsonl.rejects.jsonl"):  # both files are strict JSON
        for line in f.read_text(encoding="utf-8").splitlines():
            json.loads(line, parse_constant=strict)
    rejects = read_jsonl(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["code"], r["field"]) for r in rejects] == [("non_finite_number", "score"),
                                                          ("non_finite_number", "messages[1].loss_weight")]
    assert len(read_jsonl(out)) == 1


def test_nan_loss_weight_in_parquet_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "q", "loss_weight": None},
                                           {"role": "assistant", "content": "a", "loss_weight": float("nan")}]]}),
                   path)
    recs, rejects = read_records(path, on_error="skip")
    assert not recs and rejects[0]["code"] == "non_finite_number"


def test_parquet_values_that_are_not_json_name_the_column(tmp_path, capsys):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"instruction": ["q"], "output": ["a"], "created": [datetime.datetime(2026, 1, 1)]}), path)
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "index 0, field 'created': a datetime value is not JSON" in err


def test_assistant_first_is_refused_at_read_time(tmp_path, capsys):
    row = {"messages": messages(("system", "s"), ("assistant", "Hello, how can I help?"), ("user", "q"), ("assistant", "a"))}
    path = write_lines(tmp_path / "a.jsonl", [row])
    for cmd in (["convert", path, "-o", tmp_path / "o.jsonl"], ["inspect", path]):
        code, _, err = run_sftlab(capsys, "data", *cmd)
        assert code == 2 and "field 'messages[1].role'" in err and "starts with an assistant turn" in err


def test_lone_surrogate_and_deep_nesting_are_rejects(tmp_path, capsys):
    path = write_lines(tmp_path / "s.jsonl", ['{"instruction": "q\\ud83d", "output": "a"}', "[" * 100_000, QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0, err
    rejects = read_jsonl(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["index"], r["code"]) for r in rejects] == [(1, "bad_unicode"), (2, "malformed_json")]
    assert "nested too deeply" in rejects[1]["reason"] and len(read_jsonl(out)) == 1


def test_json_array_errors_say_index(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([QA[0], {"instruction": "q"}]), encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and err.strip() == f"error: {path}, index 1, field 'output': missing field"


def test_unterminated_csv_quote_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text('instruction,output\nq1,"unterminated\nq2,a2\n', encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "malformed CSV" in err


def test_duplicate_json_keys_warn(tmp_path, capsys):
    path = write_lines(tmp_path / "d.jsonl", [QA[0], '{"instruction": "q", "output": "first", "output": "second"}'])
    code, _, err = run_sftlab(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 0 and "1 record(s) repeat a JSON key" in err and "line 2" in err and "'output'" in err
