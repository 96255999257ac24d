"""flywheel end to end: serve the tiny model, send requests with feedback, export, run the flywheel (judge for
the replies without feedback), train one stage on its SFT output."""

from __future__ import annotations

import json

import openai
import pytest
import yaml
from judge_server import JudgeServer  # noqa: E402

from sftlab.cli import main
from sftlab.data.records import write_jsonl


def test_flywheel_serve_feedback_export_route_train(tmp_path, tiny_model_dir, small_records):
    from sftlab.infer import load_generator
    from sftlab.serve.app import create_app, start_in_thread
    from sftlab.serve.log import RequestLog

    db = tmp_path / "serve.db"
    app = create_app(load_generator(tiny_model_dir, model_id="tiny"), RequestLog(db), max_batch_size=8)
    url, srv = start_in_thread(app)
    try:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        ask = lambda q, **kw: c.chat.completions.create(  # noqa: E731  (greedy unless asked: unseeded samples vary)
            model="tiny", messages=[{"role": "user", "content": q}], max_tokens=6, **{"temperature": 0.0, **kw})
        liked = [ask(f"please add {i} and {i + 2}") for i in range(3)]
        disliked = ask("please add 7 and 9")
        pair = ask("name three colours", n=2, temperature=1.0, seed=1)  # two replies of one prompt
        unlabeled = ask("tell me a story about a cat")  # judged
        train_dup = ask(small_records[1]["messages"][0]["content"])  # a prompt of the training set
        for r in liked:
            c.post("/feedback", body={"id": r.id, "score": 1}, cast_to=dict)
        c.post("/feedback", body={"id": disliked.id, "score": -1}, cast_to=dict)
        c.post("/feedback", body={"id": pair.id, "score": 1}, cast_to=dict)
        c.post("/feedback", body={"id": train_dup.id, "score": 1}, cast_to=dict)
    finally:
        srv.should_exit = True
    export = tmp_path / "log.jsonl"
    main(["serve", "export-log", str(db), "-o", str(export)])
    # the tiny model never stops within 6 tokens: let the liked replies have ended, keep the pair's cut at max_tokens
    log_rows = [json.loads(x) for x in export.read_text().splitlines() if x.strip()]
    for r in log_rows:
        rid = r["meta"]["response_id"]
        r["meta"]["finish_reason"] = "stop" if rid in {x.id for x in liked} else "length" if rid == pair.id else \
            r["meta"]["finish_reason"]
    write_jsonl(log_rows, export)
    train = write_jsonl(small_records, tmp_path / "train.jsonl") and tmp_path / "train.jsonl"
    out = tmp_path / "fw"
    with JudgeServer() as judge:  # "fair": grade 3/10 (no "CORRECT" in a tiny model's reply)
        main(["flywheel", str(export), "--train", str(train), "--judge", judge.base_url, "--judge-model", "fair",
              "-o", str(out)])
        assert judge.requests >= 1
    rows = {n: [json.loads(x) for x in (out / f"{n}.jsonl").read_text().splitlines() if x.strip()]
            for n in ("sft", "pairs", "bad_cases", "dropped")}
    summary = json.loads((out / "summary.json").read_text())
    n_log = sum(1 for x in export.read_text().splitlines() if x.strip())
    assert n_log == 8
    assert len(rows["sft"]) + len(rows["bad_cases"]) + len(rows["dropped"]) == n_log  # nothing lost
    assert sorted(d["reason"] for d in rows["dropped"]) == ["in_train_set", "truncated", "truncated"]
    assert {d["id"] for d in rows["dropped"] if d["reason"] == "in_train_set"} == {train_dup.id}
    assert {d["id"] for d in rows["dropped"] if d["reason"] == "truncated"} == {f"{pair.id}-0", f"{pair.id}-1"}
    sft_ids = {r["meta"]["flywheel"]["request_id"] for r in rows["sft"]}
    assert sft_ids == {r.id for r in liked}  # the liked pair replies were cut at max_tokens: not SFT data
    bad = {r["meta"]["flywheel"]["request_id"]: r["meta"]["flywheel"] for r in rows["bad_cases"]}
    assert bad[disliked.id]["label"] == "feedback" and bad[disliked.id]["score"] == 0.0
    assert bad[unlabeled.id]["label"] == "judge:fair" and bad[unlabeled.id]["score"] == 0.3
    for r in rows["sft"]:
        prov = r["meta"]["flywheel"]
        assert prov["score"] == 1.0 and prov["source_model"] == "tiny" and prov["date"]
    assert summary["sft"] == len(rows["sft"]) and summary["dropped"] == {"in_train_set": 1, "truncated": 2}
    assert rows["pairs"] == []  # both replies of the pair prompt share one feedback: no contrast

    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(out / "sft.jsonl")], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2, "max_steps": 2,
                     "report_to": [], "learning_rate": 1e-3}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml")])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("step") == 2 and "loss" in m for m in metrics)


def test_flywheel_pairs_from_contrasting_feedback(tmp_path):
    """Two logged replies to one prompt, one liked and one disliked -> one TRL pair; routing by score."""
    def rec(i: str, reply: str, score: int | None) -> dict:
        return {"id": i, "task_type": "serve", "source": "serve:m", "tools": None,
                "messages": [{"role": "user", "content": "What is the capital of Italy?"},
                             {"role": "assistant", "content": reply}],
                "meta": {"response_id": i, "model": "m", "created": "2026-11-29T00:00:00+00:00",
                         "feedback": None if score is None else {"score": score, "comment": None}}}
    log = write_jsonl([rec("a", "Rome is the capital.", 1), rec("b", "Milan, I think.", -1),
                       rec("c", "Rome.", None)], tmp_path / "log.jsonl") and tmp_path / "log.jsonl"
    main(["flywheel", str(log), "-o", str(tmp_path / "fw")])
    pairs = [json.loads(x) for x in (tmp_path / "fw" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == "Rome is the capital."
    assert pairs[0]["rejected"][0]["content"] == "Milan, I think." and pairs[0]["meta"]["margin"] == 1.0
    dropped = [json.loads(x) for x in (tmp_path / "fw" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["id"], d["reason"]) for d in dropped] == [("c", "no_feedback_no_judge")]
    with pytest.raises(SystemExit) as e:
        main(["flywheel", str(log), "--min-score", "2", "-o", str(tmp_path / "fw2")])
    assert e.value.code == 2 and not (tmp_path / "fw2").exists()


def _log_rec(i: str, prompt: str, reply: str, score: int | None) -> dict:
    return {"id": i, "task_type": "serve", "source": "serve:m", "tools": None,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
            "meta": {"response_id": i, "model": "m", "finish_reason": "stop",
                     "feedback": None if score is None else {"score": score, "comment": None}}}


def test_flywheel_decontaminates_every_choice_of_a_near_duplicate_prompt():
    """The n choices of one request share a prompt that near-duplicates a training prompt: all are in_train_set
    (the later ones are exact duplicates of the first choice, not directly of the training record)."""
    from sftlab.synth.flywheel import flywheel

    base = ("Please explain in simple words how the water cycle works on planet earth including evaporation "
            "condensation precipitation and collection for a school class of ten year old children")
    train = [{"id": "t1", "task_type": "x", "source": "", "tools": None, "meta": {},
              "messages": [{"role": "user", "content": base + " today"}, {"role": "assistant", "content": "ok"}]}]
    log = [_log_rec(f"r-{k}", base + " now", f"Answer number {k} about water and clouds.", 1) for k in range(3)]
    res = flywheel(log, train)
    assert [(d["id"], d["reason"], d["duplicate_of"]) for d in res.dropped] == [
        (f"r-{k}", "in_train_set", "t1") for k in range(3)]
    assert res.sft == [] and res.summary["dropped"] == {"in_train_set": 3}


def test_flywheel_repeated_reply_keeps_the_copy_with_feedback():
    """An identical (prompt, reply) logged first without feedback must not hide the liked (or disliked) copy."""
    from sftlab.synth.flywheel import flywheel

    q, q2 = "What is the capital of France?", "What is the capital of Spain?"
    log = [_log_rec("a", q, "Paris is the capital of France.", None),
           _log_rec("b", q, "Paris is the capital of France.", 1),
           _log_rec("c", q2, "Barcelona.", None), _log_rec("d", q2, "Barcelona.", -1), _log_rec("e", q2, "Madrid.", 1)]
    res = flywheel(log, [])
    assert [r["id"] for r in res.sft] == ["b", "e"] and [r["id"] for r in res.bad_cases] == ["d"]
    assert [(d["id"], d["reason"], d["duplicate_of"]) for d in res.dropped] == [
        ("a", "duplicate_in_log", "b"), ("c", "duplicate_in_log", "d")]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in res.pairs] == [("Madrid.", "Barcelona.")]


def test_flywheel_decontaminates_against_training_prompts_that_are_near_copies_of_each_other():
    """T2 is a near copy of T1 (so a keep-first dedup of train + log removed it) and the logged prompt is near T2
    only: it is still in the training set."""
    from sftlab.synth.flywheel import flywheel

    w = [f"word{k}" for k in range(30)]
    t1, t2, q = " ".join(w[:24]), " ".join(w[3:27]), " ".join(w[6:30])  # Jaccard t1-t2 0.74, t2-q 0.74, t1-q 0.54
    train = [_log_rec("T1", t1, "a", None), _log_rec("T2", t2, "b", None)]
    res = flywheel([_log_rec("L", q, "reply", 1)], train)
    assert [(d["id"], d["reason"], d["duplicate_of"]) for d in res.dropped] == [("L", "in_train_set", "T2")]
    assert res.sft == []


def test_flywheel_disliked_refusal_is_a_bad_case_and_the_rejected_reply():
    """The clean rules guard the SFT data only: a thumbs-down refusal was dropped as clean:refusal, losing the bad
    case and the preference pair; a liked refusal is still kept out of sft.jsonl."""
    from sftlab.synth.flywheel import flywheel

    q = "How do I boil an egg?"
    refusal = "I'm sorry, but as an AI language model I cannot help with that."
    log = [_log_rec("good", q, "Put the egg in boiling water for 8 minutes, then cool it in cold water.", 1),
           _log_rec("bad", q, refusal, -1), _log_rec("liked", "Tell me a joke.", refusal, 1)]
    res = flywheel(log, [])
    assert [r["id"] for r in res.sft] == ["good"] and [r["id"] for r in res.bad_cases] == ["bad"]
    assert [(d["id"], d["reason"]) for d in res.dropped] == [("liked", "clean:refusal")]
    assert [p["rejected"][0]["content"] for p in res.pairs] == [refusal]
