"""The optimizer and the learning-rate schedule, and the defaults they derive (written into RUN/config.yaml)."""

from __future__ import annotations

import math
from typing import Any

import torch

from sftlab.config import RunConfig


def weight_decay(cfg: RunConfig) -> float:
    """train.weight_decay, or its default: 0.01 for full fine-tuning, 0 for LoRA."""
    if cfg.train.weight_decay is not None:
        return cfg.train.weight_decay
    return 0.0 if cfg.model.lora is not None else 0.01


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    """train.warmup_steps, else warmup_ratio of the run."""
    return cfg.train.warmup_steps or math.ceil(cfg.train.warmup_ratio * total_steps)


def build_optimizer(model: Any, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases (1-D parameters). Under FSDP2 with train.fsdp.offload:
    optimizer, its states and step on the CPU (`OffloadedAdamW`)."""
    wd = weight_decay(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    sharded = any(type(p).__name__ == "DTensor" for p in params)
    where = params[0].device.type if params else device.type  # FSDP2's offload "params" keeps them on the CPU
    # fused: one kernel per step and no temporaries the size of the model (foreach keeps one list of them);
    # FSDP2's sharded DTensor parameters on CPU keep foreach
    fused = where == "cuda" or (where == "cpu" and not sharded)
    kind = {"fused": True} if fused else {"foreach": True}
    settings = {"lr": cfg.train.learning_rate, "betas": (cfg.train.adam_beta1, cfg.train.adam_beta2),
                "eps": cfg.train.adam_epsilon}
    if sharded and cfg.train.fsdp.offload == "optimizer":
        return OffloadedAdamW(groups, **settings, fused=True)
    return torch.optim.AdamW(groups, **settings, **kind)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


class OffloadedAdamW(torch.optim.AdamW):
    """AdamW whose moments and step live on the CPU while the parameters and gradients stay on the device
    (train.fsdp.offload: optimizer; FSDP2's own offload, "params", moves the parameters and gradients too).

    It steps fp32 CPU copies of this rank's parameter shards: each step copies the gradient shards over, steps,
    and copies the updated values back into the shards. Its state dict is AdamW's, of the CPU copies (one file
    per rank, as for any sharded optimizer); the copies themselves are made from the parameters when it is built
    (after a resume, from the checkpoint's weights)."""

    def __init__(self, groups: list[dict[str, Any]], **settings: Any) -> None:
        self.device_params = [p for g in groups for p in g["params"]]
        host = [{**g, "params": [_local(p).detach().to("cpu", torch.float32, copy=True) for p in g["params"]]}
                for g in groups]
        super().__init__(host, **settings)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        host = [p for g in self.param_groups for p in g["params"]]
        for p, h in zip(self.device_params, host, strict=True):
            h.grad = None if p.grad is None else _local(p.grad).to("cpu", torch.float32)
        loss = super().step(closure)
        for p, h in zip(self.device_params, host, strict=True):
            _local(p).copy_(h)
            h.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.device_params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int) -> Any:
    """Warmup (ratio or steps) then constant / linear / cosine / cosine to a minimum lr.
    Warmup starts at lr/warmup, not 0: transformers' schedules give step 0 a zero learning rate (a wasted
    step), so the warmup part is read one step ahead (step s uses the factor of s + 1)."""
    from transformers import get_scheduler  # lazy: transformers takes seconds to import

    warmup = warmup_steps(cfg, total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.train.lr_scheduler_type, cfg.train.lr_scheduler_type)
    extra = {"min_lr_rate": cfg.train.min_lr_ratio} if name == "cosine_with_min_lr" else None
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                              scheduler_specific_kwargs=extra)
    if warmup > 0:
        factors = scheduler.lr_lambdas
        scheduler.lr_lambdas = [lambda s, f=f: f(s + 1) if s < warmup else f(s) for f in factors]
        set_scheduled_lr(optimizer, scheduler)
    return scheduler


def set_scheduled_lr(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Give the optimizer the lr the schedule's factors say for its current step (after they were replaced, or
    after a resume restored a schedule written for another run length)."""
    for group, base, f in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
