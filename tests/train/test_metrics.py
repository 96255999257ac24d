"""Metric writers (JSONL, TensorBoard, W&B offline, MLflow adapter), resume truncation, and the live view."""

from __future__ import annotations

import importlib.machinery
import io
import json
import sys
import time
import types

import pytest
from cli_helpers import run_cli, write_config

from sftlab.errors import UserError
from sftlab.train.metrics import LiveView, MetricsWriter, read_metrics, truncate_metrics


def train_rec(step: int) -> dict:
    return {"step": step, "epoch": step / 10, "loss": 3.0 / step, "grad_norm": 1.5, "lr": 1e-4,
            "tokens_per_s": 1000.0 + step, "padding_ratio": 0.1, "supervised_tokens": 50,
            "loss/math": 2.0 / step, "loss/math/add": 2.5 / step, "loss/@eot": 0.5, "tokens/math": 40}


def tb_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path)
    for s in range(1, 4):
        w.log(train_rec(s))
        # flushed per line: readable while the writer is still open
        assert len(read_metrics(tmp_path / "metrics.jsonl")[0]) == s
    w.log({"step": 3, "eval_loss": 0.9, "eval_loss/math": 0.7})
    w.log({"step": 3, "alarm": "grad_spike", "message": "check"})
    w.close()
    w.close()  # idempotent
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines[:3]] == [train_rec(s) for s in range(1, 4)]
    assert json.loads(lines[4]) == {"step": 3, "alarm": "grad_spike", "message": "check"}
    sc = tb_scalars(tmp_path / "tb")
    for tag in ("loss", "grad_norm", "lr", "loss/math", "loss/math/add", "loss/@eot", "tokens/math",
                "eval_loss", "eval_loss/math"):
        assert tag in sc, tag
    assert [s for s, _ in sc["loss"]] == [1, 2, 3]
    assert sc["loss"][1][1] == pytest.approx(1.5)
    assert sc["eval_loss/math"] == [(3, pytest.approx(0.7))]
    assert "step" not in sc and "alarm" not in sc


def test_resume_truncates_to_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    with MetricsWriter(full, tensorboard=False) as w:
        for s in range(1, 11):
            w.log(train_rec(s))
            if s % 5 == 0:
                w.log({"step": s, "eval_loss": 1.0 / s})

    run = tmp_path / "resumed"
    with MetricsWriter(run) as w:  # interrupted after step 8; the last checkpoint is step 5
        for s in range(1, 9):
            w.log(train_rec(s))
            if s % 5 == 0:
                w.log({"step": s, "eval_loss": 1.0 / s})
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # killed mid-write
    with MetricsWriter(run, resume_from_step=5) as w:
        kept = read_metrics(run / "metrics.jsonl")[0]
        assert max(r["step"] for r in kept) == 5 and len(kept) == 6
        for s in range(6, 11):
            w.log(train_rec(s))
            if s % 5 == 0:
                w.log({"step": s, "eval_loss": 1.0 / s})
    assert (run / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    # TensorBoard: the interrupted run's steps 6-8 are purged, so each step appears once
    steps = [s for s, _ in tb_scalars(run / "tb")["loss"]]
    assert steps == list(range(1, 11))


def test_fresh_run_replaces_old_metrics(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.log(train_rec(1))
        w.log(train_rec(2))
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.log(train_rec(1))
    assert len(read_metrics(tmp_path / "metrics.jsonl")[0]) == 1


def test_truncate_metrics_keeps_stepless_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"note": "header"}\n{"step": 1, "loss": 1}\n{"step": 2, "loss": 1}\n')
    assert truncate_metrics(p, 1) == 2
    assert [json.loads(x) for x in p.read_text().splitlines()] == [{"note": "header"}, {"step": 1, "loss": 1}]


def test_mlflow_adapter_with_a_stand_in_module(tmp_path, monkeypatch):
    """MLflow is optional and not installed here: check our calls against a recording stand-in."""
    calls = []
    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    fake.set_experiment = lambda name: calls.append(("experiment", name))
    fake.start_run = lambda **kw: (calls.append(("start", kw)),
                                   types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1")))[1]
    fake.log_params = lambda p: calls.append(("params", p))
    fake.log_metrics = lambda m, step: calls.append(("metrics", m, step))
    fake.end_run = lambda: calls.append(("end",))
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    with MetricsWriter(tmp_path, tensorboard=False, mlflow={"experiment": "e", "params": {"lr": 1}}) as w:
        w.log({"step": 2, "loss": 1.0, "loss/@eot": 0.5, "grad_norm": float("nan")})
    assert ("experiment", "e") in calls and ("params", {"lr": 1}) in calls
    metrics = [c for c in calls if c[0] == "metrics"]
    assert metrics == [("metrics", {"loss": 1.0, "loss/_eot": 0.5}, 2)]  # NaN dropped, '@' made legal
    assert calls[-1] == ("end",)
    assert (tmp_path / "mlflow_run_id").read_text() == "r1"
    calls.clear()
    with MetricsWriter(tmp_path, tensorboard=False, mlflow={}, resume_from_step=2):
        pass
    assert ("start", {"run_id": "r1"}) in calls  # a resumed run continues the same MLflow run


def test_missing_tracker_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(UserError, match="mlflow is not installed"):
        MetricsWriter(tmp_path, tensorboard=False, mlflow={})


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with MetricsWriter(tmp_path, tensorboard=False, wandb={"project": "p", "mode": "offline"}) as w:
        for s in range(1, 4):
            w.log({"step": s, "loss": 1.0 / s, "loss/marker_channel": 0.25})
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    files = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    # wandb's service process writes the run file asynchronously, shortly after finish() returns
    deadline = time.monotonic() + 30
    while b"loss/marker_channel" not in files[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"loss/marker_channel" in files[0].read_bytes()


def test_live_view_plain_mode_for_non_tty():
    buf = io.StringIO()
    view = LiveView(total_steps=100, plain_every=10, stream=buf)
    assert not view.interactive
    for s in range(1, 101):
        view.update(train_rec(s))
        if s == 50:
            view.update({"step": 50, "eval_loss": 0.5, "eval_loss/math": 0.4})
            view.update({"step": 50, "alarm": "padding", "message": "use padfree"})
    view.close()
    lines = buf.getvalue().splitlines()
    train_lines = [ln for ln in lines if ln.startswith("step ")]
    assert len(train_lines) == 11  # first record + every 10th
    assert train_lines[-1].startswith("step 100/100 | loss 0.0300")
    assert "worst: @eot=0.500, math/add=0.025, math=0.020" in train_lines[-1]
    assert "eta 0:00" in train_lines[-1]
    assert "eval step 50 eval_loss=0.5000" in lines
    assert "ALARM step 50 padding: use padfree" in lines
    assert "\x1b[" not in buf.getvalue()  # no terminal escape codes in CI logs
    chans = view.top_channels()
    assert [c[0] for c in chans] == ["@eot", "math/add", "math"] and chans[1][2] is None
    assert ("math", pytest.approx(0.02), pytest.approx(0.4)) in chans


def test_live_view_rich_panel_on_a_terminal():
    buf = io.StringIO()
    view = LiveView(total_steps=10, stream=buf, force_terminal=True)
    assert view.interactive
    for s in range(1, 11):
        view.update(train_rec(s))
    view.update({"step": 10, "alarm": "grad_spike", "message": "lower the lr"})
    view.close()
    out = buf.getvalue()
    assert "sftlab train" in out and "highest-loss channels" in out and "math/add" in out
    assert "step 10/10" in out.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert "ALARM" in out and "lower the lr" in out


# -- report_to through a run (the training audit, issue 16) -----------------------------------------------------


def _fake_module(name: str, calls: list) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def rec(fn: str, result=None):
        return lambda *a, **k: (calls.append((fn, a, k)), result)[1]

    if name == "mlflow":
        run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))
        for fn in ("set_tracking_uri", "set_experiment", "log_params", "log_metrics", "end_run"):
            setattr(mod, fn, rec(fn))
        mod.start_run = rec("start_run", run)
    else:
        run = types.SimpleNamespace(id="w1", log=rec("log"), finish=rec("finish"))
        mod.init = rec("init", run)
    return mod


def test_wandb_and_mlflow_get_the_metrics_of_a_run_or_a_one_line_error(tmp_path, tiny_model_dir, train_file, capsys,
                                                                     monkeypatch):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, eval_steps=2)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    code, out, err = run_cli(["train", cfg, "train.report_to=[wandb]"], capsys)
    assert code == 2 and err.strip() == ("error: train.report_to: wandb is not installed here: pip install wandb "
                                         "(or remove wandb from train.report_to)")

    mlflow_calls, wandb_calls = [], []
    monkeypatch.setitem(sys.modules, "mlflow", _fake_module("mlflow", mlflow_calls))
    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", wandb_calls))
    code, out, err = run_cli(["train", cfg, "train.report_to=[wandb, mlflow]", "train.wandb={mode: offline}"], capsys)
    assert code == 0, err
    logged = {k for fn, a, _ in mlflow_calls if fn == "log_metrics" for k in a[0]}
    assert {"loss", "grad_norm", "lr", "eval_loss", "loss/math/add"} <= logged
    params = next(a[0] for fn, a, _ in mlflow_calls if fn == "log_params")
    assert params["train.learning_rate"] == "0.001"
    init = next(k for fn, _, k in wandb_calls if fn == "init")
    assert init["mode"] == "offline" and init["config"]["train"]["learning_rate"] == 1e-3
    assert {"loss", "eval_loss"} <= {k for fn, a, _ in wandb_calls if fn == "log" for k in a[0]}
    assert [fn for fn, _, _ in mlflow_calls][-1] == "end_run" and [fn for fn, _, _ in wandb_calls][-1] == "finish"
