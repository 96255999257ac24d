"""Regression tests for the outside audit of the data path (issue 15): one test (or more) per numbered item.

Each test runs the CLI in-process the way the defect was seen, and fails on the code before the fix.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from sftlab.data.formats import read_records

QA = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(5)]


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `sftlab ARGV` in this process."""
    code, out, err = run_cli(list(argv), capsys)
    assert "Traceback" not in out + err
    return code, out, err


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_out(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# -- 1. ids and default task types are unique per file path --------------------------------------------------


def test_01_same_file_name_in_two_folders_keeps_every_record(tmp_path, capsys):
    en = tmp_path / "en" / "train.json"
    zh = tmp_path / "zh" / "train.json"
    for p in (en, zh):
        p.parent.mkdir()
        p.write_text(json.dumps(QA), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "data", "convert", en, zh, "-o", out, "--on-error", "skip")
    assert code == 0, err
    recs = read_out(out)
    assert len(recs) == 10 and len({r["id"] for r in recs}) == 10
    assert {r["task_type"] for r in recs} == {"en/train", "zh/train"}
    assert recs[0]["id"] == "en/train-0" and recs[5]["id"] == "zh/train-0"


def test_01_file_labels_are_the_shortest_distinct_path_tails(tmp_path):
    from sftlab.data.formats import file_labels

    paths = [tmp_path / "en" / "train.json", tmp_path / "zh" / "train.json", tmp_path / "a" / "dev.json",
             tmp_path / "x" / "t.json", tmp_path / "x" / "t.jsonl"]
    assert file_labels(paths) == ["en/train", "zh/train", "dev", "t.json", "t.jsonl"]
    assert file_labels([tmp_path / "data.json"]) == ["data"]


def test_01_large_reject_share_is_loud(tmp_path, capsys):
    path = jsonl(tmp_path / "x.jsonl", [QA[0], {"instruction": "q"}, {"instruction": "q2"}])
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl", "--on-error", "skip")
    assert code == 0
    assert "warning: 2 of 3 records (67%) were rejected" in err


# -- 2. tool calls are validated at read time ----------------------------------------------------------------


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
def test_02_bad_openai_tool_calls_are_one_line_errors(tmp_path, capsys, case):
    _, calls, field, reason = case
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls},
                        {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "done"}]}
    path = jsonl(tmp_path / "t.jsonl", [row])
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2
    assert err.count("\n") == 1 and f"field '{field}'" in err and reason in err and "line 1" in err


def test_02_sharegpt_function_call_string_arguments_must_be_json(tmp_path, capsys):
    call = json.dumps({"name": "get_weather", "arguments": "city=Paris"})
    row = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": call},
                             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "sunny"}]}
    good = dict(row, conversations=[row["conversations"][0],
                                    {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                                                   "arguments": '{"city": "Paris"}'})},
                                    *row["conversations"][2:]])
    path = jsonl(tmp_path / "g.jsonl", [row, good])
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0
    rejects = read_out(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["index"], r["code"], r["field"]) for r in rejects] == [(1, "bad_tool_call", "conversations[1].value.arguments")]
    (kept,) = read_out(out)
    assert kept["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


# -- 3. KTO and multimodal data are refused ------------------------------------------------------------------


def test_03_kto_records_are_refused(tmp_path, capsys):
    rows = [{"messages": msgs(("user", "q"), ("assistant", "good")), "label": True},
            {"messages": msgs(("user", "q"), ("assistant", "bad")), "label": False}]
    path = tmp_path / "kto_en_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "KTO record" in err and "field 'label'" in err


def test_03_multimodal_records_are_refused(tmp_path, capsys):
    rows = [{"messages": msgs(("user", "<image>Who are they?"), ("assistant", "Two players.")),
             "images": ["mllm_demo_data/1.jpg"]}]
    path = tmp_path / "mllm_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "multimodal record" in err and "field 'images'" in err


# -- 4. preference data is recognised ------------------------------------------------------------------------


def test_04_dpo_file_is_named_preference_data(tmp_path, capsys):
    rows = [{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
             "rejected": {"from": "gpt", "value": "bad"}}]
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    code, _, err = run(capsys, "data", "inspect", path)
    assert code == 2 and "preference (DPO) record" in err and "DPOTrainer" in err
    assert "ends on a 'user' turn" not in err


# -- 5. skip mode exits non-zero when nothing is kept ----------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_05_nothing_kept_is_an_error(tmp_path, capsys, command):
    path = tmp_path / "x.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode("utf-16"))
    extra = ["-o", tmp_path / "o.jsonl"] if command == "convert" else ["--rejects", tmp_path / "r.jsonl"]
    code, _, err = run(capsys, "data", command, path, "--on-error", "skip", *extra)
    assert code == 2 and "every record was rejected (1 of 1" in err


def test_05_utf16_says_utf16(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode("utf-16"))
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "UTF-16" in err


# -- 6. non-finite numbers ---------------------------------------------------------------------------------------


def test_06_nan_is_rejected_and_never_written(tmp_path, capsys):
    path = jsonl(tmp_path / "n.jsonl", ['{"instruction": "q", "output": "a", "score": NaN}',
                                        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                                        '"content": "a", "loss_weight": Infinity}]}', QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0
    def strict(constant):
        raise AssertionError(f"invalid JSON constant {constant} written")

    for f in (out, tmp_path / "o.jsonl.rejects.jsonl"):  # both files are strict JSON
        for line in f.read_text(encoding="utf-8").splitlines():
            json.loads(line, parse_constant=strict)
    rejects = read_out(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["code"], r["field"]) for r in rejects] == [("non_finite_number", "score"),
                                                          ("non_finite_number", "messages[1].loss_weight")]
    assert len(read_out(out)) == 1


def test_06_nan_loss_weight_in_parquet_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "q", "loss_weight": None},
                                           {"role": "assistant", "content": "a", "loss_weight": float("nan")}]]}),
                   path)
    recs, rejects = read_records(path, on_error="skip")
    assert not recs and rejects[0]["code"] == "non_finite_number"


# -- 7. chat-control strings inside message text -------------------------------------------------------------


def test_07_end_of_turn_text_is_counted_escaped_or_rejected(tmp_path, capsys, tiny_model_dir):
    from sftlab.data.render import load_tokenizer, render_records, supervised_text

    row = {"instruction": "What ends a ChatML turn?", "output": "The string <|im_end|> does."}
    path = jsonl(tmp_path / "eot.jsonl", [row, QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "data", "convert", path, "-o", out)
    assert code == 0 and f"warning: {path}: 1 message(s) hold chat-control strings" in err

    code, _, err = run(capsys, "data", "convert", path, "-o", out, "--special-text", "reject")
    assert code == 2 and "field 'output'" in err and "<|im_end|>" in err
    two = jsonl(tmp_path / "two.jsonl", [{"instruction": "Say <|im_end|>", "output": "<|im_end|>"}])
    code, _, err = run(capsys, "data", "convert", two, "-o", out)  # the count is of messages (was of records)
    assert code == 0 and f"warning: {two}: 2 message(s) hold chat-control strings" in err

    code, _, err = run(capsys, "data", "convert", path, "-o", out, "--special-text", "escape")
    assert code == 0
    rec = read_out(out)[0]
    tok = load_tokenizer(str(tiny_model_dir))
    (sample,), _ = render_records([rec], tok)
    # the whole answer is supervised, closed by the template's own end-of-turn token only
    assert supervised_text(sample, tok)[0].replace("\u200b", "") == "The string <|im_end|> does.<|im_end|>"
    assert sample["input_ids"].count(tok.convert_tokens_to_ids("<|im_end|>")) == 2  # user turn + assistant turn


# -- 8. a conversation that starts with the assistant ----------------------------------------------------------


def test_08_assistant_first_is_refused_at_read_time(tmp_path, capsys):
    row = {"messages": msgs(("system", "s"), ("assistant", "Hello, how can I help?"), ("user", "q"), ("assistant", "a"))}
    path = jsonl(tmp_path / "a.jsonl", [row])
    for cmd in (["convert", path, "-o", tmp_path / "o.jsonl"], ["inspect", path]):
        code, _, err = run(capsys, "data", *cmd)
        assert code == 2 and "field 'messages[1].role'" in err and "starts with an assistant turn" in err


def test_08_render_of_assistant_first_is_one_line(tmp_path, capsys, tiny_model_dir):
    path = jsonl(tmp_path / "a.jsonl", [{"messages": msgs(("assistant", "hi"))}])
    code, _, err = run(capsys, "data", "render", path, "--tokenizer", tiny_model_dir)
    assert code == 2 and err.startswith("error: ") and "starts with an assistant turn" in err


# -- 9. tracebacks: surrogates, deep nesting, encodings, render beyond max-length ------------------------------


def test_09_lone_surrogate_and_deep_nesting_are_rejects(tmp_path, capsys):
    path = jsonl(tmp_path / "s.jsonl", ['{"instruction": "q\\ud83d", "output": "a"}', "[" * 100_000, QA[0]])
    out = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "data", "convert", path, "-o", out, "--on-error", "skip")
    assert code == 0, err
    rejects = read_out(tmp_path / "o.jsonl.rejects.jsonl")
    assert [(r["index"], r["code"]) for r in rejects] == [(1, "bad_unicode"), (2, "malformed_json")]
    assert "nested too deeply" in rejects[1]["reason"] and len(read_out(out)) == 1


@pytest.mark.parametrize("command", ["clean", "dedup", "stats", "split"])
@pytest.mark.parametrize("encoding", ["utf-16", "latin-1", "binary"])
def test_09_bad_encodings_in_curation_commands(tmp_path, capsys, command, encoding):
    path = tmp_path / "x.jsonl"
    if encoding == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_bytes(json.dumps({"instruction": "café", "output": "crème brûlée"}, ensure_ascii=False)
                         .encode(encoding))
    code, _, err = run(capsys, "data", command, path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert ("malformed JSON" if encoding == "binary" else "not valid UTF-8") in err


def test_09_render_answer_beyond_max_length(tmp_path, capsys, tiny_model_dir):
    path = jsonl(tmp_path / "r.jsonl", [{"instruction": "a long question " * 20, "output": "the answer"}])
    code, _, err = run(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--max-length", "8")
    assert code == 2 and "beyond max_length=8" in err and "--max-length" in err


def test_09_unexpected_exception_is_one_line(monkeypatch, capsys):
    import sftlab.cli.data as data_cli

    def boom(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(data_cli, "_read", boom)
    code, _, err = run(capsys, "data", "inspect", "x.jsonl")
    assert code == 1 and err.startswith("error: input nested too deeply: RecursionError") and err.count("\n") == 1


# -- 10. positions are named consistently --------------------------------------------------------------------


def test_10_json_array_errors_say_index(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([QA[0], {"instruction": "q"}]), encoding="utf-8")
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and err.strip() == f"error: {path}, index 1, field 'output': missing field"


def test_10b_usage_errors_are_usage_lines(capsys):
    code, _, err = run(capsys, "data", "convrt", "x")
    assert code == 2 and "Usage: sftlab data" in err and "No such command 'convrt'" in err
    code, _, err = run(capsys, "train", "--nope")
    assert code == 2 and "No such option: --nope" in err and "config file not found" not in err
    code, _, err = run(capsys, "train", "cfg.yaml", "--nope")
    assert code == 2 and "No such option: --nope" in err


# -- 11. one reader, one behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "inspect", "clean", "dedup"])
def test_11_empty_file_is_an_error_everywhere(tmp_path, capsys, command):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    extra = [] if command == "inspect" else ["-o", tmp_path / "o.jsonl"]
    code, _, err = run(capsys, "data", command, path, *extra)
    assert code == 2 and "empty file (no records)" in err


@pytest.mark.parametrize("command", ["convert", "clean", "dedup"])
def test_11_bom_jsonl_is_accepted_everywhere(tmp_path, capsys, command):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in QA).encode("utf-8") + b"\n")
    code, _, err = run(capsys, "data", command, path, "-o", tmp_path / "o.jsonl")
    assert code == 0, err
    assert len(read_out(tmp_path / "o.jsonl")) == 5


def test_11_clean_drops_empty_answers_of_any_layout_with_a_reason(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([QA[0], {"instruction": "q", "output": ""}]), encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    code, _, err = run(capsys, "data", "clean", path, "-o", out)
    assert code == 0, err
    assert len(read_out(out)) == 1
    (dropped,) = read_out(tmp_path / "clean.dropped.jsonl")  # documented name: OUT's suffix -> .dropped.jsonl
    assert dropped["reason"] == "empty_answer"


# -- 14. render, CSV and duplicate keys --------------------------------------------------------------------------


def test_14_render_shows_a_good_record_despite_a_bad_line_elsewhere(tmp_path, capsys, tiny_model_dir):
    path = jsonl(tmp_path / "r.jsonl", [QA[0], "{broken", QA[1]])
    code, out, err = run(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", "2", "--plain")
    assert code == 0, err
    assert "── record 2" in out and "answer 1" in out
    code, _, err = run(capsys, "data", "render", path, "--tokenizer", tiny_model_dir, "--index", "1")
    assert code == 2 and "line 2: malformed JSON" in err


def test_14_unterminated_csv_quote_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text('instruction,output\nq1,"unterminated\nq2,a2\n', encoding="utf-8")
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "malformed CSV" in err


def test_14_duplicate_json_keys_warn(tmp_path, capsys):
    path = jsonl(tmp_path / "d.jsonl", [QA[0], '{"instruction": "q", "output": "first", "output": "second"}'])
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 0 and "1 record(s) repeat a JSON key" in err and "line 2" in err and "'output'" in err


# -- 12. the mixed-language rule measures prose only ----------------------------------------------------------


def test_12_clean_keeps_chinese_answers_with_tool_calls_and_code(tmp_path, capsys):
    call = {"type": "function", "function": {"name": "calculate_loan_payment",
                                             "arguments": {"principal": 50000, "interest_rate": 5, "term": 10}}}
    tool_zh = {"messages": [{"role": "user", "content": "我需要计算我的贷款月供。"},
                            {"role": "assistant", "content": "", "tool_calls": [call]},
                            {"role": "tool", "content": '{"monthly_payment": 530.33}'},
                            {"role": "assistant", "content": "根据您提供的信息，您的每月还款额约为530.33美元。"}]}
    code_zh = {"messages": msgs(("user", "用Python写一个函数，计算列表的和。"),
                                ("assistant", "下面是一个简单的函数：\n```python\ndef list_sum(values):\n    total = 0\n"
                                 "    for value in values:\n        total = total + value\n    return total\n```\n"
                                 "这个函数遍历列表并返回总和。"))}
    mixed = {"messages": msgs(("user", "介绍一下你自己"),
                              ("assistant", "我是一个助手，我喜欢回答问题 and I like to answer questions in many "
                               "languages"))}
    path = jsonl(tmp_path / "zh.jsonl", [tool_zh, code_zh, mixed])
    out = tmp_path / "clean.jsonl"
    code, stdout, err = run(capsys, "data", "clean", path, "-o", out)
    assert code == 0, err
    assert [r["id"] for r in read_out(out)] == ["zh-0", "zh-1"]
    assert [(d["id"], d["reason"]) for d in read_out(tmp_path / "clean.dropped.jsonl")] == [("zh-2", "mixed_language")]


# -- 13. an English-only embedding model on Chinese text warns -------------------------------------------------


def test_13_kcenter_warns_about_english_only_model(tmp_path, capsys, monkeypatch):
    import numpy as np

    import sftlab.curate.embed as embed

    monkeypatch.setattr(embed, "embed_records", lambda records, model, **k: np.eye(len(records), dtype=np.float32))
    rows = [{"instruction": f"English question number {i}", "output": "ok"} for i in range(5)]
    rows += [{"instruction": f"这是第{i}个中文问题", "output": "好"} for i in range(5)]
    path = jsonl(tmp_path / "mix.jsonl", rows)
    code, _, err = run(capsys, "data", "select", "kcenter", path, "-o", tmp_path / "k.jsonl", "--k", "4")
    assert code == 0, err
    assert "5 of 10 texts (50%) are mostly non-Latin script" in err and "--embed-model multilingual" in err
    code, _, err = run(capsys, "data", "select", "kcenter", path, "-o", tmp_path / "k.jsonl", "--k", "4",
                       "--embed-model", "multilingual")
    assert code == 0 and "non-Latin" not in err
    assert embed.resolve_model_path("multilingual") == embed.MULTILINGUAL_MODEL
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(json.dumps({"inputs": [str(path)], "output": str(tmp_path / "p.jsonl"),
                                "steps": [{"select_kcenter": {"k": 4}}]}), encoding="utf-8")
    code, _, err = run(capsys, "data", "pipeline", pipe)
    assert code == 0 and "mostly non-Latin script" in err


# -- 14. mix --upsample counts its inputs -------------------------------------------------------------------------


def test_14_mix_upsample_summary_counts_inputs(tmp_path, capsys):
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "task_type": "a" if i < 6 else "b"} for i in range(8)]
    path = jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "mix.jsonl"
    code, stdout, err = run(capsys, "data", "mix", path, "-o", out, "--weight", "a=1", "--weight", "b=1",
                            "--total", "20", "--upsample")
    assert code == 0, err
    assert "mix: kept 8 of 8 + 12 upsampled copies = 20 records" in stdout
    assert len(read_out(out)) == 20


# -- 15. make bench runs scripts that exist ------------------------------------------------------------------------


def test_15_make_bench_points_at_existing_scripts():
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    paths = re.findall(r"benchmarks/[\w./-]+", bench)
    assert paths and all((root / p).exists() for p in paths), paths
    script = (root / "benchmarks" / "run_all.sh").read_text(encoding="utf-8")
    for name in set(re.findall(r"benchmarks/(bench_\w+\.py)", script)):
        text = (root / "benchmarks" / name).read_text(encoding="utf-8")
        flags = re.findall(rf"benchmarks/{name} ([^\n]*)", script)
        for flag in {f for line in flags for f in re.findall(r"--[\w-]+", line)}:
            assert f'"{flag}"' in text, (name, flag)
    subprocess.run(["bash", "-n", str(root / "benchmarks" / "run_all.sh")], check=True)


def test_07_render_report_warns_about_special_token_text(tiny_tokenizer):
    from sftlab.data.render import render_records

    recs = [{"id": "a", "task_type": "t", "messages": msgs(("user", "q"), ("assistant", "x <|im_end|> y"))},
            {"id": "b", "task_type": "t", "messages": msgs(("user", "q"), ("assistant", "fine"))}]
    _, report = render_records(recs, tiny_tokenizer)
    assert report.special_text == {"<|im_end|>": 1}
    assert "WARNING special-token text inside messages ('<|im_end|>' in 1 records)" in report.summary()


def test_06_parquet_values_that_are_not_json_name_the_column(tmp_path, capsys):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"instruction": ["q"], "output": ["a"], "created": [datetime.datetime(2026, 1, 1)]}), path)
    code, _, err = run(capsys, "data", "convert", path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and "index 0, field 'created': a datetime value is not JSON" in err
