"""`data pipeline` streams records from step to step through files: same bytes as chaining the steps' list
functions in memory, the whole list never loaded by a step that streams, nothing left behind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml

from sftlab.curate import embed, embed_cache, files, pipeline
from sftlab.curate.clean import clean_records
from sftlab.curate.dedup import dedup_records
from sftlab.curate.embed import embed_records
from sftlab.curate.files import load_records, save_records
from sftlab.curate.mix import mix_records
from sftlab.curate.pipeline import run_pipeline
from sftlab.curate.select import kcenter_select
from sftlab.curate.split import split_records
from sftlab.curate.step import dropped_path
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError


class StandIn:
    """A deterministic embedding model: one unit vector per text."""

    def encode(self, texts, **_kw):
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK", 7)  # many chunks per step
    monkeypatch.setattr(embed, "load_model", lambda _m: StandIn())
    monkeypatch.setattr(embed_cache, "_OPEN", {})


def _records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        g = i % 23
        answer = f"the answer to question {g} is {g * 7} because of rule {g % 5}" + (" indeed" if i % 4 == 0 else "")
        if i % 13 == 5:
            answer = " "  # clean drops it
        out.append({"id": f"r{i}", "task_type": ["math", "code", "chat"][i % 3], "source": "t", "tools": None,
                    "meta": {"quality": (i * 37) % 11},
                    "messages": [{"role": "user", "content": f"Question {g}: what is {g} times 7?"},
                                 {"role": "assistant", "content": answer}]})
    return out


STEPS = [
    {"clean": {}},
    {"dedup": {"keep": "score", "score_key": "quality", "threshold": 0.6}},
    {"select_kcenter": {"k": 12, "cache_dir": "cache", "field": "both"}},
    {"mix": {"weights": {"math": 2, "code": 1}, "total": 20, "upsample": True, "general": "general.jsonl",
             "general_fraction": 0.2}},
    {"split": {"val": 0.2, "test": 0.2, "leakage": "near"}},
]


def _in_memory(records: list[dict], general: list[dict], steps: list[dict], seed: int, cache) -> dict:
    """The spec: the steps' list functions chained in memory (what the pipeline did before it streamed)."""
    report = {"inputs": len(records), "steps": []}
    dropped: list[dict] = []
    parts = None
    for step in steps:
        (name, o), = step.items()
        o = {**o, "seed": seed} if name != "clean" else dict(o)
        if name == "split":
            parts, drops, info = split_records(records, o)
            dropped += drops
            report["steps"].append({"step": "split", **info})
            records = parts["train"]
            break
        if name == "clean":
            res = clean_records(records, o)
        elif name == "dedup":
            res = dedup_records(records, o)
        elif name == "select_kcenter":
            field = o.pop("field")
            o.pop("cache_dir")
            res = kcenter_select(records, embed_records(records, None, field=field, cache_dir=cache), o)
        else:
            o.pop("general", None)
            res = mix_records(records, o, general=general)
        report["steps"].append({"step": name, "kept": len(res.kept), "dropped": dict(res.counts()), **res.info})
        dropped += res.dropped
        records = res.kept
    report["output"] = len(records)
    return {"records": records, "dropped": dropped, "parts": parts, "report": report}


def _write(tmp_path, steps, output="out/final.jsonl", seed=3):
    write_jsonl(_records(90), tmp_path / "in.jsonl")
    general = [{**r, "id": f"g{r['id']}", "task_type": "general"} for r in _records(25)]
    write_jsonl([r for r in general if r["messages"][1]["content"].strip()], tmp_path / "general.jsonl")
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(yaml.safe_dump({"inputs": ["in.jsonl"], "output": output, "seed": seed, "steps": steps}))
    return cfg


def test_pipeline_writes_what_the_list_functions_write(tmp_path):
    cfg = _write(tmp_path, STEPS)
    report = run_pipeline(cfg, echo=lambda _line: None)
    want = _in_memory(load_records(tmp_path / "in.jsonl", allow_empty_answers=True),
                      load_records(tmp_path / "general.jsonl"), STEPS, 3, tmp_path / "cache")
    out = tmp_path / "out"
    ref = tmp_path / "ref"
    save_records(want["records"], ref / "final.jsonl")
    write_jsonl(want["dropped"], ref / "final.dropped.jsonl")
    for part, recs in want["parts"].items():
        save_records(recs, ref / f"final.{part}.jsonl")
    for name in ("final.jsonl", "final.dropped.jsonl", "final.train.jsonl", "final.val.jsonl", "final.test.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert report == want["report"] == json.loads((out / "final.report.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["clean", "dedup", "select_kcenter", "mix", "split"]
    assert report["steps"][1]["dropped"] and report["steps"][3]["copies"] > 0  # duplicates and upsampling happened
    assert sorted(p.name for p in out.iterdir()) == ["final.dropped.jsonl", "final.jsonl", "final.report.json",
                                                     "final.test.jsonl", "final.train.jsonl", "final.val.jsonl"]


def test_streaming_steps_never_hold_the_whole_list(tmp_path, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a streaming step loaded the whole list")

    monkeypatch.setattr(files, "load_records", refuse)
    monkeypatch.setattr(pipeline, "_whole", refuse)
    steps = [{"clean": {}}, {"dedup": {"mode": "exact"}},
             {"select_cluster": {"n_clusters": 4, "per_cluster": 3, "cache_dir": "cache"}},
             {"mix": {"weights": {"math": 1, "chat": 1}, "total": 8}}, {"split": {"val": 0.25, "test": 0.25}}]
    report = run_pipeline(_write(tmp_path, steps, output="out/final.parquet"), echo=lambda _line: None)
    monkeypatch.undo()
    assert report["inputs"] == 90 and report["output"] == report["steps"][-1]["train"] > 0
    assert report["steps"][2]["clusters"] == 4
    assert load_records(tmp_path / "out" / "final.parquet") == load_records(tmp_path / "out" / "final.train.parquet")


def test_a_failed_run_resumes_after_its_finished_steps(tmp_path, monkeypatch):
    from sftlab.curate import clean

    def plan(name, steps):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"inputs": ["in.jsonl"], "output": "out/final.jsonl", "seed": 3,
                                       "steps": steps}))
        return cfg

    _write(tmp_path, [])  # the inputs, written once (their mtime is part of every step's fingerprint)
    first_two = [{"clean": {}}, {"dedup": {"threshold": 0.6}}]
    bad = plan("bad", first_two + [{"dedup": {"keep": "score"}}])  # no score_key: the third step fails
    good = plan("good", first_two + [{"dedup": {"keep": "score", "score_key": "quality", "mode": "exact"}}])
    run_pipeline(good, echo=lambda _line: None)
    want = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    work = tmp_path / "out" / ".final.jsonl.work"
    assert not work.exists()  # a successful run removes its work
    for p in (tmp_path / "out").iterdir():
        p.unlink()

    with pytest.raises(UserError, match="score_key"):
        run_pipeline(bad, echo=lambda _line: None)
    assert not (tmp_path / "out" / "final.jsonl").exists()
    assert sorted(p.name for p in work.iterdir()) == ["0.done.json", "0.dropped.jsonl", "0.jsonl", "1.done.json",
                                                      "1.dropped.jsonl", "1.jsonl"]
    lines: list[str] = []
    monkeypatch.setattr(clean, "clean_stream", None)  # a reused step is not run again
    run_pipeline(good, echo=lines.append)
    monkeypatch.undo()
    assert [("earlier run" in line) for line in lines] == [True, True, False]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == want  # same bytes as in one go

    with pytest.raises(UserError, match="score_key"):
        run_pipeline(bad, echo=lambda _line: None)
    lines = []  # a changed option runs that step and every later one again
    run_pipeline(plan("changed", [first_two[0], {"dedup": {"threshold": 0.9}}, {"clean": {}}]), echo=lines.append)
    assert [("earlier run" in line) for line in lines] == [True, False, False]
    with pytest.raises(UserError, match="score_key"):
        run_pipeline(bad, echo=lambda _line: None)
    (tmp_path / "in.jsonl").write_bytes((tmp_path / "in.jsonl").read_bytes())  # a touched input: all again
    lines = []
    run_pipeline(good, echo=lines.append)
    assert not any("earlier run" in line for line in lines)
    with pytest.raises(UserError, match="score_key"):
        run_pipeline(bad, echo=lambda _line: None)
    lines = []
    run_pipeline(good, echo=lines.append, fresh=True)  # --fresh ignores the earlier work
    assert not any("earlier run" in line for line in lines) and not work.exists()


def test_a_plan_error_is_refused_before_anything_runs(tmp_path):
    cfg = _write(tmp_path, [{"clean": {}}, {"split": {}}, {"dedup": {}}])
    with pytest.raises(UserError, match="split must be the last step"):
        run_pipeline(cfg, echo=lambda _line: None)
    assert not (tmp_path / "out").exists()
    # every step's options are parsed as its command would before step 1 runs: a typo in a late step fails at once
    for steps, msg in [([{"clean": {}}, {"dedup": {"treshold": 0.7}}], r"steps\[1\]: dedup: option 'treshold'"),
                       ([{"clean": {}}, {"mix": {"weights": {"math": "2"}}}], r"steps\[1\]: mix: option 'weights.math'"),
                       ([{"clean": {}}, {"select_ifd": {"k": 5}}], r"steps\[1\]: step select_ifd needs 'model'"),
                       ([{"dedup": {}}, {"split": {"val": 2.0}}], r"steps\[1\]: split: option 'val'")]:
        with pytest.raises(UserError, match=msg):
            run_pipeline(_write(tmp_path, steps), echo=lambda _line: None)
        assert not (tmp_path / "out").exists()


def test_input_count_when_the_first_step_adds_or_splits(tmp_path):
    report = run_pipeline(_write(tmp_path, [{"mix": {"weights": {"math": 1}, "general": "general.jsonl",
                                                     "general_fraction": 0.5, "total": 10}}]),
                          echo=lambda _line: None)
    assert report["inputs"] == 90  # the task records, not the general ones the step also read
    assert report["steps"][0]["inputs"] == 90 + 23  # 25 general records, 2 of them with empty answers left out
    report = run_pipeline(_write(tmp_path, [{"split": {"val": 0.1, "test": 0.1, "leakage": "off"}}]),
                          echo=lambda _line: None)
    assert report["inputs"] == 90 and sum(report["steps"][0][p] for p in ("train", "val", "test")) == 90
    assert dropped_path(tmp_path / "out" / "final.jsonl").read_text() == ""


def test_cli_says_where_the_finished_steps_are_and_fresh_starts_over(tmp_path, capsys):
    from sftlab.cli import main

    cfg = _write(tmp_path, [{"clean": {}}, {"dedup": {"keep": "score"}}])
    with pytest.raises(SystemExit) as e:
        main(["data", "pipeline", str(cfg)])
    out, err = capsys.readouterr()
    assert e.value.code != 0 and "Traceback" not in err and "score_key" in err
    assert "step 1 is kept in" in out and "resume at step 2 (dedup)" in out
    cfg.write_text(cfg.read_text().replace("keep: score", "keep: first"))
    main(["data", "pipeline", str(cfg), "--fresh"])
    out = capsys.readouterr().out
    assert "earlier run" not in out and "pipeline: 90 ->" in out
