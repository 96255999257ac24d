"""The training loop: plain PyTorch, readable top to bottom.

    config -> records -> rendered samples (+ loss coefficients) -> step plan (global batches) ->
    for each optimizer step: denominators of the global batch -> micro-batches (forward, backward) ->
    clip, step, log, eval, save.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import RunConfig, dump_config, resolve_batch_sizes
from sftlab.data.records import task_channels, write_jsonl
from sftlab.data.render import eot_token_ids, load_tokenizer, render_records
from sftlab.errors import UserError
from sftlab.train import parallel
from sftlab.train.batching import collate, move_batch, packed_micro_batch, plan_packed_micro_batches
from sftlab.train.loss import SupervisedTokenNLL, attach_loss_coefficients, micro_batch_loss, per_sample_sums
from sftlab.train.model import DTYPES, autocast_context, check_model_path, load_model, pick_device

STATE_FILE = "training_state.pt"


class TrainingError(UserError):
    """Training cannot go on (NaN loss, out of memory): the message says what to change."""


# ----------------------------------------------------------------------------------------------- data


@dataclass
class DataSet:
    """Rendered samples plus what the loop needs about them, precomputed once."""

    samples: list[dict[str, Any]]
    channels: list[str]
    channel_matrix: torch.Tensor  # [n_samples, n_channels] 1.0 where the sample counts in the channel
    denoms: np.ndarray  # per-sample loss denominator
    lengths: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def load_split(sources: list, cfg: RunConfig, tokenizer: Any, run_dir: Path | None, name: str,
               is_main: bool, channels: list[str] | None = None) -> DataSet:
    """Read every source, render, attach loss coefficients; rejects go to RUN/rejects-<name>.jsonl."""
    from sftlab.data.formats import read_records

    rng = random.Random(cfg.train.seed)
    records, rejects = [], []
    for src in sources:
        if not Path(src.path).exists():
            raise UserError(f"data.{name}: file not found: {src.path}")
        recs, rej = read_records(src.path, src.format, task_type=src.task_type, on_error=cfg.data.on_error,
                                 extra_roles=cfg.data.extra_roles)
        rejects += rej
        whole, frac = int(src.weight), src.weight - int(src.weight)
        records += recs * whole + (rng.sample(recs, round(frac * len(recs))) if frac else [])
    if not records:
        raise UserError(f"data.{name}: no records to train on")
    samples, report = render_records(records, tokenizer, train_on=cfg.data.train_on,
                                     max_length=cfg.data.max_length, on_error=cfg.data.on_error)
    rejects += [{"code": r["code"], "reason": r["reason"], "raw": r["record"]} for r in report.rejects]
    if is_main:
        print(f"[{name}] {len(records)} records: {report.summary()}")
        if rejects and run_dir is not None:
            write_jsonl(rejects, run_dir / f"rejects-{name}.jsonl")
            print(f"[{name}] {len(rejects)} rejected records written to {run_dir / f'rejects-{name}.jsonl'}")
    if not samples:
        raise UserError(f"data.{name}: every record was rejected ({len(rejects)}); see the rejects file")
    attach_loss_coefficients(samples, cfg.train.loss)
    for s in samples:  # arrays once here, so collating a micro-batch never converts Python lists again
        s["input_ids"] = np.asarray(s["input_ids"], dtype=np.int64)
        s["labels"] = np.asarray(s["labels"], dtype=np.int64)
    if channels is None:
        channels = sorted({c for s in samples for c in task_channels(s["task_type"])})
    index = {c: i for i, c in enumerate(channels)}
    matrix = torch.zeros(len(samples), len(channels), dtype=torch.float64)
    for i, s in enumerate(samples):
        for c in task_channels(s["task_type"]):
            if c in index:
                matrix[i, index[c]] = 1.0
    per_task: dict[str, list[int]] = {}
    for s in samples:
        per_task.setdefault(s["task_type"], []).append(s["num_tokens"])
    summary = {"samples_per_task": {t: len(v) for t, v in sorted(per_task.items())},
               "tokens_per_task": {t: int(sum(v)) for t, v in sorted(per_task.items())},
               "lengths": [s["num_tokens"] for s in samples], "supervised_tokens": report.supervised_tokens,
               "truncated": report.truncated, "rejected": len(rejects)}
    return DataSet(samples, channels, matrix, np.array([s["loss_denom"] for s in samples]),
                   np.array([s["num_tokens"] for s in samples]), summary)


def step_plan(n: int, global_batch: int, min_batch: int, epochs: float, max_steps: int, seed: int,
              lengths: np.ndarray | None) -> tuple[list[np.ndarray], int]:
    """The sample indices of every optimizer step. They depend only on the seed and the global batch size;
    how a step is split into micro-batches, accumulation steps and ranks never changes them.
    With `lengths`, each global batch is sorted by length (grouping inside the global batch)."""
    per_epoch = n // global_batch + (1 if n % global_batch >= min_batch else 0)
    if per_epoch == 0:
        raise UserError(f"the train set has {n} samples, fewer than one global batch ({global_batch}); "
                        "lower per_device_train_batch_size or gradient_accumulation_steps")
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < total:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for b in range(per_epoch):
            idx = order[b * global_batch:(b + 1) * global_batch]
            if lengths is not None:
                idx = idx[np.argsort(-lengths[idx], kind="stable")]
            plan.append(idx)
            if len(plan) == total:
                break
        epoch += 1
    return plan, per_epoch


def split_global_batch(idx: np.ndarray, world: int, accum: int, rank: int, lengths: np.ndarray | None = None,
                       max_len: int | None = None) -> list[tuple[np.ndarray, list[list[int]] | None]]:
    """This rank's micro-batches of one global batch, as (sample indices, packed rows or None).

    pad / padfree: the global batch is cut into world × accum contiguous parts, part (a · world + r) going
    to rank r at accumulation step a. pack (`lengths` given): the global batch is bin-packed into rows of
    max_len tokens first and the rows are dealt to the micro-batches, so packing never changes which
    samples make an optimizer step."""
    if lengths is None:
        parts = np.array_split(idx, world * accum)
        return [(parts[a * world + rank], None) for a in range(accum)]
    plan = plan_packed_micro_batches(lengths[idx], max_len, world * accum)
    out = []
    for a in range(accum):
        flat, local = packed_micro_batch(list(idx), plan[a * world + rank])
        out.append((np.asarray(flat), local))
    return out


# ---------------------------------------------------------------------------------------- optimizer


def build_optimizer(model: Any, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases (1-D parameters)."""
    wd = cfg.train.weight_decay
    if wd is None:
        wd = 0.0 if cfg.model.lora is not None else 0.01
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                             eps=cfg.train.adam_epsilon, **kind)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int) -> Any:
    """Warmup (ratio or steps) then constant / linear / cosine / cosine to a minimum lr."""
    from transformers import get_scheduler

    warmup = cfg.train.warmup_steps or math.ceil(cfg.train.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.train.lr_scheduler_type, cfg.train.lr_scheduler_type)
    extra = {"min_lr_rate": cfg.train.min_lr_ratio} if name == "cosine_with_min_lr" else None
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)


# ------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(path: Path, engine: Any, tokenizer: Any, info: parallel.DistInfo,
                   extra: dict[str, Any] | None = None, optimizer: Any = None) -> None:
    """Write an HF-layout directory atomically (temp dir + rename): a crash never leaves a half checkpoint.
    Every rank must call this (FSDP gathers the shards)."""
    state = parallel.full_state_dict(engine, info)
    tmp = path.with_name(path.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        parallel.unwrap(engine).model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
    parallel.barrier(info)
    if optimizer is not None:
        # Optimizer state: one file per rank (sharded under FSDP; identical under DDP, so only rank 0 writes).
        sharded = parallel.is_sharded(engine)
        if info.is_main or sharded:
            name = f"optimizer.rank{info.rank}.pt" if sharded else "optimizer.pt"
            torch.save(optimizer.state_dict(), tmp / name)
    parallel.barrier(info)
    if info.is_main:
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    parallel.barrier(info)


def find_resume_dir(run_dir: Path, resume: str | None) -> Path | None:
    """`auto`: the newest complete checkpoint in RUN/checkpoints (none: start fresh); else the given dir."""
    if not resume:
        return None
    if resume == "auto":
        ckpts = [p for p in (run_dir / "checkpoints").glob("step-*") if (p / STATE_FILE).exists()]
        return max(ckpts, key=lambda p: int(p.name.split("-")[1])) if ckpts else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise UserError(f"train.resume: {resume} is not a checkpoint directory (no {STATE_FILE})")
    return p


def prune_checkpoints(run_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for p in ckpts[:-limit]:
        shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ steps


@dataclass
class StepStats:
    sums: torch.Tensor  # [2 + n_channels + 2]: total numerator, unused, channel numerators, eot nll sum, eot count
    tokens: int = 0
    padded: int = 0
    supervised: int = 0


def run_micro_batches(engine: Any, data: DataSet, micro: list[tuple[np.ndarray, Any]], denom: float, cfg: RunConfig,
                      info: parallel.DistInfo, pad_id: int, eot_ids: torch.Tensor, train: bool) -> StepStats:
    """Forward (and backward when training) over this rank's micro-batches of one global batch.
    Each micro-batch's loss is its partial sum over the *global* denominator, scaled by the world size to
    compensate the data-parallel gradient averaging (docs/DESIGN.md §2)."""
    device = info.device
    n_ch = len(data.channels)
    stats = StepStats(sums=torch.zeros(n_ch + 3, dtype=torch.float64, device=device))
    matrix = data.channel_matrix.to(device)
    for a, (idx, rows) in enumerate(micro):
        if len(idx) == 0:
            continue
        batch = collate([data.samples[i] for i in idx], cfg.data.batching, pad_id, rows=rows,
                        attn_implementation=cfg.model.attn_implementation, max_len=cfg.data.max_length)
        batch = move_batch(batch, device)
        ctx = parallel.no_sync(engine, train and a < len(micro) - 1)
        with ctx, autocast_context(cfg.model.dtype, device):
            nll = engine(batch)
            if train:
                loss = micro_batch_loss(nll, batch, denom) * info.world_size
        if train:
            loss.backward()
        per_sample = per_sample_sums(nll, batch, len(idx))
        stats.sums[0] += per_sample.sum()
        stats.sums[1:1 + n_ch] += matrix[torch.as_tensor(idx, device=device)].T @ per_sample
        is_eot = torch.isin(batch["targets"], eot_ids)
        stats.sums[1 + n_ch] += nll.detach()[is_eot].double().sum()
        stats.sums[2 + n_ch] += is_eot.sum()
        stats.tokens += batch["tokens"]
        stats.padded += batch["padded_tokens"]
        stats.supervised += int(batch["targets"].numel())
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


# ------------------------------------------------------------------------------------------- train


def train(cfg: RunConfig) -> Path:
    """Run one training job; returns RUN/final."""
    device = pick_device(cfg.train.device)
    info = parallel.init_distributed(device)
    device = info.device
    run_dir = Path(cfg.train.output_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{info.rank}"  # one per rank: ranks must not delete each other's probe
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"train.output_dir: cannot write to {run_dir}: {e.strerror}") from None
    micro_size, accum, global_batch = resolve_batch_sizes(cfg.train, info.world_size)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    resume_dir = find_resume_dir(run_dir, cfg.train.resume)
    tok_src = str(resume_dir) if resume_dir else cfg.model.name_or_path
    if not resume_dir:
        check_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(tok_src, cfg.model.chat_template if not resume_dir else None,
                               cfg.model.special_tokens, cfg.model.eot_token)
    cfg.data.batching = resolve_batching(cfg, device)
    check_isolation(cfg, device)

    train_data = load_split(cfg.data.train, cfg, tokenizer, run_dir, "train", info.is_main)
    eval_data = (load_split(cfg.data.eval, cfg, tokenizer, run_dir, "eval", info.is_main, train_data.channels)
                 if cfg.data.eval else None)
    plan, per_epoch = step_plan(len(train_data.samples), global_batch, info.world_size * accum,
                                cfg.train.num_train_epochs, cfg.train.max_steps, cfg.train.seed,
                                train_data.lengths if cfg.data.group_by_length else None)
    total_steps = len(plan)
    if info.is_main:
        dump_config(cfg, run_dir / "config.yaml")
        summary = {"train": train_data.summary, **({"eval": eval_data.summary} if eval_data else {})}
        (run_dir / "data_summary.json").write_text(json.dumps(summary), encoding="utf-8")
        print(f"global batch {global_batch} = micro {micro_size} x accumulation {accum} x world {info.world_size}; "
              f"{total_steps} optimizer steps ({per_epoch} per epoch); loss reduction '{cfg.train.loss}'")
        if len(train_data.samples) < 10_000 and "num_train_epochs" not in cfg.train.model_fields_set \
                and cfg.train.max_steps <= 0:
            print("hint: under 10k training samples - 3 epochs (train.num_train_epochs=3) usually works better")

    from sftlab.train.estimate import check_run

    run_check = check_run(cfg, device, info.world_size, train_data.samples, len(tokenizer), info.is_main)
    model = load_model(cfg.model, tokenizer, device, cfg.train.gradient_checkpointing,
                       adapter_dir=str(resume_dir) if resume_dir and cfg.model.lora else None,
                       weights_dir=str(resume_dir) if resume_dir and not cfg.model.lora else None)
    engine = parallel.wrap_model(SupervisedTokenNLL(model, cfg.train.loss_chunk_size), cfg.train.parallel, info,
                                 DTYPES[cfg.model.dtype])
    engine.train()
    optimizer = build_optimizer(engine, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    start_step, extra_state = 0, {}
    if resume_dir:
        start_step, extra_state = _restore(resume_dir, optimizer, scheduler, info, engine)
        if info.is_main:
            print(f"resumed from {resume_dir} at step {start_step}")

    from sftlab.train.health import EarlyStopping, HealthMonitor
    from sftlab.train.metrics import LiveView, MetricsWriter

    writer = MetricsWriter(run_dir, tensorboard="tensorboard" in cfg.train.report_to,
                           resume_from_step=start_step if resume_dir else None) if info.is_main else None
    view = LiveView(total_steps) if info.is_main else None
    monitor = HealthMonitor(cfg.train.health, vocab_size=len(tokenizer))
    stopper = (EarlyStopping(cfg.train.early_stopping.metric, cfg.train.early_stopping.patience,
                             cfg.train.early_stopping.min_delta, cfg.train.early_stopping.mode)
               if cfg.train.early_stopping else None)
    if stopper is not None and extra_state.get("early_stopping"):
        stopper.load_state_dict(extra_state["early_stopping"])

    eot_ids = torch.tensor(eot_token_ids(tokenizer), device=device)
    pad_id = tokenizer.pad_token_id
    params = [p for p in engine.parameters() if p.requires_grad]
    ch_den_all = train_data.channel_matrix.T  # [C, n]
    denoms_t = torch.as_tensor(train_data.denoms, dtype=torch.float64)
    t_last, tok_since = time.perf_counter(), 0
    step = start_step
    stop_reason = None

    def checkpoint(name: str, at_step: int) -> Path:
        path = run_dir / "checkpoints" / name
        rng = parallel.all_gather_object(_rng_state(), info)  # per rank: dropout masks differ between ranks
        state = {"step": at_step, "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng,
                 "early_stopping": stopper.state_dict() if stopper else None, "world_size": info.world_size}
        save_model_dir(path, engine, tokenizer, info, extra=state, optimizer=optimizer)
        return path

    try:
        while step < total_steps:
            idx = plan[step]
            denom = float(train_data.denoms[idx].sum())
            micro = split_global_batch(idx, info.world_size, accum, info.rank,
                                       train_data.lengths if cfg.data.batching == "pack" else None,
                                       cfg.data.max_length)
            try:
                stats = run_micro_batches(engine, train_data, micro, denom, cfg, info, pad_id, eot_ids, train=True)
            except torch.OutOfMemoryError:
                raise TrainingError(
                    f"out of memory at step {step + 1} (micro-batch {micro_size} x max_length "
                    f"{cfg.data.max_length}): lower train.per_device_train_batch_size (raise "
                    "gradient_accumulation_steps to keep the global batch), set train.gradient_checkpointing=true, "
                    "or lower data.max_length") from None
            counts = torch.tensor([stats.tokens, stats.padded, stats.supervised], dtype=torch.float64, device=device)
            parallel.all_reduce_sum(stats.sums, info)
            parallel.all_reduce_sum(counts, info)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm or float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            loss = float(stats.sums[0]) / denom
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                path = checkpoint(f"emergency-step-{step}", step)
                ids = [train_data.samples[i]["id"] for i in idx]
                raise TrainingError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step {step + 1} "
                    f"(samples {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}); last good state saved to "
                    f"{path}. Check these samples, lower the learning rate, or use fp32/bf16 instead of fp16")
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tok_since += int(counts[0])

            if info.is_main and (step % cfg.train.logging_steps == 0 or step == total_steps):
                now = time.perf_counter()
                ch_den = ch_den_all[:, torch.as_tensor(idx)] @ denoms_t[torch.as_tensor(idx)]
                rec: dict[str, Any] = {
                    "step": step, "epoch": round(step / per_epoch, 4), "loss": loss, "grad_norm": grad_norm,
                    "lr": lr, "supervised_tokens": int(counts[2]), "tokens": int(counts[0]),
                    "tokens_per_s": tok_since / max(now - t_last, 1e-9),
                    "padding_ratio": 1.0 - float(counts[0]) / max(float(counts[1]), 1.0)}
                if run_check is not None:
                    rec.update(run_check.metrics(rec["tokens_per_s"]))
                for j, c in enumerate(train_data.channels):
                    if ch_den[j] > 0:
                        rec[f"loss/{c}"] = float(stats.sums[1 + j]) / float(ch_den[j])
                n_eot = float(stats.sums[-1])
                if n_eot:
                    rec["loss/@eot"] = float(stats.sums[-2]) / n_eot
                t_last, tok_since = now, 0
                writer.log(rec)
                view.update(rec)
                _raise_alarms(monitor, rec, writer)

            if eval_data is not None and cfg.train.eval_steps and (step % cfg.train.eval_steps == 0
                                                                    or step == total_steps):
                ev = evaluate(engine, eval_data, cfg, info, pad_id, eot_ids, micro_size)
                ev["step"] = step
                if info.is_main:
                    writer.log(ev)
                    view.update(ev)
                    _raise_alarms(monitor, ev, writer)
                if stopper is not None:
                    value = ev.get(stopper.metric)
                    if value is None:
                        raise UserError(f"train.early_stopping.metric {stopper.metric!r} is not an eval metric "
                                        f"(have: {', '.join(sorted(k for k in ev if k != 'step'))})")
                    improved, stop = stopper.update(step, value)
                    if improved:
                        save_model_dir(run_dir / "best", engine, tokenizer, info)
                    if stop:
                        stop_reason = f"early stopping: {stopper.metric} did not improve for {stopper.patience} evals"
                        if info.is_main:
                            print(f"{stop_reason}; best step {stopper.best_step} kept in {run_dir / 'best'}")
                        break
            if cfg.train.save_steps and step % cfg.train.save_steps == 0 and step < total_steps:
                checkpoint(f"step-{step}", step)
                if info.is_main:
                    prune_checkpoints(run_dir, cfg.train.save_total_limit)
    except KeyboardInterrupt:
        path = checkpoint(f"step-{step}", step)
        if info.is_main:
            view.close()
            print(f"\ninterrupted at step {step}; checkpoint saved to {path}; continue with train.resume=auto")
        raise SystemExit(130) from None
    finally:
        if info.is_main:
            view.close()
            writer.close()

    final = run_dir / "final"
    save_model_dir(final, engine, tokenizer, info)
    if info.is_main:
        print(f"done: {step} steps{' (' + stop_reason + ')' if stop_reason else ''}; model in {final}; "
              f"metrics in {run_dir / 'metrics.jsonl'}")
        if run_check is not None:
            print(run_check.summary())
    parallel.destroy(info)
    return final


def _raise_alarms(monitor: Any, rec: dict[str, Any], writer: Any) -> None:
    alarms = monitor.update(rec)
    for a in alarms:
        print(f"warning [{a.name}] step {a.step}: {a.message}")
        writer.log({"step": a.step, "alarm": a.name, "message": a.message})
    if monitor.should_abort(alarms):
        names = ", ".join(a.name for a in alarms)
        raise TrainingError(f"aborted by health alarm ({names}) at step {rec.get('step')}: {alarms[0].message}")


def _restore(ckpt: Path, optimizer: Any, scheduler: Any, info: parallel.DistInfo, engine: Any) -> tuple[int, dict]:
    state = torch.load(ckpt / STATE_FILE, weights_only=False)
    if state.get("world_size", 1) != info.world_size:
        raise UserError(f"train.resume: {ckpt} was written with world size {state.get('world_size')}, "
                        f"this run has {info.world_size}; resume with the same number of processes")
    sharded = parallel.is_sharded(engine)
    opt_file = ckpt / (f"optimizer.rank{info.rank}.pt" if sharded else "optimizer.pt")
    optimizer.load_state_dict(torch.load(opt_file, weights_only=False))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state.get("rng_per_rank", [state["rng"]] * info.world_size)[info.rank])
    return int(state["step"]), state


def resolve_batching(cfg: RunConfig, device: torch.device) -> str:
    """`auto` -> padfree where it is measured faster with exact isolation, else pad (docs/DESIGN.md §3)."""
    if cfg.data.batching != "auto":
        return cfg.data.batching
    attn = cfg.model.attn_implementation
    if device.type == "cpu" and attn in ("sdpa", "eager"):
        return "padfree"
    if device.type == "cuda" and (attn.startswith("flash_attention") or attn == "flex_attention"):
        return "padfree"
    return "pad"


def check_isolation(cfg: RunConfig, device: torch.device) -> None:
    """padfree/pack need an attention backend that keeps samples apart (see batching)."""
    if cfg.data.batching == "pad":
        return
    try:
        from sftlab.train.attention import check_attention_isolation
    except ImportError:
        raise UserError(f"data.batching={cfg.data.batching!r} is not available in this build") from None
    check_attention_isolation(cfg.model.attn_implementation, cfg.data.batching, device)


__all__ = ["train", "evaluate", "step_plan", "split_global_batch", "TrainingError"]
