"""`sftlab estimate --probe STEPS`: time a few real steps of the config and extrapolate the full run.

The probe runs the ordinary training entry point (sftlab/train/loop.py) on the same config with overrides
(a temporary output dir, max_steps=STEPS, a metrics line per step, no eval, no checkpoints), so it trains the
first STEPS optimizer steps of the real step plan: a random sample of the data's global batches. Then

    predicted = start-up (probe wall time - its step times) + first step + (steps - 1) x mean step time
              + evaluations (eval tokens at a third of the training cost per token: forward only)
              + checkpoints (their bytes at an assumed 500 MB/s)

with ± two standard errors of the mean step time carried over the remaining steps.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import build_config, resolve_batch_sizes
from sftlab.data.render import load_tokenizer
from sftlab.errors import UserError
from sftlab.train.dataset import DataSet, load_split
from sftlab.train.estimate import GIB, measured_peak, memory_baseline, parameter_bytes
from sftlab.train.loop import train
from sftlab.train.metrics import read_metrics
from sftlab.train.model import meta_model, pick_device
from sftlab.train.steps import plan_steps

SAVE_BYTES_PER_S = 500e6


def full_run_steps(cfg: Any, train_data: DataSet, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps, steps per epoch) of the full run, from the run's own step plan (task_epochs included)."""
    _, accum, global_batch = resolve_batch_sizes(cfg.train, world_size)
    plan = plan_steps(train_data, cfg.train, global_batch, world_size * accum)
    return plan.total, plan.per_epoch


def probe_run(cfg: Any, steps: int, quiet: bool = False, world_size: int = 1) -> dict[str, Any]:
    """Train `steps` steps of `cfg` in a temporary dir; return measured step time, peak memory and the
    predicted wall time of the full run (seconds) with its uncertainty. `world_size` > 1: the probe (one
    process) runs one rank's share of a step (its micro-batch and accumulation steps), and the run's steps are
    those of `world_size` processes; the communication between ranks is not timed."""
    if steps < 2:
        raise UserError(f"--probe needs at least 2 steps (the first one warms up), got {steps}")
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    with tempfile.TemporaryDirectory(prefix="sftlab-probe-") as tmp:
        overrides = [f"train.output_dir={Path(tmp) / 'run'}", f"train.max_steps={steps}", "train.logging_steps=1",
                     "train.eval_steps=0", "train.eval_generate=null", "train.save_steps=0", "train.report_to=[]",
                     "train.resume=null", "train.early_stopping=null"]
        micro, accum, _ = resolve_batch_sizes(cfg.train, world_size)  # one rank's work per step
        overrides += [f"train.per_device_train_batch_size={micro}", f"train.gradient_accumulation_steps={accum}",
                      "train.global_batch_size=null"]
        probe_cfg = build_config(raw, overrides, source="probe")
        device = pick_device(cfg.train.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        baseline = memory_baseline()
        out = io.StringIO()
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
            train(probe_cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak, source = measured_peak(device, baseline)
        records, _ = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    step_times = np.array([r["tokens"] / r["tokens_per_s"] for r in records
                           if "loss" in r and r.get("tokens_per_s")])
    if len(step_times) < 2:
        raise UserError(f"the probe logged {len(step_times)} steps; the data has fewer than {steps} steps")

    train_data, eval_tokens = _data_sizes(cfg)
    total_steps, _ = full_run_steps(cfg, train_data, world_size)
    rest = step_times[1:]
    mean, sem = float(rest.mean()), float(rest.std(ddof=1) / math.sqrt(len(rest))) if len(rest) > 1 else 0.0
    startup = wall - float(step_times.sum())
    tokens_per_step = float(np.mean([r["tokens"] for r in records if "loss" in r]))
    n_evals = 0
    if cfg.data.eval and cfg.train.eval_steps:
        n_evals = total_steps // cfg.train.eval_steps + (1 if total_steps % cfg.train.eval_steps else 0)
    eval_s = n_evals * eval_tokens / world_size * (mean / max(tokens_per_step, 1.0)) / 3.0  # ranks split the set
    n_saves = (total_steps - 1) // cfg.train.save_steps if cfg.train.save_steps else 0
    save_s = n_saves * _checkpoint_bytes(cfg) / SAVE_BYTES_PER_S
    train_s = float(step_times[0]) + (total_steps - 1) * mean
    predicted = startup + train_s + eval_s + save_s
    return {"probe_steps": int(len(step_times)), "probe_wall_s": round(wall, 3), "startup_s": round(startup, 3),
            "step_s": round(mean, 5), "step_s_sem": round(sem, 5), "tokens_per_step": round(tokens_per_step, 1),
            "total_steps": total_steps, "train_s": round(train_s, 2), "eval_s": round(eval_s, 2),
            "save_s": round(save_s, 2), "predicted_s": round(predicted, 2),
            "uncertainty_s": round(2 * sem * (total_steps - 1), 2),
            # the same extrapolation in process CPU time: comparable across machine load (shared machines)
            "probe_cpu_s": round(cpu, 3), "predicted_cpu_s": round(cpu * predicted / wall, 2),
            "memory_peak_gb": round(peak / GIB, 4), "memory_peak_source": source}


def _data_sizes(cfg: Any) -> tuple[DataSet, int]:
    """(the train DataSet, eval tokens) after rendering, as the run sees them."""
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template, cfg.model.special_tokens,
                         cfg.model.eot_token)
    train = load_split(cfg.data.train, cfg, tok, "train", is_main=False)
    eval_tokens = 0
    if cfg.data.eval:
        eval_tokens = int(load_split(cfg.data.eval, cfg, tok, "eval", is_main=False).lengths.sum())
    return train, eval_tokens


def _checkpoint_bytes(cfg: Any) -> int:
    """Bytes of one checkpoint: the trainable weights' model files (all weights for full fine-tuning) plus
    the optimizer states."""
    counts = parameter_bytes(meta_model(cfg.model))
    model_bytes = counts["weights_bytes"] if cfg.model.lora is None else counts["gradients_bytes"]
    return model_bytes + counts["optimizer_bytes"]
