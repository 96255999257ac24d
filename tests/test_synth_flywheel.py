"""flywheel end to end: serve the tiny model, send requests with feedback, export, run the flywheel (judge for
the replies without feedback), train one stage on its SFT output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
import yaml

from sftlab.cli import main
from sftlab.data.records import write_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from judge_server import JudgeServer  # noqa: E402


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
    assert [d["reason"] for d in rows["dropped"]] == ["in_train_set"]
    assert rows["dropped"][0]["id"] == train_dup.id
    sft_ids = {r["meta"]["flywheel"]["request_id"] for r in rows["sft"]}
    assert sft_ids == {r.id for r in liked} | {pair.id}
    bad = {r["meta"]["flywheel"]["request_id"]: r["meta"]["flywheel"] for r in rows["bad_cases"]}
    assert bad[disliked.id]["label"] == "feedback" and bad[disliked.id]["score"] == 0.0
    assert bad[unlabeled.id]["label"] == "judge:fair" and bad[unlabeled.id]["score"] == 0.3
    for r in rows["sft"]:
        prov = r["meta"]["flywheel"]
        assert prov["score"] == 1.0 and prov["source_model"] == "tiny" and prov["date"]
    assert summary["sft"] == len(rows["sft"]) and summary["dropped"] == {"in_train_set": 1}
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
