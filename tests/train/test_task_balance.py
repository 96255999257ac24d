"""Multi-task balancing (sftlab/train/balance.py): task_weights resolution and errors, task_epochs as a
transformation of the step plan, share metrics, and the whole thing end to end through the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli as _run

from sftlab.config import ConfigError, build_config
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError
from sftlab.train.balance import (
    epoch_order,
    per_sample_values,
    plan_table,
    share_metrics,
    task_epochs_plan,
)
from sftlab.train.steps import step_plan

TYPES = ["math/add"] * 6 + ["math/mul"] * 4 + ["text"] * 10 + ["chat"] * 4  # 24 samples
LENGTHS = np.arange(10, 10 + len(TYPES)) * 3


def test_task_values_most_specific_key_wins_and_default_is_one():
    w = per_sample_values(TYPES, {"math": 2.0, "math/mul": 0.0, "text": 0.5}, "task_weights")
    expected = {"math/add": 2.0, "math/mul": 0.0, "text": 0.5, "chat": 1.0}
    assert w.tolist() == [expected[t] for t in TYPES]


def test_unknown_task_type_is_an_error_naming_what_the_data_has():
    with pytest.raises(UserError) as e:
        per_sample_values(TYPES, {"maths": 2.0}, "task_weights")
    msg = str(e.value)
    assert "train.task_weights" in msg and "'maths'" in msg
    assert "chat, math, math/add, math/mul, text" in msg and "\n" not in msg


@pytest.mark.parametrize("override, needle", [("train.task_weights.math=-1", "train.task_weights.math"),
                                              ("train.task_epochs.math=0", "train.task_epochs.math"),
                                              ("train.task_weights.math=.nan", "train.task_weights.math")])
def test_config_rejects_bad_values(override, needle):
    def raw() -> dict:
        return {"model": {"name_or_path": "m"}, "data": {"train": ["x.jsonl"]}, "train": {"output_dir": "o"}}

    with pytest.raises(ConfigError, match=needle):
        build_config(raw(), [override])
    cfg = build_config(raw(), ["train.task_weights.math=2", "train.task_epochs.text=1.5"])
    assert cfg.train.task_weights == {"math": 2.0} and cfg.train.task_epochs == {"text": 1.5}


def _plan_counts(plan: list[np.ndarray]) -> Counter:
    return Counter(int(i) for idx in plan for i in idx)


def test_task_epochs_doubles_one_task_and_nothing_else():
    n, gb = len(TYPES), 4
    base, per_epoch = step_plan(n, gb, 1, 1.0, -1, 0, None)
    rep = task_epochs_plan(TYPES, {"text": 2}, seed=0)
    doubled, per_epoch2 = step_plan(n, gb, 1, 1.0, -1, 0, None, rep)
    assert per_epoch == 6 and per_epoch2 == 6 + 10 // gb + 1  # 34 entries per epoch: 8 full steps + 2 left
    c0, c2 = _plan_counts(base), _plan_counts(doubled)
    text = [i for i, t in enumerate(TYPES) if t == "text"]
    assert all(c0[i] == 1 for i in range(n))
    assert all(c2[i] == 2 for i in text) and all(c2[i] == 1 for i in range(n) if i not in text)
    tokens = lambda c, sel: sum(c[i] * LENGTHS[i] for i in sel)  # noqa: E731
    others = [i for i in range(n) if i not in text]
    assert tokens(c2, text) == 2 * tokens(c0, text) and tokens(c2, others) == tokens(c0, others)
    # deterministic with the seed, and the seed matters
    again, _ = step_plan(n, gb, 1, 1.0, -1, 0, None, task_epochs_plan(TYPES, {"text": 2}, seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(doubled, again, strict=True))
    other, _ = step_plan(n, gb, 1, 1.0, -1, 1, None, task_epochs_plan(TYPES, {"text": 2}, seed=1))
    assert any(not np.array_equal(a, b) for a, b in zip(doubled, other, strict=False))
    # the plan table says the same
    table = plan_table(TYPES, LENGTHS, LENGTHS // 2, np.ones(n), rep)
    assert table["text"]["samples"] == 20 and table["text"]["epochs"] == 2.0
    assert table["text"]["tokens"] == 2 * int(LENGTHS[text].sum())
    assert table["chat"]["samples"] == 4 and table["math/add"]["epochs"] == 1.0


def test_without_task_epochs_the_plan_is_unchanged():
    """No task_epochs: the historical order (default_rng([seed, epoch]).permutation(n)), so resumes of old
    runs and every existing test see the same plan."""
    plan, _ = step_plan(24, 4, 1, 2.0, -1, 5, None)
    flat = np.concatenate(plan)
    expected = np.concatenate([np.random.default_rng([5, e]).permutation(24) for e in range(2)])
    assert np.array_equal(flat, expected)
    assert np.array_equal(epoch_order(24, 5, 1, task_epochs_plan(TYPES, {}, 5)), expected[24:])


def test_fractional_task_epochs_rotate_over_epochs():
    rep = task_epochs_plan(TYPES, {"text": 0.5, "chat": 1.5}, seed=3)
    text = {i for i, t in enumerate(TYPES) if t == "text"}
    chat = [i for i, t in enumerate(TYPES) if t == "chat"]
    seen: Counter = Counter()
    for epoch in range(2):
        order = epoch_order(len(TYPES), 3, epoch, rep)
        c = Counter(order.tolist())
        assert sum(c[i] for i in text) == 5  # half of the 10 text samples per epoch
        assert sum(c[i] for i in chat) == 6  # 4 + 2
        seen.update(i for i in order.tolist() if i in text)
    assert all(seen[i] == 1 for i in text)  # two half-epochs see every text sample once
    with pytest.raises(UserError, match="keeps no sample"):
        task_epochs_plan(TYPES, {"chat": 0.1}, seed=0)


def test_share_metrics():
    import torch

    out = share_metrics(["a", "b"], torch.tensor([4.0, 3.0, 1.0], dtype=torch.float64), np.array([10, 30]), 40.0)
    assert out == {"loss_share/a": 0.75, "token_share/a": 0.25, "loss_share/b": 0.25, "token_share/b": 0.75}


# ------------------------------------------------------------------------------------------- end to end


def _config(tmp_path: Path, model_dir: Path, records: list[dict], **train) -> Path:
    path = tmp_path / "train.jsonl"
    write_jsonl(records, path)
    cfg = {"model": {"name_or_path": str(model_dir)},
           "data": {"train": [str(path)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "num_train_epochs": 1,
                     "logging_steps": 1, "seed": 3, "report_to": [], **train}}
    out = tmp_path / "cfg.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_train_with_task_weights_and_epochs_end_to_end(tmp_path, tiny_model_dir, small_records, capsys):
    """math weight 0, text weight 4 and twice per epoch: loss = the weighted objective, loss_unweighted beside
    it, math's channel loss still logged with a 0 share of the weighted loss, no health alarm from the 4x
    weighted loss (alarms read the unweighted one); the plan and the report show it."""
    cfg = _config(tmp_path, tiny_model_dir, small_records, task_weights={"math": 0.0, "text": 4.0},
                  task_epochs={"text/repeat": 2})
    code, out, err = _run(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    assert "text/repeat" in out and "epochs" in out  # the plan printed at start-up
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert len(train) == (12 + 24) // 4  # 12 math + 2 x 12 text samples, global batch 4
    assert not [r for r in recs if "alarm" in r]
    for r in train:
        if "loss/math" not in r:  # text only: the weighted loss is 4x the unweighted one
            assert r["loss"] == pytest.approx(4 * r["loss_unweighted"])
        if "loss/text" not in r:  # math only: nothing is optimized
            assert r["loss"] == 0.0 and r["loss_unweighted"] > 0
        if "loss/math" in r:
            assert r["loss/math"] > 0 and r.get("loss_share/math", 0.0) == 0.0
        if r.get("token_share/text", 0) > 0:
            assert r["loss_share/text"] == pytest.approx(1.0)
    assert any("loss/math" in r for r in train)
    plan = json.loads((run / "data_summary.json").read_text())["train"]["plan_per_epoch"]
    assert plan["math/add"]["samples"] == 12 and plan["math/add"]["weight"] == 0.0
    assert plan["text/repeat"]["samples"] == 24 and plan["text/repeat"]["epochs"] == 2.0
    # the logged token shares add up to the plan's supervised tokens of each task
    text_tokens = sum(r["token_share/text"] * r["supervised_tokens"] for r in train)
    assert text_tokens == pytest.approx(plan["text/repeat"]["supervised_tokens"])
    assert sum(r["supervised_tokens"] for r in train) == sum(p["supervised_tokens"] for p in plan.values())

    code, out, err = _run(["report", run], capsys)
    assert code == 0, err
    page = (run / "report.html").read_text()
    assert "Share of the weighted loss per task" in page and "Share of supervised tokens per task" in page
    assert "task epochs" in page


def test_unknown_task_weight_is_a_one_line_cli_error(tmp_path, tiny_model_dir, small_records, capsys):
    cfg = _config(tmp_path, tiny_model_dir, small_records)
    code, _, err = _run(["train", cfg, "train.task_weights.maths=2"], capsys)
    assert code == 2
    line = err.strip()
    assert line.startswith("error: train.task_weights: task type 'maths' is not in the train data")
    assert "math, math/add, text, text/repeat" in line and "\n" not in line


def test_demo_balance_hint_is_a_valid_config(tmp_path):
    """The commented example appended to the demo's demo.yaml works when uncommented."""
    from sftlab.demo import BALANCE_HINT, demo_config

    example = yaml.safe_load("\n".join(line[4:] for line in BALANCE_HINT.splitlines() if line.startswith("#   ")))
    raw = demo_config(tmp_path, "model", tmp_path / "train.jsonl", tmp_path / "eval.jsonl")
    raw["train"].update(example)
    cfg = build_config(raw)
    assert cfg.train.task_weights == {"math/add": 3.0} and cfg.train.task_epochs == {"math/add": 2.0}
