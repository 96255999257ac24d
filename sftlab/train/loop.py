"""The training loop: plain PyTorch, readable top to bottom.

    config -> rendered store (sftlab/data/store.py, cached) -> step plan (global batches) ->
    for each optimizer step: denominators of the global batch -> micro-batches (forward, backward) ->
    clip, step, log, eval, save.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import RunConfig, dump_config, resolve_batch_sizes
from sftlab.data.records import task_channels, write_jsonl
from sftlab.data.render import eot_token_ids, load_tokenizer
from sftlab.errors import UserError
from sftlab.train import parallel, preflight, rundir
from sftlab.train.balance import (
    TaskEpochs,
    epoch_order,
    format_plan_table,
    per_sample_values,
    plan_table,
    share_metrics,
    task_epochs_plan,
    weighted_sums,
)
from sftlab.train.batching import collate, move_batch, packed_micro_batch, plan_packed_micro_batches
from sftlab.train.fused_ops import install_fused_ops, use_fused_ops
from sftlab.train.last_layer import install_last_layer_skip
from sftlab.train.loss import SupervisedTokenNLL, per_sample_sums, token_loss_scale
from sftlab.train.model import (
    DTYPES,
    autocast_context,
    check_model_path,
    frozen_base_dtype,
    load_model,
    pick_device,
    resolve_precision,
)

STATE_FILE = rundir.STATE_FILE


class TrainingError(UserError):
    """Training cannot go on (NaN loss, out of memory): the message says what to change."""


# ----------------------------------------------------------------------------------------------- data


@dataclass
class DataSet:
    """The samples of a split plus per-sample arrays the loop plans with (step plan, length grouping, packing,
    channels). `samples[i]` gives sample i as a dict (input_ids, labels, loss_coef, num_tokens, id, task_type);
    from a store (sftlab/data/store.py) it is sliced from memory-mapped columns when a micro-batch needs it."""

    samples: Sequence[dict[str, Any]]
    channels: list[str]
    channel_matrix: torch.Tensor  # [n_samples, n_channels] 1.0 where the sample counts in the channel
    denoms: np.ndarray  # per-sample loss denominator
    lengths: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    task_codes: np.ndarray | None = None  # per-sample index into task_names (int16)
    task_names: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None  # per-sample task weight (train.task_weights); None: all 1
    supervised: np.ndarray | None = None  # per-sample predicted (supervised, shifted) tokens


def load_split(sources: list, cfg: RunConfig, tokenizer: Any, run_dir: Path | None, name: str,
               is_main: bool, channels: list[str] | None = None) -> DataSet:
    """Open the rendered store of every source (local rank 0 renders what the cache lacks, the node's other
    ranks wait for it and map the same files); rejects go to RUN/rejects-<name>.jsonl, the stores used to
    RUN/data_cache.json. `channels`: the training split's channels, for an eval split (its own follow them)."""
    from sftlab.data.render import RenderReport
    from sftlab.data.store import RenderSettings, StoreSamples, build_or_open, tokenizer_hash

    settings = RenderSettings(max_length=cfg.data.max_length, train_on=cfg.data.train_on, loss=cfg.train.loss,
                              on_error=cfg.data.on_error, extra_roles=tuple(cfg.data.extra_roles))
    builder = int(os.environ.get("LOCAL_RANK", "0")) == 0
    digest = tokenizer_hash(tokenizer)
    rng = random.Random(cfg.train.seed)
    opened, parts = [], []
    for k, src in enumerate(sources):
        got = build_or_open(src, tokenizer, settings, cfg.data.cache_dir, cfg.data.num_proc, build=builder,
                            tokenizer_digest=digest, label=f"data.{name}[{k}]")
        n = len(got.store)
        whole, frac = int(src.weight), src.weight - int(src.weight)
        rows = np.concatenate([np.tile(np.arange(n), whole),
                               np.array(rng.sample(range(n), round(frac * n)) if frac else [], dtype=np.int64)])
        if n and not len(rows):  # a small fractional weight: the source would vanish (or read as "all rejected")
            raise UserError(f"data.{name}[{k}] {src.path}: weight {src.weight} x {n} samples keeps no sample "
                            "(round(weight x samples) = 0); raise the weight or remove the source")
        opened.append(got)
        parts.append(rows.astype(np.int64))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    stores = [o.store for o in opened]
    store_of = np.repeat(np.arange(len(stores), dtype=np.int16), [len(p) for p in parts])
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # per-sample arrays of the split, and the tasks as one code space over all stores
    task_names = sorted({t for s in stores for t in s.task_names})
    remap = [np.array([task_names.index(t) for t in s.task_names], dtype=np.int16) for s in stores]
    pick = [store_of == j for j in range(len(stores))]
    lengths = np.zeros(len(rows), dtype=np.int64)
    denoms = np.zeros(len(rows), dtype=np.float64)
    task_codes = np.zeros(len(rows), dtype=np.int16)
    predicted = np.zeros(len(rows), dtype=np.int64)  # supervised targets after the shift (position 0 is never one)
    supervised = 0
    for j, s in enumerate(stores):
        r = rows[pick[j]]
        lengths[pick[j]] = s.lengths[r]
        denoms[pick[j]] = s.denoms[r]
        task_codes[pick[j]] = remap[j][s.task_codes[r]] if len(r) else []
        supervised += int(s.supervised[r].sum())
        if len(r):
            predicted[pick[j]] = s.supervised[r] - (s.turn_index[s.token_offsets[r]] >= 0)
    rejects = [r for s in stores for r in s.rejects()]
    m = [o.store.manifest for o in opened]
    report = RenderReport(rendered=len(rows), truncated=sum(x["truncated"] for x in m),
                          turns_truncated_away=sum(x["turns_truncated_away"] for x in m),
                          history_truncated=sum(x.get("history_truncated", 0) for x in m),
                          exchanges_dropped=sum(x.get("exchanges_dropped", 0) for x in m),
                          dropped=sum((Counter(x["dropped"]) for x in m), Counter()),
                          tokens=int(lengths.sum()), supervised_tokens=supervised)
    cache = [{"path": str(src.path), "store": str(o.store.path), "fingerprint": o.key, "hit": o.hit}
             for src, o in zip(sources, opened, strict=True)]
    if not builder:
        print(f"[{name}] rank {os.environ.get('RANK', '?')}: memory-mapped {', '.join(str(s.path) for s in stores)}")
    if is_main:
        print(f"[{name}] {sum(x['records'] for x in m)} records: {report.summary()}")
        for c in cache:
            print(f"[{name}] {c['path']}: {'cache hit' if c['hit'] else 'rendered'} {c['store']}")
        if run_dir is not None:
            if rejects:
                write_jsonl(rejects, run_dir / f"rejects-{name}.jsonl")
                print(f"[{name}] {len(rejects)} rejected records written to {run_dir / f'rejects-{name}.jsonl'}")
            used = run_dir / "data_cache.json"
            record = json.loads(used.read_text(encoding="utf-8")) if name != "train" and used.exists() else {}
            record[name] = cache
            used.write_text(json.dumps(record, indent=1), encoding="utf-8")
    if not any(x["records"] for x in m):
        raise UserError(f"data.{name}: no records to train on")
    if not len(rows):
        raise UserError(f"data.{name}: every record was rejected ({len(rejects)}); see the rejects file")

    own = sorted({c for t in task_names for c in task_channels(t)})
    # eval: the training channels first, then the eval set's own task types (logged, never silently dropped)
    channels = own if channels is None else channels + [c for c in own if c not in channels]
    index = {c: i for i, c in enumerate(channels)}
    per_task = torch.zeros(len(task_names), len(channels), dtype=torch.float64)
    for t, task in enumerate(task_names):
        for c in task_channels(task):
            if c in index:
                per_task[t, index[c]] = 1.0
    matrix = per_task[torch.from_numpy(task_codes.astype(np.int64))]
    counts = np.bincount(task_codes, minlength=len(task_names))
    tokens = np.bincount(task_codes, weights=lengths, minlength=len(task_names))
    summary = {"samples_per_task": {t: int(counts[i]) for i, t in enumerate(task_names) if counts[i]},
               "tokens_per_task": {t: int(tokens[i]) for i, t in enumerate(task_names) if counts[i]},
               "lengths": lengths.tolist(), "supervised_tokens": supervised,
               "truncated": report.truncated, "history_truncated": report.history_truncated,
               "exchanges_dropped": report.exchanges_dropped, "rejected": len(rejects), "cache": cache}
    return DataSet(StoreSamples(stores, store_of, rows), channels, matrix, denoms, lengths, summary,
                   task_codes, task_names, supervised=predicted)


def step_plan(n: int, global_batch: int, min_batch: int, epochs: float, max_steps: int, seed: int,
              lengths: np.ndarray | None, task_epochs: TaskEpochs | None = None) -> tuple[list[np.ndarray], int]:
    """The sample indices of every optimizer step. They depend only on the seed and the global batch size;
    how a step is split into micro-batches, accumulation steps and ranks never changes them.
    With `lengths`, each global batch is sorted by length (grouping inside the global batch).
    With `task_epochs`, an epoch repeats or subsamples each task's samples (sftlab/train/balance.py)."""
    pool = n if task_epochs is None else task_epochs.size
    per_epoch = pool // global_batch + (1 if pool % global_batch >= min_batch else 0)
    if per_epoch == 0:
        raise UserError(f"the train set has {n} samples, fewer than one global batch ({global_batch}); "
                        "lower per_device_train_batch_size or gradient_accumulation_steps")
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < total:
        order = epoch_order(n, seed, epoch, task_epochs)
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
    wd = preflight.weight_decay(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # fused: one kernel per step and no temporaries the size of the model (foreach keeps one list of them);
    # FSDP2's sharded DTensor parameters on CPU keep foreach
    fused = device.type == "cuda" or (device.type == "cpu" and cfg.train.parallel != "fsdp")
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                             eps=cfg.train.adam_epsilon, **kind)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int) -> Any:
    """Warmup (ratio or steps) then constant / linear / cosine / cosine to a minimum lr.
    Warmup starts at lr/warmup, not 0: transformers' schedules give step 0 a zero learning rate (a wasted
    step), so the warmup part is read one step ahead (step s uses the factor of s + 1)."""
    from transformers import get_scheduler

    warmup = preflight.warmup_steps(cfg, total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.train.lr_scheduler_type, cfg.train.lr_scheduler_type)
    extra = {"min_lr_rate": cfg.train.min_lr_ratio} if name == "cosine_with_min_lr" else None
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                              scheduler_specific_kwargs=extra)
    if warmup > 0:
        factors = scheduler.lr_lambdas
        scheduler.lr_lambdas = [lambda s, f=f: f(s + 1) if s < warmup else f(s) for f in factors]
        for group, base, f in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * f(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return scheduler


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
        ckpts = rundir.complete_checkpoints(run_dir)  # step-<int> with a state file; never step-N.tmp / .old
        return ckpts[-1][1] if ckpts else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise UserError(f"train.resume: {resume} is not a checkpoint directory (no {STATE_FILE})")
    return p


def prune_checkpoints(run_dir: Path, limit: int | None) -> None:
    rundir.prune(run_dir, limit)


# ------------------------------------------------------------------------------------------ steps


@dataclass
class StepStats:
    sums: torch.Tensor  # [2 + n_channels + 2]: total numerator, unused, channel numerators, eot nll sum, eot count
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
    rundir.claim_run_dir(run_dir, cfg, info.is_main)
    parallel.barrier(info)  # no rank may write into the dir before every rank has checked it
    preflight.check_before_loading(cfg)
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

    if info.is_main and cfg.train.resume == "auto":
        rundir.tidy_checkpoints(run_dir)
    parallel.barrier(info)
    resume_dir = find_resume_dir(run_dir, cfg.train.resume)
    if info.is_main and cfg.train.resume == "auto" and resume_dir is None:  # a fresh run: say so, never silently
        print(f"train.resume=auto: no complete checkpoint in {run_dir / 'checkpoints'}; training starts at step 0")
    tok_src = str(resume_dir) if resume_dir else cfg.model.name_or_path
    if not resume_dir:
        check_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(tok_src, cfg.model.chat_template if not resume_dir else None,
                               cfg.model.special_tokens, cfg.model.eot_token)
    cfg.data.batching = resolve_batching(cfg, device)
    check_isolation(cfg, device)
    cfg.model.dtype, precision_note = resolve_precision(cfg.model.dtype, device)
    if info.is_main:
        print(f"attention kernel: {cfg.model.attn_implementation} ({cfg.data.batching} batching); "
              f"precision: {precision_note}")

    train_data = load_split(cfg.data.train, cfg, tokenizer, run_dir, "train", info.is_main)
    eval_data = (load_split(cfg.data.eval, cfg, tokenizer, run_dir, "eval", info.is_main, train_data.channels)
                 if cfg.data.eval else None)
    preflight.check_early_stopping_metric(cfg, eval_data.channels if eval_data else [])
    gen_records = []  # train.eval_generate: the eval subset answered by generation at every eval (on rank 0)
    if cfg.train.eval_generate is not None:
        from sftlab.eval.during_training import eval_subset

        gen_records = eval_subset(cfg)
    task_types = [train_data.task_names[c] for c in train_data.task_codes]
    if cfg.train.task_weights:
        train_data.weights = per_sample_values(task_types, cfg.train.task_weights, "task_weights")
    supervised = train_data.supervised
    repeats = task_epochs_plan(task_types, cfg.train.task_epochs, cfg.train.seed)
    plan, per_epoch = step_plan(len(train_data.samples), global_batch, info.world_size * accum,
                                cfg.train.num_train_epochs, cfg.train.max_steps, cfg.train.seed,
                                train_data.lengths if cfg.data.group_by_length else None, repeats)
    train_data.summary["plan_per_epoch"] = plan_table(
        task_types, train_data.lengths, supervised,
        train_data.weights if train_data.weights is not None else np.ones(len(task_types)), repeats)
    total_steps = len(plan)
    fingerprint = rundir.fingerprint(cfg, global_batch)
    resolved = preflight.resolved_values(cfg, micro_size, accum, global_batch, total_steps)
    if resume_dir:
        rundir.check_resume(resume_dir, torch.load(resume_dir / STATE_FILE, weights_only=False), fingerprint,
                            total_steps, info.world_size, resolved)
    preflight.check_run(cfg, len(train_data.samples), global_batch, total_steps, info.is_main)
    if info.is_main:
        print(f"global batch {global_batch} = micro {micro_size} x accumulation {accum} x world {info.world_size}; "
              f"{total_steps} optimizer steps ({per_epoch} per epoch); loss reduction '{cfg.train.loss}'")
        print(format_plan_table(train_data.summary["plan_per_epoch"]))
        if len(train_data.samples) < 10_000 and "num_train_epochs" not in cfg.train.model_fields_set \
                and cfg.train.max_steps <= 0:
            print("hint: under 10k training samples - 3 epochs (train.num_train_epochs=3) usually works better")

    from sftlab.train.estimate import memory_check

    run_check = memory_check(cfg, device, info.world_size, train_data, len(tokenizer), info.is_main)
    model = load_model(cfg.model, tokenizer, device, cfg.train.gradient_checkpointing,
                       adapter_dir=str(resume_dir) if resume_dir and cfg.model.lora else None,
                       weights_dir=str(resume_dir) if resume_dir and not cfg.model.lora else None,
                       torch_compile=cfg.train.torch_compile, frozen_dtype=frozen_base_dtype(cfg.model, cfg.train.parallel))
    if info.is_main:  # written once the model loaded: a start that fails before leaves no run behind (rundir.py)
        dump_config(cfg, run_dir / "config.yaml", resolved)
        summary = {"train": train_data.summary, **({"eval": eval_data.summary} if eval_data else {})}
        (run_dir / "data_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if use_fused_ops(cfg.model.fused_ops, device):  # before the first forward: torch.compile traces lazily
        skipped: list[str] = []
        fused = install_fused_ops(model, skipped)
        if info.is_main:
            print(f"fused ops: {', '.join(fused) or 'none (no RMSNorm / rotary of the standard form)'}"
                  + (f"; kept transformers' code for {', '.join(skipped)}" if skipped else ""))
    skips = install_last_layer_skip(model)  # exact: same loss and gradients, less work (last_layer.py)
    if info.is_main and skips:
        print(f"only where the loss reads: {', '.join(skips)}")
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
                           resume_from_step=start_step if resume_dir else None,
                           **preflight.tracker_options(cfg)) if info.is_main else None
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
                 "early_stopping": stopper.state_dict() if stopper else None, "world_size": info.world_size,
                 "fingerprint": fingerprint, "resolved": resolved}
        save_model_dir(path, engine, tokenizer, info, extra=state, optimizer=optimizer)
        return path

    if cfg.train.eval_on_start and eval_data is not None and step == 0:  # the step-0 baseline
        ev = {**evaluate(engine, eval_data, cfg, info, pad_id, eot_ids, micro_size), "step": 0}
        if info.is_main:
            writer.log(ev)
            view.update(ev)
    restore_signals = parallel.install_stop_handlers(info)
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
            if train_data.weights is not None:
                parallel.all_reduce_sum(stats.weighted, info)
            parallel.all_reduce_sum(counts, info)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm or float("inf"))
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            loss = float(stats.weighted[0]) / denom  # the optimized objective (task weights applied)
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
                if train_data.weights is not None:
                    rec["loss_unweighted"] = float(stats.sums[0]) / denom
                ch_tokens = train_data.channel_matrix.numpy()[idx].T @ supervised[idx]
                rec.update(share_metrics(train_data.channels, stats.weighted, ch_tokens, float(supervised[idx].sum())))
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
                # health checks compare losses with ln(vocab) etc.: per-token NLL, so the unweighted loss
                _raise_alarms(monitor, {**rec, "loss": rec.get("loss_unweighted", loss)}, writer)

            if eval_data is not None and cfg.train.eval_steps and (step % cfg.train.eval_steps == 0
                                                                    or step == total_steps):
                ev = evaluate(engine, eval_data, cfg, info, pad_id, eot_ids, micro_size)
                ev["step"] = step
                if gen_records:  # rank 0 generates alone; every rank gets its metrics (early stopping runs on all)
                    from sftlab.eval.during_training import eval_generate

                    gen = {}
                    if info.is_main:
                        with autocast_context(cfg.model.dtype, device):  # the frozen base may be half (LoRA)
                            gen = eval_generate(parallel.unwrap(engine).model, tokenizer, gen_records, cfg)
                    ev.update(parallel.all_gather_object(gen, info)[0])
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
            signum = parallel.stop_requested(info) if step < total_steps else 0
            if signum:
                raise parallel.StopRequested(signum)
    except parallel.StopRequested as stop:  # SIGTERM / Ctrl-C: every rank is here after the same step
        path = checkpoint(f"step-{step}", step)
        if info.is_main:
            view.close()
            print(f"\nstopped by {signal.Signals(stop.signum).name} at step {step}; checkpoint saved to {path}; "
                  "continue with train.resume=auto")
        parallel.destroy(info)
        raise SystemExit(128 + stop.signum) from None
    finally:
        restore_signals()
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
    # the restored optimizer and scheduler hold the checkpoint's lr for the next step, from the old run length:
    # take it from this run's schedule (max_steps / num_train_epochs may have changed; same value otherwise)
    for group, base, f in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    _set_rng_state(state.get("rng_per_rank", [state["rng"]] * info.world_size)[info.rank])
    return int(state["step"]), state


def resolve_batching(cfg: RunConfig, device: torch.device) -> str:
    """`auto` -> padfree where it is measured faster with exact isolation, else pad (docs/DESIGN.md §3)."""
    if cfg.data.batching != "auto":
        return cfg.data.batching
    attn = cfg.model.attn_implementation
    if attn in ("auto", "sdpa_varlen"):  # isolating kernels on every device (attention.resolve_attention)
        return "padfree"
    if device.type == "cpu" and attn in ("sdpa", "eager"):
        return "padfree"
    if device.type == "cuda" and (attn.startswith("flash_attention") or attn == "flex_attention"):
        return "padfree"
    return "pad"


def check_isolation(cfg: RunConfig, device: torch.device) -> None:
    """Resolve model.attn_implementation (auto -> a kernel for this batching mode and device, written to
    RUN/config.yaml); padfree/pack need an attention backend that keeps samples apart (see batching)."""
    from sftlab.train.attention import check_attention_isolation, resolve_attention

    cfg.model.attn_implementation = resolve_attention(cfg.model.attn_implementation, cfg.data.batching, device)
    if cfg.data.batching != "pad":
        check_attention_isolation(cfg.model.attn_implementation, cfg.data.batching, device)


__all__ = ["train", "evaluate", "step_plan", "split_global_batch", "TrainingError"]
