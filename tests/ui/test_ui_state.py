"""What the pages are built from, without a browser: run states and ETA, config diffs, the review's summary (the
same as `eval import-sheet` for the same votes), durable fixes, the render view, eval dirs of older versions."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from sftlab.data.formats import read_records
from sftlab.errors import UserError
from sftlab.eval.human import import_sheets
from sftlab.io import append_json_line as append_line
from sftlab.ui.curves import MetricsIndex
from sftlab.ui.datasets import RenderSettings, load_dataset, render_sample
from sftlab.ui.evals import judge_panel, load_eval, scores
from sftlab.ui.fixes import append_fix
from sftlab.ui.review import Review, create_review
from sftlab.ui.runs import configs_diff, run_status


def make_run(root: Path, name: str, steps: int, *, final=False, ckpt=None, emergency=False, age=0.0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  max_steps: 100\n  logging_steps: 1\n  learning_rate: 0.001\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "epoch": s / 50, "loss": 1.0, "tokens": 1000,
                                                           "tokens_per_s": 500.0}) + "\n" for s in range(1, steps + 1)))
    if final:
        (run / "final").mkdir()
        (run / "final" / "config.json").write_text("{}")
    if ckpt is not None:
        (run / "checkpoints" / f"step-{ckpt}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{ckpt}" / "training_state.pt").write_text("x")
    if emergency:
        (run / "checkpoints" / "emergency-step-7").mkdir(parents=True)
    then = time.time() - age
    for p in [run / "metrics.jsonl", run / "config.yaml", *(run / "checkpoints").glob("*"), run / "checkpoints"]:
        if not p.exists():
            continue
        os.utime(p, (then, then))
    if ckpt is not None and ckpt >= steps:  # a stop writes its checkpoint after the last log line
        os.utime(run / "checkpoints" / f"step-{ckpt}", (then + 1, then + 1))
    return run


@pytest.mark.parametrize("kw, state", [({"final": True, "age": 9999}, "finished"),
                                       ({"age": 5}, "running"),
                                       ({"ckpt": 10, "age": 3600}, "stopped"),
                                       ({"emergency": True, "age": 3600}, "failed"),
                                       ({"ckpt": 4, "age": 3600}, "failed")])
def test_run_state(tmp_path, kw, state):
    run = make_run(tmp_path, "r", 10, **kw)
    st = run_status(run, MetricsIndex(run / "metrics.jsonl"))
    assert st.state == state, st.why
    assert st.step == 10 and st.total_steps == 100
    if state == "running":  # 1000 tokens per step at 500 tokens/s: 2 s per step, 90 steps left
        assert st.eta_s == pytest.approx(180.0)


def test_config_diff_names_only_the_settings_that_differ():
    a = {"train": {"learning_rate": 1e-3, "seed": 1, "output_dir": "a"}, "model": {"name_or_path": "m"}}
    b = {"train": {"learning_rate": 1e-5, "seed": 1, "output_dir": "b"}, "model": {"name_or_path": "m", "lora": {"r": 8}}}
    assert configs_diff([a, b]) == [("model.lora.r", ["-", 8]), ("train.learning_rate", [1e-3, 1e-5])]


def fill_sheet(review: Review, votes: dict[str, str], path: Path) -> Path:
    """The review's blank sheet with `votes` ({item: value}) in its only dimension column, saved as `path`."""
    with open(review.path / "sheet.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    col = rows[0].index(review.dimensions[0])
    for r in rows[1:]:
        r[col] = votes.get(r[0], "")
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_review_summary_is_import_sheet_for_the_same_votes(ui_root, tmp_path):
    view = load_eval(ui_root / "evals" / "after")
    path = create_review(view, dimensions=["overall"], seed=3, limit=10, name=f"t-{time.time_ns()}")
    review = Review(path)
    assert review.mode == "pairwise" and len(review.items) == 10
    entries = review.key["items"]
    assert {e["model_is"] for e in entries.values()} == {"A", "B"}  # sides drawn per item
    for it in review.items:  # blind: A/B are the model's and the baseline's reply in the key's order
        row = view.by_id()[entries[it["item"]]["id"]]
        assert it["answers"] == ([row["reply"], row["baseline_reply"]] if entries[it["item"]]["model_is"] == "A"
                                 else [row["baseline_reply"], row["reply"]])
    alice = {it["item"]: "ABC"[i % 3] for i, it in enumerate(review.items)}
    bob = {it["item"]: "BAC"[i % 3] if i % 4 else alice[it["item"]] for i, it in enumerate(review.items)}
    for item in alice:  # interleaved, as two people voting at once
        review.vote("alice", item, "overall", alice[item])
        review.vote("bob", item, "overall", bob[item].lower())
    ui_summary = review.summary()
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    (sheets / "alice.key.json").write_text((path / "sheet.key.json").read_text())
    (sheets / "bob.key.json").write_text((path / "sheet.key.json").read_text())
    paper = import_sheets([fill_sheet(review, alice, sheets / "alice.csv"), fill_sheet(review, bob, sheets / "bob.csv")],
                          tmp_path / "out", judged=ui_root / "evals" / "after" / "predictions.jsonl")
    assert ui_summary == paper
    assert set(ui_summary) >= {"human", "agreement", "judge_vs_human"} and ui_summary["agreement"]["overall"]["n"] == 10
    assert json.loads((path / "summary.json").read_text()) == paper
    with pytest.raises(UserError, match="is not A, B or C"):
        review.vote("alice", review.items[0]["item"], "overall", "7")
    review.close()


def test_ab_review_against_another_eval_dir(ui_root):
    view, other = load_eval(ui_root / "evals" / "after"), load_eval(ui_root / "evals" / "before")
    review = Review(create_review(view, dimensions=["overall"], baseline=other, name=f"vs-{time.time_ns()}"))
    assert review.mode == "pairwise" and len(review.items) == 12
    for it in review.items:
        entry = review.key["items"][it["item"]]
        mine, theirs = view.by_id()[entry["id"]]["reply"], other.by_id()[entry["id"]]["reply"]
        assert it["answers"] == ([mine, theirs] if entry["model_is"] == "A" else [theirs, mine])
    review.close()


def test_single_grade_review(ui_root):
    view = load_eval(ui_root / "evals" / "after")
    for r in view.predictions:
        r.pop("baseline_reply")
    review = Review(create_review(view, dimensions=["helpfulness", "honesty"], name=f"s-{time.time_ns()}"))
    assert review.mode == "single" and all(len(it["answers"]) == 1 for it in review.items)
    item = review.items[0]["item"]
    review.vote("carol", item, "helpfulness", "10")
    assert review.progress("carol") == {"done": 0, "total": 12, "next": 0}
    review.vote("carol", item, "honesty", "3")
    assert review.progress("carol")["done"] == 1 and review.progress("carol")["next"] == 1
    with pytest.raises(UserError, match="outside the scale"):
        review.vote("carol", item, "honesty", "11")
    review.close()


def test_fix_appends_a_training_record_and_a_pair_durably(tmp_path):
    out = tmp_path / "fixes"
    prompt = [{"role": "user", "content": "capital of Japan?"}]
    res = append_fix(out, prompt=prompt, original="Kyoto", fixed="Tokyo", task_type="facts/capital",
                     provenance={"source": "eval", "item_id": "demo:e8"})
    with open(out / "sft.jsonl", "ab") as f:  # a crash in the middle of the next append
        f.write(b'{"id": "fix-torn", "mess')
    append_fix(out, prompt=prompt, original="Kyoto", fixed="It is Tokyo.", task_type="facts/capital", provenance={})
    records, rejects = read_records(out / "sft.jsonl")
    assert not rejects and [r["messages"][-1]["content"] for r in records] == ["Tokyo", "It is Tokyo."]
    assert records[0]["meta"]["fix"]["item_id"] == "demo:e8" and records[0]["meta"]["original_reply"] == "Kyoto"
    pair = json.loads((out / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["prompt"] == prompt and pair["chosen"][0]["content"] == "Tokyo"
    assert pair["rejected"][0]["content"] == "Kyoto" and pair["meta"]["sft_id"] == res["record"]["id"]
    with pytest.raises(UserError, match="same as the original"):
        append_fix(out, prompt=prompt, original="Kyoto", fixed=" Kyoto ", task_type="t", provenance={})
    append_line(tmp_path / "x.jsonl", {"a": 1})
    assert (tmp_path / "x.jsonl").read_text() == '{"a": 1}\n'


def test_render_view_marks_exactly_the_supervised_tokens(ui_root, tiny_model_dir, tiny_tokenizer):
    from sftlab.data.render import render_records, supervised_text

    view = load_dataset(ui_root / "data" / "train.jsonl", RenderSettings(tokenizer=str(tiny_model_dir), max_length=64))
    assert view.length_unit == "tokens" and sum(view.counts.values()) == 36
    assert {r["code"] for r in view.rejects} == {"malformed_json", "empty_assistant"}
    sample = render_sample(view, 0)  # two turns, the second with loss_weight 0.5
    expected = render_records([view.records[0]], tiny_tokenizer, max_length=64)[0][0]
    for turn, text in enumerate(supervised_text(expected, tiny_tokenizer)):
        assert "".join(t["text"] for t in sample["tokens"] if t["turn"] == turn) == text
    assert {t["weight"] for t in sample["tokens"] if t["turn"] == 1} == {0.5}
    assert [m["supervised"] for m in sample["messages"]] == [False, True, False, True]


def test_old_eval_dir_says_what_is_wrong(ui_root):
    view = load_eval(ui_root / "evals" / "old")
    assert scores(view) == ([], [])
    text = " ".join(view.notes)
    assert "no 'version'" in text and "not valid JSON" in text and "lack id or reply" in text
    assert "score table could not be read" in text
    assert judge_panel(view.summary) is None and [r["id"] for r in view.predictions] == ["a"]
