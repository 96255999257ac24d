"""The estimate on every training run (start-up line, metrics, report) and `sftlab estimate --probe`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main
from sftlab.data.records import write_jsonl


def _config(tmp_path: Path, model_dir: Path, records: list[dict], **train) -> Path:
    data = tmp_path / "train.jsonl"
    write_jsonl(records, data)
    cfg = {"model": {"name_or_path": str(model_dir)}, "data": {"train": [str(data)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "logging_steps": 1, "seed": 0, "report_to": [], **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_training_logs_estimate_and_peak(tmp_path, tiny_model_dir, small_records, capsys):
    from sftlab.report import write_report

    cfg = _config(tmp_path, tiny_model_dir, small_records, max_steps=3)
    main(["train", str(cfg)])
    out = capsys.readouterr().out
    assert "memory estimate per device:" in out and "measured peak" in out
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert len(train) == 3
    for r in train:
        assert 0 < r["memory_estimate_gb"] < 1 and r["memory_peak_gb"] >= 0
        assert "mfu" not in r  # CPU: no known peak FLOP/s, so no made-up MFU
    page = write_report(tmp_path / "run").read_text()
    assert "memory per device: estimate / measured peak" in page


def test_probe_predicts_from_measured_steps(tmp_path, tiny_model_dir, small_records, capsys):
    """--probe trains through the ordinary loop in a temp dir and extrapolates over the full step plan."""
    cfg = _config(tmp_path, tiny_model_dir, small_records, num_train_epochs=3)
    main(["estimate", str(cfg), "--probe", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    probe = out["probe"]
    assert probe["probe_steps"] == 3
    assert probe["total_steps"] == 18  # 24 samples / global batch 4 = 6 steps per epoch, 3 epochs
    assert probe["step_s"] > 0 and probe["startup_s"] >= 0
    expected = probe["startup_s"] + probe["train_s"] + probe["eval_s"] + probe["save_s"]
    assert probe["predicted_s"] == pytest.approx(expected, abs=0.05)
    assert probe["train_s"] > 15 * probe["step_s"]
    assert not (tmp_path / "run").exists()  # the probe never writes into the real output dir


def test_probe_counts_the_steps_of_the_world_size(tmp_path, tiny_model_dir, small_records, capsys):
    """--world-size was ignored by --probe: the full run was counted (and its step timed) as one process's."""
    cfg = _config(tmp_path, tiny_model_dir, small_records, num_train_epochs=3, global_batch_size=8,
                  per_device_train_batch_size=2)
    main(["estimate", str(cfg), "--probe", "3", "--json", "--world-size", "2"])
    probe = json.loads(capsys.readouterr().out)["probe"]
    assert probe["total_steps"] == 9  # 24 samples / global batch 8 = 3 steps per epoch, 3 epochs
    # the probe ran one rank's share of a step: micro 2 x accumulation 2 (not the 1-process accumulation 4)
    main(["estimate", str(cfg), "--probe", "3", "--json"])
    alone = json.loads(capsys.readouterr().out)["probe"]
    assert alone["total_steps"] == 9 and alone["tokens_per_step"] > 1.5 * probe["tokens_per_step"]


def test_probe_rejects_one_step(tmp_path, tiny_model_dir, small_records, capsys):
    cfg = _config(tmp_path, tiny_model_dir, small_records)
    with pytest.raises(SystemExit) as e:
        main(["estimate", str(cfg), "--probe", "1"])
    assert e.value.code == 2
    assert "--probe needs at least 2 steps" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_predicts_demo_training_time():
    """Acceptance: --probe on the demo config predicts the full demo training within ±20 % (same process,
    same machine load). `benchmarks/bench_estimate.py` prints the same pair at full demo size."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_estimate import demo_probe

    predicted, measured, _ = demo_probe(probe_steps=15, n_train=1200, epochs=2)
    assert abs(predicted / measured - 1) <= 0.20, (predicted, measured)
