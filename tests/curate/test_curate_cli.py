"""The curation commands end to end: outputs, dropped files, byte-identical reruns, one-line errors."""

from __future__ import annotations

import json

import pytest
from cli_helpers import read_jsonl, run_sftlab, write_lines
from record_helpers import QA, messages, rec

from sftlab.cli import main
from sftlab.curate.files import load_records, save_records
from sftlab.data.records import write_jsonl


def _run(argv, capsys):
    main([str(a) for a in argv])
    return capsys.readouterr().out


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.fixture()
def data(tmp_path):
    base = "the quick brown fox jumps over the lazy dog near the river bank on a sunny day"
    records = [rec("a", "Tell me a story about a fox.", base), rec("b", "Tell me a story.", base.upper()),
               rec("c", "Story please.", base.replace("sunny", "rainy")), rec("d", "Hi", "   "),
               rec("e", "Help", "As an AI language model, I cannot help."),
               rec("f", "What is 2+2?", "2 + 2 equals 4, which is a basic arithmetic fact.", task_type="math")]
    path = tmp_path / "in.jsonl"
    write_jsonl(records, path)
    return path


def test_clean_then_dedup_writes_outputs_and_dropped(data, tmp_path, capsys):
    out = _run(["data", "clean", data, "-o", tmp_path / "clean.jsonl"], capsys)
    assert "kept 4 of 6" in out and "empty_answer: 1" in out and "refusal: 1" in out
    dropped = [json.loads(x) for x in (tmp_path / "clean.dropped.jsonl").read_text().splitlines()]
    assert {(d["id"], d["step"], d["reason"]) for d in dropped} == {("d", "clean", "empty_answer"),
                                                                   ("e", "clean", "refusal")}
    out = _run(["data", "dedup", tmp_path / "clean.jsonl", "-o", tmp_path / "dedup.jsonl", "--field", "answer"], capsys)
    assert "exact_duplicate: 1" in out and "near_duplicate: 1" in out
    kept = load_records(tmp_path / "dedup.jsonl")
    assert [r["id"] for r in kept] == ["a", "f"] and kept[0]["meta"]["dedup_cluster"] == "a"


def test_reruns_are_byte_identical(data, tmp_path, capsys):
    for n in (1, 2):
        _run(["data", "clean", data, "-o", tmp_path / f"c{n}.jsonl"], capsys)
        clean = tmp_path / f"c{n}.jsonl"
        _run(["data", "dedup", clean, "-o", tmp_path / f"d{n}.jsonl"], capsys)
        _run(["data", "split", clean, "-o", tmp_path / f"s{n}", "--val", "0.2", "--test", "0.2"], capsys)
        _run(["data", "mix", clean, "-o", tmp_path / f"m{n}.jsonl", "--total", "3", "--seed", "1"], capsys)
    for a, b in (("c1.jsonl", "c2.jsonl"), ("c1.dropped.jsonl", "c2.dropped.jsonl"), ("d1.jsonl", "d2.jsonl"), ("d1.dropped.jsonl", "d2.dropped.jsonl"), ("s1/train.jsonl", "s2/train.jsonl"),
                 ("s1/test.jsonl", "s2/test.jsonl"), ("m1.jsonl", "m2.jsonl")):
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes()


def test_wrong_threshold_type_is_one_line_error(data, tmp_path, capsys):
    err = _fail(["data", "clean", data, "-o", tmp_path / "o.jsonl", "--set", "max_answer_len=lots"], capsys)
    assert "max_answer_len" in err and "lots" in err and "\n" not in err
    err = _fail(["data", "dedup", data, "-o", tmp_path / "o.jsonl", "--set", "threshold=[1]"], capsys)
    assert "threshold" in err


def test_yaml_syntax_errors_are_one_line_errors(data, tmp_path, capsys):
    """A broken --config / --set value / pipeline file is the user's: one line naming it (was an internal error)."""
    (tmp_path / "bad.yaml").write_text("threshold: [0.5\n")
    assert _fail(["data", "dedup", data, "-o", tmp_path / "o.jsonl", "--config", tmp_path / "bad.yaml"],
                 capsys).startswith(f"error: {tmp_path / 'bad.yaml'}: invalid YAML")
    assert _fail(["data", "dedup", data, "-o", tmp_path / "o.jsonl", "--set", "threshold=[0.5"],
                 capsys).startswith("error: --set 'threshold=[0.5': invalid YAML")
    (tmp_path / "latin.yaml").write_bytes(b"threshold: \xe9\n")
    assert _fail(["data", "dedup", data, "-o", tmp_path / "o.jsonl", "--config", tmp_path / "latin.yaml"],
                 capsys) == f"error: {tmp_path / 'latin.yaml'}: not valid UTF-8"
    (tmp_path / "plan.yaml").write_text(f"inputs: [{data}\noutput: o.jsonl\n")
    assert _fail(["data", "pipeline", tmp_path / "plan.yaml"], capsys).startswith(
        f"error: {tmp_path / 'plan.yaml'}: invalid YAML")


def test_output_that_is_a_directory_or_a_file_is_a_one_line_error(data, tmp_path, capsys):
    """-o DIR for a file output, or -o FILE for a directory output: refused naming it, nothing left behind (was
    'Is a directory: OUT.tmp' after the whole run, leaving OUT.tmp, or an internal FileExistsError)."""
    (tmp_path / "d").mkdir()
    good = tmp_path / "good.jsonl"
    write_jsonl([rec(f"g{i}", f"question {i}", f"answer {i}") for i in range(4)], good)
    for cmd in (["convert"], ["clean"], ["dedup", "--mode", "exact"]):
        assert _fail(["data", *cmd, good, "-o", tmp_path / "d"], capsys) == \
            f"error: {tmp_path / 'd'}: is a directory; give an output file name"
    for cmd in (["split"], ["stats", "--no-embed"], ["mix", "--strategy", "multitask"]):
        assert _fail(["data", *cmd, good, "-o", data], capsys) == f"error: {data}: is a file; give an output directory"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("d*.jsonl"))


def test_empty_file_and_record_without_answer(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty file" in _fail(["data", "dedup", empty, "-o", tmp_path / "o.jsonl"], capsys)
    bad = tmp_path / "bad.jsonl"
    r = rec("x", "q", "a")
    r["messages"] = r["messages"][:1]
    write_jsonl([rec("ok", "q", "a"), r], bad)
    err = _fail(["data", "dedup", bad, "-o", tmp_path / "o.jsonl"], capsys)
    assert "bad.jsonl" in err and "line 2" in err and "messages[0].role" in err and "assistant" in err


def test_parquet_roundtrip_and_alpaca_input(real_data_dir, tmp_path, capsys):
    out = tmp_path / "alpaca.parquet"
    _run(["data", "dedup", real_data_dir / "alpaca_en_demo.json", "-o", out], capsys)
    recs = load_records(out)
    assert len(recs) > 900 and all("dedup_cluster" in r["meta"] for r in recs)
    save_records(recs, tmp_path / "again.parquet")
    assert load_records(tmp_path / "again.parquet") == recs


def test_pipeline_chains_steps(data, tmp_path, capsys):
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(f"inputs: [{data.name}]\noutput: out/final.jsonl\nseed: 0\nsteps:\n"
                   "  - clean: {}\n  - dedup: {field: answer}\n  - split: {val: 0.0, test: 0.5}\n")
    out = _run(["data", "pipeline", cfg], capsys)
    assert "pipeline: 6 ->" in out
    report = json.loads((tmp_path / "out" / "final.report.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["clean", "dedup", "split"]
    dropped = [json.loads(x)["step"] for x in (tmp_path / "out" / "final.dropped.jsonl").read_text().splitlines()]
    assert dropped.count("clean") == 2 and dropped.count("dedup") == 2
    assert (tmp_path / "out" / "final.test.jsonl").exists()
    cfg.write_text(f"inputs: [{data.name}]\noutput: o.jsonl\nsteps:\n  - polish: {{}}\n")
    assert "unknown step 'polish'" in _fail(["data", "pipeline", cfg], capsys)


def test_pipeline_byte_identical_across_processes_and_hash_seeds(data, tmp_path):
    """Same inputs + config + seed -> same bytes, even with a different PYTHONHASHSEED per process."""
    import os
    import subprocess
    import sys

    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(f"inputs: [{data.name}]\noutput: out/final.jsonl\nseed: 7\nsteps:\n  - clean: {{}}\n"
                   "  - dedup: {field: both, threshold: 0.5}\n  - mix: {total: 3}\n  - split: {val: 0.34, test: 0.34}\n")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-m", "sftlab", "data", "pipeline", str(cfg)], check=True, env=env,
                       capture_output=True)
        outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())})
    assert outs[0] == outs[1] and len(outs[0]) >= 5


# -- encodings, empty answers, Chinese prose, upsampling (the data-path audit, issue 15) ---------------------


@pytest.mark.parametrize("command", ["clean", "dedup", "stats", "split"])
@pytest.mark.parametrize("encoding", ["utf-16", "latin-1", "binary"])
def test_bad_encodings_in_curation_commands(tmp_path, capsys, command, encoding):
    path = tmp_path / "x.jsonl"
    if encoding == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_bytes(json.dumps({"instruction": "café", "output": "crème brûlée"}, ensure_ascii=False)
                         .encode(encoding))
    code, _, err = run_sftlab(capsys, "data", command, path, "-o", tmp_path / "o.jsonl")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert ("malformed JSON" if encoding == "binary" else "not valid UTF-8") in err


def test_clean_drops_empty_answers_of_any_layout_with_a_reason(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([QA[0], {"instruction": "q", "output": ""}]), encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    code, _, err = run_sftlab(capsys, "data", "clean", path, "-o", out)
    assert code == 0, err
    assert len(read_jsonl(out)) == 1
    (dropped,) = read_jsonl(tmp_path / "clean.dropped.jsonl")  # documented name: OUT's suffix -> .dropped.jsonl
    assert dropped["reason"] == "empty_answer"


def test_clean_keeps_chinese_answers_with_tool_calls_and_code(tmp_path, capsys):
    call = {"type": "function", "function": {"name": "calculate_loan_payment",
                                             "arguments": {"principal": 50000, "interest_rate": 5, "term": 10}}}
    tool_zh = {"messages": [{"role": "user", "content": "我需要计算我的贷款月供。"},
                            {"role": "assistant", "content": "", "tool_calls": [call]},
                            {"role": "tool", "content": '{"monthly_payment": 530.33}'},
                            {"role": "assistant", "content": "根据您提供的信息，您的每月还款额约为530.33美元。"}]}
    code_zh = {"messages": messages(("user", "用Python写一个函数，计算列表的和。"),
                                ("assistant", "下面是一个简单的函数：\n```python\ndef list_sum(values):\n    total = 0\n"
                                 "    for value in values:\n        total = total + value\n    return total\n```\n"
                                 "这个函数遍历列表并返回总和。"))}
    mixed = {"messages": messages(("user", "介绍一下你自己"),
                              ("assistant", "我是一个助手，我喜欢回答问题 and I like to answer questions in many "
                               "languages"))}
    path = write_lines(tmp_path / "zh.jsonl", [tool_zh, code_zh, mixed])
    out = tmp_path / "clean.jsonl"
    code, stdout, err = run_sftlab(capsys, "data", "clean", path, "-o", out)
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out)] == ["zh-0", "zh-1"]
    assert [(d["id"], d["reason"]) for d in read_jsonl(tmp_path / "clean.dropped.jsonl")] == [("zh-2", "mixed_language")]


def test_mix_upsample_summary_counts_inputs(tmp_path, capsys):
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "task_type": "a" if i < 6 else "b"} for i in range(8)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    out = tmp_path / "mix.jsonl"
    code, stdout, err = run_sftlab(capsys, "data", "mix", path, "-o", out, "--weight", "a=1", "--weight", "b=1",
                            "--total", "20", "--upsample")
    assert code == 0, err
    assert "mix: kept 8 of 8 + 12 upsampled copies = 20 records" in stdout
    assert len(read_jsonl(out)) == 20
