"""The training loop: plain PyTorch, readable top to bottom.

    setup (sftlab/train/setup.py: every choice resolved into one frozen Run) -> model -> optimizer, schedule, resume
    -> for each optimizer step of the plan: micro-batches over the global denominator (forward, backward)
       -> clip, step -> log, eval (early stopping), save -> RUN/final

The pieces live beside it, one job each: the data split (dataset.py), the step plan (steps.py), checkpoints
(checkpoint.py), the optimizer (optim.py), the loss contract (loss.py), batching (batching.py).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import RunConfig, dump_config
from sftlab.data.render import eot_token_ids
from sftlab.errors import UserError
from sftlab.io import write_text
from sftlab.train import parallel
from sftlab.train.balance import share_metrics, weighted_sums
from sftlab.train.batching import collate, move_batch
from sftlab.train.checkpoint import prune, restore, save_checkpoint, save_model_dir
from sftlab.train.dataset import DataSet
from sftlab.train.estimate import RunCheck, memory_check
from sftlab.train.fused_ops import install_fused_ops, use_fused_ops
from sftlab.train.health import EarlyStopping, HealthMonitor
from sftlab.train.last_layer import install_last_layer_skip
from sftlab.train.loss import SupervisedTokenNLL, per_sample_sums, token_loss_scale
from sftlab.train.metrics import LiveView, MetricsWriter
from sftlab.train.model import DTYPES, autocast_context, frozen_base_dtype, load_model
from sftlab.train.optim import build_optimizer, build_scheduler
from sftlab.train.rundir import flatten
from sftlab.train.setup import GenerationEvalFactory, Run, setup
from sftlab.train.steps import split_global_batch


class TrainingError(UserError):
    """Training cannot go on (NaN loss, out of memory): the message says what to change."""


# ------------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, generation_eval: GenerationEvalFactory | None = None) -> Path:
    """Run one training job; returns RUN/final.

    `generation_eval` (needed by train.eval_generate): builds, from the run's config, the function that scores the
    model's greedy replies at every eval (sftlab.eval.during_training.generation_eval): the caller passes it, so
    training never imports the evaluation package."""
    run = setup(cfg, generation_eval)
    tc = run.config.train
    run_check = memory_check(run.config, run.device, run.dist.world_size, run.train_data, len(run.tokenizer),
                             run.is_main)
    t = _start(run, _load_model(run))
    logs = Logs(run, t.step)
    if tc.eval_on_start and run.eval_data is not None and t.step == 0:  # the step-0 baseline
        logs.record({**evaluate(t.engine, run.eval_data, run.config, run.dist, t.pad_id, t.eot_ids,
                                run.micro_batch), "step": 0}, health=False)
    stop_reason = None
    restore_signals = parallel.install_stop_handlers(run.dist)
    try:
        while t.step < run.total_steps:
            idx = run.plan.steps[t.step]
            result = _optimizer_step(t, idx)  # t.step: the steps done, this one included
            logs.count_tokens(int(result.counts[0]))
            last = t.step == run.total_steps
            if run.is_main and (t.step % tc.logging_steps == 0 or last):
                logs.log_train_step(t.step, idx, result, run_check)
            if run.eval_data is not None and tc.eval_steps and (t.step % tc.eval_steps == 0 or last):
                stop_reason = _evaluate(t, logs)
                if stop_reason:
                    break
            if tc.save_steps and t.step % tc.save_steps == 0 and not last:
                t.checkpoint(f"step-{t.step}")
                if run.is_main:
                    prune(run.run_dir, tc.save_total_limit)
            signum = parallel.stop_requested(run.dist) if not last else 0
            if signum:
                raise parallel.StopRequested(signum)
    except parallel.StopRequested as stop:  # SIGTERM / Ctrl-C: every rank is here after the same step
        path = t.checkpoint(f"step-{t.step}")
        if run.is_main:
            logs.view.close()
            print(f"\nstopped by {signal.Signals(stop.signum).name} at step {t.step}; checkpoint saved to {path}; "
                  "continue with train.resume=auto")
        parallel.destroy(run.dist)
        raise SystemExit(128 + stop.signum) from None
    finally:
        restore_signals()
        logs.close()
    return _finish(t, stop_reason, run_check)


# ------------------------------------------------------------------------------------------- start


@dataclass
class Trainer:
    """The live side of a run next to its frozen Run: the wrapped model, optimizer, schedule, early stopping and
    the optimizer steps done so far."""

    run: Run
    engine: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stopper: EarlyStopping | None
    step: int
    params: list[torch.nn.Parameter]  # the trainable ones (gradient clipping)
    pad_id: int
    eot_ids: torch.Tensor  # the end-of-turn token ids (loss/@eot)

    def checkpoint(self, name: str) -> Path:
        """RUN/checkpoints/<name> at the current step (every rank calls it)."""
        run = self.run
        state = {"early_stopping": self.stopper.state_dict() if self.stopper else None,
                 "world_size": run.dist.world_size, "fingerprint": run.fingerprint, "resolved": run.resolved}
        return save_checkpoint(run.run_dir / "checkpoints" / name, self.step, self.engine, run.tokenizer,
                               self.optimizer, self.scheduler, run.dist, state)


def _load_model(run: Run) -> Any:
    """The model to train (from the resume checkpoint's weights or adapter when resuming); RUN/config.yaml and
    RUN/data_summary.json are written once it loaded (a start that fails before leaves no run behind, rundir.py)."""
    cfg, resume = run.config, run.resume_dir
    model = load_model(cfg.model, run.tokenizer, run.device, cfg.train.gradient_checkpointing,
                       adapter_dir=str(resume) if resume and cfg.model.lora else None,
                       weights_dir=str(resume) if resume and not cfg.model.lora else None,
                       torch_compile=cfg.train.torch_compile, frozen_dtype=frozen_base_dtype(cfg.model, cfg.train.parallel))
    if run.is_main:
        dump_config(cfg, run.run_dir / "config.yaml", run.resolved)
        summary = {"train": {**run.train_data.summary, "plan_per_epoch": run.plan.table},
                   **({"eval": run.eval_data.summary} if run.eval_data else {})}
        write_text(json.dumps(summary), run.run_dir / "data_summary.json")
    if use_fused_ops(cfg.model.fused_ops, run.device):  # before the first forward: torch.compile traces lazily
        skipped: list[str] = []
        fused = install_fused_ops(model, skipped)
        if run.is_main:
            print(f"fused ops: {', '.join(fused) or 'none (no RMSNorm / rotary of the standard form)'}"
                  + (f"; kept transformers' code for {', '.join(skipped)}" if skipped else ""))
    skips = install_last_layer_skip(model)  # exact: same loss and gradients, less work (last_layer.py)
    if run.is_main and skips:
        print(f"only where the loss reads: {', '.join(skips)}")
    return model


def _start(run: Run, model: Any) -> Trainer:
    """Wrap the model for the loss and the ranks, build the optimizer and schedule, and restore them (with the
    RNG and early-stopping state) when resuming."""
    cfg = run.config
    engine = parallel.wrap_model(SupervisedTokenNLL(model, cfg.train.loss_chunk_size), cfg.train.parallel, run.dist,
                                 DTYPES[cfg.model.dtype], cfg.train.fsdp)
    engine.train()
    optimizer = build_optimizer(engine, cfg, run.device)
    scheduler = build_scheduler(optimizer, cfg, run.total_steps)
    step, state = 0, {}
    if run.resume_dir:
        step, state = restore(run.resume_dir, optimizer, scheduler, run.dist, engine)
        if run.is_main:
            print(f"resumed from {run.resume_dir} at step {step}")
    es = cfg.train.early_stopping
    stopper = EarlyStopping(es.metric, es.patience, es.min_delta, es.mode) if es else None
    if stopper is not None and state.get("early_stopping"):
        stopper.load_state_dict(state["early_stopping"])
    return Trainer(run, engine, optimizer, scheduler, stopper, step,
                   params=[p for p in engine.parameters() if p.requires_grad], pad_id=run.tokenizer.pad_token_id,
                   eot_ids=torch.tensor(eot_token_ids(run.tokenizer), device=run.device))


# ------------------------------------------------------------------------------------------- steps


@dataclass
class StepResult:
    """One optimizer step, reduced over the ranks."""

    stats: StepStats
    counts: torch.Tensor  # [real tokens, padded tokens, supervised tokens]
    denom: float  # the global batch's loss denominator D
    loss: float  # the optimized objective (task weights applied)
    grad_norm: float
    lr: float


def _optimizer_step(t: Trainer, idx: np.ndarray) -> StepResult:
    """Forward and backward over this rank's micro-batches of the global batch `idx`, then clip and step.
    Out of memory and a non-finite loss or gradient end the run with what to change (the last good state
    saved first)."""
    run, cfg = t.run, t.run.config
    denom = float(run.train_data.denoms[idx].sum())
    micro = split_global_batch(idx, run.dist.world_size, run.accumulation, run.dist.rank,
                               run.train_data.lengths if cfg.data.batching == "pack" else None, cfg.data.max_length)
    try:
        stats = run_micro_batches(t.engine, run.train_data, micro, denom, cfg, run.dist, t.pad_id, t.eot_ids,
                                  train=True)
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"out of memory at step {t.step + 1} (micro-batch {run.micro_batch} x max_length "
            f"{cfg.data.max_length}): lower train.per_device_train_batch_size (raise "
            "gradient_accumulation_steps to keep the global batch), set train.gradient_checkpointing=true, "
            "or lower data.max_length") from None
    counts = torch.tensor([stats.tokens, stats.padded, stats.supervised], dtype=torch.float64, device=run.device)
    parallel.all_reduce_sum(stats.sums, run.dist)
    if run.train_data.weights is not None:
        parallel.all_reduce_sum(stats.weighted, run.dist)
    parallel.all_reduce_sum(counts, run.dist)
    grad_norm = torch.nn.utils.clip_grad_norm_(t.params, cfg.train.max_grad_norm or float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss = float(stats.weighted[0]) / denom  # the optimized objective (task weights applied)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        t.optimizer.zero_grad(set_to_none=True)
        path = t.checkpoint(f"emergency-step-{t.step}")
        ids = [run.train_data.samples[i]["id"] for i in idx]
        raise TrainingError(
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step {t.step + 1} "
            f"(samples {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}); last good state saved to "
            f"{path}. Check these samples, lower the learning rate, or use fp32/bf16 instead of fp16")
    lr = t.scheduler.get_last_lr()[0]
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.step += 1
    return StepResult(stats, counts, denom, loss, grad_norm, lr)


def _evaluate(t: Trainer, logs: Logs) -> str | None:
    """Eval loss (and generation metrics with train.eval_generate) at this step, logged and watched by the
    alarms and early stopping; returns why training stops early, else None."""
    run = t.run
    ev = evaluate(t.engine, run.eval_data, run.config, run.dist, t.pad_id, t.eot_ids, run.micro_batch)
    ev["step"] = t.step
    if run.generation_eval is not None:  # rank 0 generates alone; every rank gets its metrics (early stopping runs on all)
        gen = {}
        if run.is_main:
            with autocast_context(run.config.model.dtype, run.device):  # the frozen base may be half (LoRA)
                gen = run.generation_eval(parallel.unwrap(t.engine).model, run.tokenizer)
        ev.update(parallel.all_gather_object(gen, run.dist)[0])
    logs.record(ev)
    if t.stopper is None:
        return None
    value = ev.get(t.stopper.metric)
    if value is None:
        raise UserError(f"train.early_stopping.metric {t.stopper.metric!r} is not an eval metric "
                        f"(have: {', '.join(sorted(k for k in ev if k != 'step'))})")
    improved, stop = t.stopper.update(t.step, value)
    if improved:
        save_model_dir(run.run_dir / "best", t.engine, run.tokenizer, run.dist)
    if not stop:
        return None
    reason = f"early stopping: {t.stopper.metric} did not improve for {t.stopper.patience} evals"
    if run.is_main:
        print(f"{reason}; best step {t.stopper.best_step} kept in {run.run_dir / 'best'}")
    return reason


def _finish(t: Trainer, stop_reason: str | None, run_check: RunCheck | None) -> Path:
    """Save RUN/final (every rank), say what was done, leave the process group."""
    run = t.run
    final = run.run_dir / "final"
    save_model_dir(final, t.engine, run.tokenizer, run.dist)
    if run.is_main:
        print(f"done: {t.step} steps{' (' + stop_reason + ')' if stop_reason else ''}; model in {final}; "
              f"metrics in {run.run_dir / 'metrics.jsonl'}")
        if run_check is not None:
            print(run_check.summary())
    parallel.destroy(run.dist)
    return final


# ------------------------------------------------------------------------------------------- logs


class Logs:
    """Where a run reports, on rank 0 (on the other ranks nothing is written): metrics.jsonl and the trackers,
    the live view, and the health alarms that watch both."""

    def __init__(self, run: Run, start_step: int) -> None:
        tc = run.config.train
        self.run = run
        self.writer = MetricsWriter(run.run_dir, tensorboard="tensorboard" in tc.report_to,
                                    resume_from_step=start_step if run.resume_dir else None,
                                    **tracker_options(run.config)) if run.is_main else None
        self.view = LiveView(run.total_steps) if run.is_main else None
        self.monitor = HealthMonitor(tc.health, vocab_size=len(run.tokenizer))
        self._t_last, self._tokens = time.perf_counter(), 0  # throughput since the last train record

    def count_tokens(self, n: int) -> None:
        self._tokens += n

    def log_train_step(self, step: int, idx: np.ndarray, r: StepResult, run_check: RunCheck | None) -> None:
        """Log a train step (loss, per-channel losses and shares, throughput, memory) and let the alarms watch it:
        they compare losses with ln(vocab) etc., per-token NLL, so they read the unweighted loss."""
        rec = self._train_record(step, idx, r, run_check)
        self.record(rec, health=False)
        self.check_health({**rec, "loss": rec.get("loss_unweighted", r.loss)})

    def _train_record(self, step: int, idx: np.ndarray, r: StepResult, run_check: RunCheck | None) -> dict[str, Any]:
        data = self.run.train_data
        now = time.perf_counter()
        sel = torch.as_tensor(idx)
        ch_den = data.channel_matrix.T[:, sel] @ torch.as_tensor(data.denoms, dtype=torch.float64)[sel]
        rec: dict[str, Any] = {
            "step": step, "epoch": round(step / self.run.plan.per_epoch, 4), "loss": r.loss, "grad_norm": r.grad_norm,
            "lr": r.lr, "supervised_tokens": int(r.counts[2]), "tokens": int(r.counts[0]),
            "tokens_per_s": self._tokens / max(now - self._t_last, 1e-9),
            "padding_ratio": 1.0 - float(r.counts[0]) / max(float(r.counts[1]), 1.0)}
        if data.weights is not None:
            rec["loss_unweighted"] = float(r.stats.sums[0]) / r.denom
        ch_tokens = data.channel_matrix.numpy()[idx].T @ data.supervised[idx]
        rec.update(share_metrics(data.channels, r.stats.weighted, ch_tokens, float(data.supervised[idx].sum())))
        if run_check is not None:
            rec.update(run_check.metrics(rec["tokens_per_s"]))
        for j, c in enumerate(data.channels):
            if ch_den[j] > 0:
                rec[f"loss/{c}"] = float(r.stats.sums[1 + j]) / float(ch_den[j])
        n_eot = float(r.stats.sums[-1])
        if n_eot:
            rec["loss/@eot"] = float(r.stats.sums[-2]) / n_eot
        self._t_last, self._tokens = now, 0
        return rec

    def record(self, rec: dict[str, Any], health: bool = True) -> None:
        """Log a record (rank 0) and, with `health`, let the alarms watch it."""
        if self.writer is None:
            return
        self.writer.log(rec)
        self.view.update(rec)
        if health:
            self.check_health(rec)

    def check_health(self, rec: dict[str, Any]) -> None:
        """Log the alarms a record raises; abort when train.health.abort_on names one."""
        alarms = self.monitor.update(rec)
        for a in alarms:
            print(f"warning [{a.name}] step {a.step}: {a.message}")
            self.writer.log({"step": a.step, "alarm": a.name, "message": a.message})
        if self.monitor.should_abort(alarms):
            names = ", ".join(a.name for a in alarms)
            raise TrainingError(f"aborted by health alarm ({names}) at step {rec.get('step')}: {alarms[0].message}")

    def close(self) -> None:
        if self.writer is not None:
            self.view.close()
            self.writer.close()


def tracker_options(cfg: RunConfig) -> dict[str, Any]:
    """MetricsWriter's wandb / mlflow options: the user's options plus the run config (None: not reported to)."""
    tree = cfg.model_dump(mode="json")
    params: dict[str, Any] = {}
    flatten(tree, "", params)
    params = {k: str(v)[:500] for k, v in params.items()}  # MLflow caps a param value at 500 characters
    return {"wandb": {"config": tree, **cfg.train.wandb} if "wandb" in cfg.train.report_to else None,
            "mlflow": {"params": params, **cfg.train.mlflow} if "mlflow" in cfg.train.report_to else None}


# ------------------------------------------------------------------------------------ micro-batches


@dataclass
class StepStats:
    """What this rank's micro-batches of one global batch summed (reduced across ranks by the caller)."""

    sums: torch.Tensor  # [1 + n_channels + 2]: total numerator, channel numerators, eot nll sum, eot count
    tokens: int = 0
    padded: int = 0
    supervised: int = 0
    weighted: torch.Tensor | None = None  # [weighted total, weighted channel numerators] (task_weights)


def run_micro_batches(engine: Any, data: DataSet, micro: list[tuple[np.ndarray, Any]], denom: float, cfg: RunConfig,
                      info: parallel.DistInfo, pad_id: int, eot_ids: torch.Tensor, train: bool) -> StepStats:
    """Forward (and backward when training) over this rank's micro-batches of one global batch.
    Each micro-batch's loss is its partial sum over the *global* denominator, scaled by the world size to
    compensate the data-parallel gradient averaging (docs/DESIGN.md §2)."""
    device = info.device
    n_ch = len(data.channels)
    stats = StepStats(sums=torch.zeros(n_ch + 3, dtype=torch.float64, device=device),
                      weighted=torch.zeros(n_ch + 1, dtype=torch.float64, device=device))
    matrix = data.channel_matrix.to(device)
    for a, (idx, rows) in enumerate(micro):
        if len(idx) == 0:
            continue
        batch = collate([data.samples[i] for i in idx], cfg.data.batching, pad_id, rows=rows,
                        attn_implementation=cfg.model.attn_implementation, max_len=cfg.data.max_length)
        batch = move_batch(batch, device)
        ctx = parallel.no_sync(engine, train and a < len(micro) - 1)
        weights = None if data.weights is None else torch.as_tensor(data.weights[idx], device=device)
        with ctx, autocast_context(cfg.model.dtype, device):
            if train:
                loss, nll = engine(batch, token_loss_scale(batch, denom, weights) * info.world_size)
            else:
                nll = engine(batch)
        if train:
            loss.backward()
        per_sample = per_sample_sums(nll, batch, len(idx))
        rows = matrix[torch.as_tensor(idx, device=device)]
        stats.sums[0] += per_sample.sum()
        stats.sums[1:1 + n_ch] += rows.T @ per_sample
        if weights is not None:
            stats.weighted += weighted_sums(per_sample, weights, rows)
        is_eot = torch.isin(batch["targets"], eot_ids)
        stats.sums[1 + n_ch] += nll.detach()[is_eot].double().sum()
        stats.sums[2 + n_ch] += is_eot.sum()
        stats.tokens += batch["tokens"]
        stats.padded += batch["padded_tokens"]
        stats.supervised += int(batch["targets"].numel())
    if data.weights is None:  # no task weights: the weighted numerators are the plain ones (a view: reduced in place)
        stats.weighted = stats.sums[:1 + n_ch]
    return stats


def evaluate(engine: Any, data: DataSet, cfg: RunConfig, info: parallel.DistInfo, pad_id: int,
             eot_ids: torch.Tensor, micro_size: int) -> dict[str, float]:
    """Eval loss (same reduction, denominator = the whole eval set) overall and per channel."""
    was_training = engine.training
    engine.eval()
    order = np.argsort(-data.lengths, kind="stable")
    shard = order[info.rank::info.world_size]
    micro = [(shard[i:i + micro_size], None) for i in range(0, len(shard), micro_size)]
    # Under DDP / FSDP every forward is collective (buffer broadcast, parameter all-gather): a rank with fewer
    # eval micro-batches than rank 0 runs the difference on a throwaway batch, or the others would wait forever.
    spare = math.ceil(len(order[0::info.world_size]) / micro_size) - len(micro)
    with torch.no_grad():
        stats = run_micro_batches(engine, data, micro, 1.0, cfg, info, pad_id, eot_ids, train=False)
        if spare > 0:  # same forward path, results discarded
            run_micro_batches(engine, data, [(order[:1], None)] * spare, 1.0, cfg, info, pad_id, eot_ids, train=False)
    parallel.reshard(engine)  # FSDP2 with reshard_after_forward false: no backward came to free the gathered layers
    parallel.all_reduce_sum(stats.sums, info)
    denom = float(data.denoms.sum())
    out = {"eval_loss": float(stats.sums[0]) / denom}
    ch_den = data.channel_matrix.T @ torch.as_tensor(data.denoms, dtype=torch.float64)
    for j, c in enumerate(data.channels):
        if ch_den[j] > 0:
            out[f"eval_loss/{c}"] = float(stats.sums[1 + j]) / float(ch_den[j])
    if was_training:
        engine.train()
    return out


__all__ = ["train", "evaluate", "run_micro_batches", "TrainingError"]
