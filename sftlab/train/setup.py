"""Start-up of a training run: every choice resolved once, into one frozen `Run` that the loop only reads.

    config -> device and ranks -> run dir claimed, preflight checks -> batch sizes, seeds, resume point ->
    tokenizer -> batching, attention kernel, compute dtype for this device -> data splits (rendered stores) ->
    task balancing and the step plan -> resume check -> the first writes into the run dir -> one summary

The caller's config object is never changed: `Run.config` is a copy with the start-up choices written in
(what RUN/config.yaml records and the resume fingerprint hashes).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import RunConfig, resolve_batch_sizes
from sftlab.data.render import load_tokenizer
from sftlab.train import checkpoint, parallel, preflight, rundir
from sftlab.train.attention import check_attention_isolation, resolve_attention, resolve_batching
from sftlab.train.balance import format_plan_table
from sftlab.train.dataset import DataSet, load_split, record_in_run_dir
from sftlab.train.model import check_model_path, pick_device, resolve_precision
from sftlab.train.optim import warmup_steps, weight_decay
from sftlab.train.steps import StepPlan, plan_steps, with_task_weights

# train.eval_generate: scores the model's replies on a fixed eval subset, (model, tokenizer) -> metrics
GenerationEval = Callable[[Any, Any], dict[str, float]]
# what a caller of train() passes: the GenerationEval of a config, None when there is nothing to generate on
# (sftlab.eval.during_training.generation_eval)
GenerationEvalFactory = Callable[[RunConfig], GenerationEval | None]


@dataclass(frozen=True)
class Run:
    """Every resolved choice of one training run: read by the loop, logged once at start."""

    config: RunConfig  # the caller's config with data.batching, model.attn_implementation, model.dtype resolved
    dist: parallel.DistInfo  # rank, world size, device
    run_dir: Path
    micro_batch: int
    accumulation: int
    global_batch: int
    precision: str  # the compute dtype and why, in words
    resume_dir: Path | None
    tokenizer: Any
    train_data: DataSet
    eval_data: DataSet | None
    plan: StepPlan
    fingerprint: dict[str, Any]  # what decides the trajectory (rundir.fingerprint), checked on resume
    generation_eval: GenerationEval | None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def total_steps(self) -> int:
        return self.plan.total

    @property
    def resolved(self) -> dict[str, Any]:
        """The values the run derived where the config leaves them unset, as dotted keys: written into
        RUN/config.yaml instead of nulls, and into every checkpoint (rundir.check_resume compares them)."""
        return {"train.weight_decay": weight_decay(self.config), "train.per_device_train_batch_size": self.micro_batch,
                "train.gradient_accumulation_steps": self.accumulation, "train.global_batch_size": self.global_batch,
                "train.warmup_steps": warmup_steps(self.config, self.total_steps)}

    def summary(self) -> str:
        """The start-up summary: kernel and precision, the batch and step plan, the plan per task."""
        cfg = self.config
        lines = [f"attention kernel: {cfg.model.attn_implementation} ({cfg.data.batching} batching); "
                 f"precision: {self.precision}",
                 f"global batch {self.global_batch} = micro {self.micro_batch} x accumulation {self.accumulation} x "
                 f"world {self.dist.world_size}; {self.total_steps} optimizer steps ({self.plan.per_epoch} per "
                 f"epoch); loss reduction '{cfg.train.loss}'",
                 format_plan_table(self.plan.table)]
        if len(self.train_data.samples) < 10_000 and "num_train_epochs" not in cfg.train.model_fields_set \
                and cfg.train.max_steps <= 0:
            lines.append("hint: under 10k training samples - 3 epochs (train.num_train_epochs=3) usually works better")
        return "\n".join(lines)


def setup(cfg: RunConfig, generation_eval: GenerationEvalFactory | None = None) -> Run:
    """Resolve the run `cfg` describes on this process (every rank calls it); a setting that cannot work fails
    here, before the model is loaded. `generation_eval`: see `train`."""
    dist = parallel.init_distributed(pick_device(cfg.train.device))
    run_dir = Path(cfg.train.output_dir)
    rundir.claim_run_dir(run_dir, cfg, dist.is_main)
    parallel.barrier(dist)  # no rank may write into the dir before every rank has checked it
    preflight.check_before_loading(cfg, generation_eval is not None)
    preflight.check_output_dir(run_dir, dist.rank)
    micro, accum, global_batch = resolve_batch_sizes(cfg.train, dist.world_size)
    _seed(cfg.train.seed)
    resume_dir = _resume_point(run_dir, cfg.train.resume, dist)
    if not resume_dir:
        check_model_path(cfg.model.name_or_path)
    tokenizer = load_tokenizer(str(checkpoint.checkpoint_files(resume_dir)) if resume_dir else cfg.model.name_or_path,
                               cfg.model.chat_template if not resume_dir else None, cfg.model.special_tokens,
                               cfg.model.eot_token)
    config, precision = _resolve_for_device(cfg, dist.device)

    train_data = load_split(config.data.train, config, tokenizer, "train", dist.is_main)
    eval_data = (load_split(config.data.eval, config, tokenizer, "eval", dist.is_main, train_data.channels)
                 if config.data.eval else None)
    preflight.check_early_stopping_metric(config, eval_data.channels if eval_data else [])
    score = None  # train.eval_generate: the eval subset answered by generation at every eval (rank 0), fixed now
    if generation_eval is not None and config.train.eval_generate is not None:
        score = generation_eval(config)
    train_data = with_task_weights(train_data, config.train.task_weights)
    plan = plan_steps(train_data, config.train, global_batch, dist.world_size * accum, config.data.group_by_length)
    run = Run(config=config, dist=dist, run_dir=run_dir, micro_batch=micro, accumulation=accum,
              global_batch=global_batch, precision=precision, resume_dir=resume_dir, tokenizer=tokenizer,
              train_data=train_data, eval_data=eval_data, plan=plan,
              fingerprint=rundir.fingerprint(config, global_batch), generation_eval=score)
    if resume_dir:
        rundir.check_resume(resume_dir, checkpoint.read_state(resume_dir), run.fingerprint, run.total_steps,
                            dist.world_size, run.resolved)
    preflight.check_run(config, len(train_data.samples), global_batch, run.total_steps, dist.is_main)
    _go_ahead(run, cfg.train.resume)
    if dist.is_main:
        print(run.summary())
    return run


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume_point(run_dir: Path, resume: str | None, dist: parallel.DistInfo) -> Path | None:
    """The checkpoint train.resume names (`auto`: the newest complete one, counting what `_go_ahead` will restore
    from a kill's leftovers)."""
    resume_dir = checkpoint.find_resume_dir(run_dir, resume)
    if dist.is_main and resume == "auto" and resume_dir is None:  # a fresh run: say so, never silently
        print(f"train.resume=auto: no complete checkpoint in {run_dir / 'checkpoints'}; training starts at step 0")
    return resume_dir


def _go_ahead(run: Run, resume: str | None) -> None:
    """Every start-up check has passed: the first writes into the run dir (rank 0). What a kill left in
    checkpoints/ is tidied, the splits' rejects and stores are recorded. Nothing before writes there, so a refused
    start (a resume of another run, past its end, on another world size) leaves the dir byte for byte as it was."""
    if run.is_main:
        if resume == "auto":
            checkpoint.tidy_checkpoints(run.run_dir)
        record_in_run_dir(run.run_dir, {"train": run.train_data, "eval": run.eval_data})
    parallel.barrier(run.dist)


def _resolve_for_device(cfg: RunConfig, device: torch.device) -> tuple[RunConfig, str]:
    """(cfg with batching, attention kernel and compute dtype resolved for `device`, the precision in words).
    padfree / pack need a kernel that keeps the samples of a row apart: checked here (attention.py)."""
    batching = resolve_batching(cfg.data.batching, cfg.model.attn_implementation, device)
    attn = resolve_attention(cfg.model.attn_implementation, batching, device)
    check_attention_isolation(attn, batching, device)
    dtype, precision = resolve_precision(cfg.model.dtype, device)
    model = cfg.model.model_copy(update={"attn_implementation": attn, "dtype": dtype})
    data = cfg.data.model_copy(update={"batching": batching})
    return cfg.model_copy(update={"model": model, "data": data}), precision
