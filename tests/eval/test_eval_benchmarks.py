"""`benchmarks:` in `sftlab eval`: lm-evaluation-harness tasks from local files on the tiny model, base vs trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.data.records import write_jsonl
from sftlab.eval import benchmarks
from sftlab.eval.benchmarks import deltas

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "what is {{{{a}}}} plus {{{{b}}}}?"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "what is {{{{a}}}} plus {{{{b}}}}?"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two harness tasks over local JSONL files (no hub): a multiple-choice one and a generate_until one."""
    d = tmp_path_factory.mktemp("tasks")
    docs = [{"a": a, "b": b, "answer": str(a + b), "choices": [str(a + b), str(a + b + 1), str(a * b + 7)],
             "label": 0} for a, b in [(1, 2), (3, 1), (2, 2), (4, 0), (0, 3), (2, 5)]]
    write_jsonl(docs, d / "docs.jsonl")
    (d / "tiny_mc.yaml").write_text(MC_TASK.format(data=d / "docs.jsonl"))
    (d / "tiny_gen.yaml").write_text(GEN_TASK.format(data=d / "docs.jsonl"))
    return d


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model after a few training steps on sums (the 'fine-tuned' side)."""
    d = tmp_path_factory.mktemp("ft")
    recs = [{"id": f"r{i}", "task_type": "math", "source": "t", "meta": {},
             "messages": [{"role": "user", "content": f"what is {i % 5} plus {i % 3}?"},
                          {"role": "assistant", "content": str(i % 5 + i % 3)}]} for i in range(16)]
    write_jsonl(recs, d / "train.jsonl")
    cfg = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(d / "train.jsonl")], "max_length": 64},
           "train": {"output_dir": str(d / "run"), "per_device_train_batch_size": 8, "max_steps": 3,
                     "learning_rate": 3e-3, "report_to": []}}
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(d / "train.yaml")])
    return d / "run"


def test_eval_benchmarks_end_to_end_base_vs_trained(tmp_path, task_dir, trained_run, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    cfg = {"model": str(trained_run), "output_dir": str(tmp_path / "out"),
           "benchmarks": {"tasks": [str(task_dir)], "base": str(tiny_model_dir), "batch_size": 4}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    main(["eval", str(tmp_path / "eval.yaml")])
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    b = s["benchmarks"]
    assert b["tasks"] == ["tiny_gen", "tiny_mc"] and b["harness"]["model_type"] == "hf"
    for side in ("model", "base"):
        mc, gen = b["results"][side]["tiny_mc"]["acc,none"], b["results"][side]["tiny_gen"]["exact_match,none"]
        assert 0.0 <= mc["value"] <= 1.0 and mc["stderr"] is not None and mc["n"] == 6
        assert 0.0 <= gen["value"] <= 1.0 and gen["n"] == 6
    rows = {(d["task"], d["metric"]): d for d in b["deltas"]}
    d = rows[("tiny_mc", "acc,none")]
    assert d["delta"] == pytest.approx(d["model"] - d["base"]) and d["delta_stderr"] > 0
    alarmed = [r for r in b["deltas"] if r["alarm"]]  # one alarm line per benchmark that dropped
    assert len(b["alarms"]) == len(alarmed)
    assert all(a.startswith(f"ALARM {r['task']} {r['metric']}:") for a, r in zip(b["alarms"], alarmed, strict=True))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Benchmarks (lm-evaluation-harness)" in html and "tiny_mc" in html
    # a rerun reuses the harness results kept in OUT/benchmarks/ (same model, tasks and settings)
    kept = (tmp_path / "out" / "benchmarks" / "model.json").stat().st_mtime_ns
    main(["eval", str(tmp_path / "eval.yaml")])
    assert (tmp_path / "out" / "benchmarks" / "model.json").stat().st_mtime_ns == kept


def _refused(tmp_path: Path, model: Path, task: str, capsys) -> str:
    cfg = {"model": str(model), "output_dir": str(tmp_path / "o"), "benchmarks": {"tasks": [task]}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "e.yaml")])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_a_task_path_without_tasks_is_refused(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    (tmp_path / "empty").mkdir()
    assert "no harness task is defined there" in _refused(tmp_path, tiny_model_dir, str(tmp_path / "empty"), capsys)


@pytest.mark.slow  # indexes the harness's built-in tasks (thousands of YAML files)
def test_an_unknown_task_name_is_refused(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    err = _refused(tmp_path, tiny_model_dir, "no_such_benchmark_xyz", capsys)
    assert "neither a harness task nor an existing path" in err


def test_benchmarks_without_the_harness_are_refused_with_the_install_line(tmp_path, tiny_model_dir, monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(benchmarks.importlib.util, "find_spec", lambda name: None)
    cfg = {"model": str(tiny_model_dir), "data": [str(tmp_path / "never_read.jsonl")], "output_dir": str(tmp_path),
           "benchmarks": {"tasks": ["mmlu"]}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    write_jsonl([{"instruction": "hi", "output": "hello"}], tmp_path / "never_read.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "e.yaml")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install 'sftlab[benchmarks]'" in err
    assert not (tmp_path / "predictions.jsonl").exists()  # refused before generating anything


def test_deltas_alarm_only_beyond_the_stderr_and_respect_direction():
    def res(v, se, hib=True):
        return {"value": v, "stderr": se, "higher_is_better": hib, "n": 100}
    model = {"mmlu": {"acc,none": res(0.50, 0.03)}, "gsm8k": {"exact_match,strict": res(0.30, 0.01)},
             "wiki": {"ppl,none": res(12.0, 0.1, hib=False)}}
    base = {"mmlu": {"acc,none": res(0.53, 0.03)}, "gsm8k": {"exact_match,strict": res(0.40, 0.01)},
            "wiki": {"ppl,none": res(11.0, 0.1, hib=False)}}
    rows, alarms = deltas(model, base)
    by = {r["task"]: r for r in rows}
    assert not by["mmlu"]["alarm"]  # −0.03 is within sqrt(0.03² + 0.03²)
    assert by["gsm8k"]["alarm"] and by["gsm8k"]["delta"] == pytest.approx(-0.10)
    assert by["wiki"]["alarm"]  # perplexity went up: worse although the number grew
    assert len(alarms) == 2 and alarms[0].startswith("ALARM gsm8k exact_match,strict: 0.4 -> 0.3")


def test_benchmarks_on_an_endpoint_through_local_chat_completions(tmp_path, task_dir, monkeypatch):
    """The fine-tuned model behind an OpenAI-compatible endpoint (here a scripted one that echoes the question):
    the harness's local-chat-completions type runs the generate_until task through it."""
    pytest.importorskip("lm_eval")
    from judge_server import JudgeServer

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    write_jsonl([{"instruction": f"item {i}", "output": f"echo: item {i}"} for i in range(3)], tmp_path / "d.jsonl")
    with JudgeServer() as srv:  # eval sets and benchmarks in one run
        cfg = {"model": {"base_url": srv.base_url, "model": "echo"}, "output_dir": str(tmp_path / "out"),
               "data": [str(tmp_path / "d.jsonl")], "metrics": ["exact_match"],
               "benchmarks": {"tasks": [str(task_dir / "tiny_gen.yaml")]}}
        (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
        main(["eval", str(tmp_path / "e.yaml")])
        asked = [b["messages"][-1]["content"] for b in srv.bodies]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    b = s["benchmarks"]
    assert b["tasks"] == ["tiny_gen"] and b["harness"]["model_type"] == "local-chat-completions"
    assert b["results"]["model"]["tiny_gen"]["exact_match,none"]["value"] == 0.0  # "echo: ..." is never the sum
    assert len(asked) == 3 + 6 and any("what is 2 plus 5?" in q for q in asked)
    assert s["metrics"]["all"]["exact_match"]["mean"] == 1.0 and s["n"] == 3
