"""Issue 16 item 6: SIGTERM (schedulers, preemptible machines) and Ctrl-C stop a run with a complete checkpoint
at a step boundary, exit 143 / 130 without a traceback, and resuming gives the same final weights as the
uninterrupted run: one process, and 2 gloo ranks through `sftlab train --nproc 2`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from sftlab.cli import main
from sftlab.data.records import write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_config(tmp_path: Path, model_dir: Path, records: list[dict], max_steps: int) -> Path:
    train = tmp_path / "train.jsonl"
    write_jsonl(records, train)
    cfg = {"model": {"name_or_path": str(model_dir)},
           "data": {"train": [str(train)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "max_steps": max_steps,
                     "logging_steps": 1, "seed": 3, "report_to": []}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(ln).get("step", 0) for ln in lines if ln.endswith("}")]
    return max(steps, default=0)


def signal_at_step(cmd: list[str], run: Path, at_step: int, sig: int, group: bool = False) -> tuple[int, str, str]:
    """Start `cmd`, send `sig` once the run has logged `at_step`; returns (exit code, stdout, stderr)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while last_step(run) < at_step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before step {at_step}:\n{proc.communicate()[1][-3000:]}"
        if group:  # Ctrl-C in a terminal: the whole foreground process group gets SIGINT
            os.killpg(proc.pid, sig)
        else:  # a scheduler signalling the launched process
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stopped_checkpoint(run: Path, out: str, total: int) -> tuple[int, Path]:
    """The step the run stopped at (from its last line) and its complete checkpoint."""
    line = next(ln for ln in out.splitlines() if ln.startswith("stopped by"))
    step = int(line.split(" at step ")[1].split(";")[0])
    ckpt = run / "checkpoints" / f"step-{step}"
    assert 0 < step < total, line
    for name in ("model.safetensors", "optimizer.pt", "training_state.pt", "tokenizer.json"):
        assert (ckpt / name).is_file(), name
    assert torch.load(ckpt / "training_state.pt", weights_only=False)["step"] == step
    assert not list((run / "checkpoints").glob("*.tmp"))
    return step, ckpt


def assert_same_weights(a: Path, b: Path, rel: float = 0.0) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        if rel == 0:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=rel, atol=1e-7)


def in_process(cfg: Path, *overrides: str) -> None:
    try:
        main(["train", str(cfg), *overrides])
    except SystemExit as e:
        assert not e.code, f"training failed with exit code {e.code}"


def test_sigterm_single_process_checkpoints_and_resumes_exactly(tmp_path, tiny_model_dir, small_records):
    total = 30
    cfg = write_config(tmp_path, tiny_model_dir, small_records, total)
    run = tmp_path / "run"
    at = random.Random().randint(2, 6)
    code, out, err = signal_at_step([sys.executable, "-m", "sftlab", "train", str(cfg)], run, at, signal.SIGTERM)
    assert code == 143, (at, out[-2000:], err[-3000:])
    assert "Traceback" not in err and "SIGTERM received" in err
    step, _ = stopped_checkpoint(run, out, total)
    assert step >= at
    assert not (run / "final").exists()

    # resume, and the uninterrupted reference, in fresh processes like the interrupted part (same thread
    # settings: the test process may have been changed by other tests); both at once
    train = [sys.executable, "-m", "sftlab", "train", str(cfg)]
    procs = [subprocess.Popen([*train, *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in (["train.resume=auto"], [f"train.output_dir={tmp_path / 'ref'}"])]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert_same_weights(tmp_path / "ref" / "final", run / "final")
    logged = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, total + 1))  # each step logged once, across the stop


needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")


def _signal_two_ranks(tmp_path, model_dir, records, total: int, at: int, sig, group: bool = False):
    """`sftlab train --nproc 2` of a `total`-step run, sent `sig` at step `at`: (config, run dir, launch line,
    (exit code, stdout, stderr))."""
    cfg = write_config(tmp_path, model_dir, records, total)
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "sftlab", "train", str(cfg), "--nproc", "2"]
    return cfg, run, launch, signal_at_step(launch, run, at, sig, group=group)


@needs_gloo
@pytest.mark.slow
def test_sigterm_two_ranks_checkpoints_and_resumes_to_the_same_weights(tmp_path, tiny_model_dir, small_records):
    total, at = 40, random.Random().randint(2, 8)
    cfg, run, launch, (code, out, err) = _signal_two_ranks(tmp_path, tiny_model_dir, small_records, total, at,
                                                           signal.SIGTERM)
    assert code == 143, (at, out[-2000:], err[-4000:])
    assert "Traceback" not in err and "SignalException" not in err
    stopped_checkpoint(run, out, total)

    res = subprocess.run([*launch, "train.resume=auto"], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resumed from" in res.stdout
    # the reference: the uninterrupted run on one process (2 ranks x accumulation 2 == 1 rank x 4: the contract)
    in_process(cfg, f"train.output_dir={tmp_path / 'ref'}", "train.gradient_accumulation_steps=4",
               "train.per_device_train_batch_size=2")
    assert_same_weights(tmp_path / "ref" / "final", run / "final", rel=1e-5)


@needs_gloo
@pytest.mark.slow
def test_ctrl_c_two_ranks_exits_130_without_traceback(tmp_path, tiny_model_dir, small_records):
    total = 40
    _, run, _, (code, out, err) = _signal_two_ranks(tmp_path, tiny_model_dir, small_records, total, 3, signal.SIGINT,
                                                    group=True)
    assert code == 130, (out[-2000:], err[-4000:])
    assert "Traceback" not in err and "SignalException" not in err
    stopped_checkpoint(run, out, total)


def test_launch_ends_a_user_error_of_the_workers_with_exit_2_and_no_traceback(monkeypatch, capsys):
    """A config error every rank refuses (e.g. a resume with another world size) is the workers' one line, then
    exit 2; it was torchrun's ChildFailedError traceback and exit 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    import sftlab.train.launch as launch

    def failing(argv):
        raise ChildFailedError("sftlab", {r: ProcessFailure(r, 100 + r, 2, "<N/A>") for r in range(2)})

    monkeypatch.setattr("torch.distributed.run.main", failing)
    with pytest.raises(SystemExit) as e:
        launch.main(["--nproc_per_node", "2", "-m", "sftlab", "train", "cfg.yaml"])
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
