"""Start-up checks: every setting either takes effect or fails (or warns) in one line, before hours are spent.

`check_before_loading` runs before any data or model is read (packages that a setting needs);
`check_run` once the train set and the step plan are known (warns about settings that cannot take effect).
`resolved_values` are the values the run derived, written into RUN/config.yaml instead of nulls.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from sftlab.config import RunConfig
from sftlab.errors import UserError
from sftlab.train.model import check_attn_implementation

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_before_loading(cfg: RunConfig) -> None:
    """Packages the settings need: the attention backend, the experiment trackers in report_to."""
    check_attn_implementation(cfg.model.attn_implementation)
    for name in cfg.train.report_to:
        pkg = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(pkg) is None:
            raise UserError(f"train.report_to: {name} is not installed here: pip install {pkg} "
                            f"(or remove {name} from train.report_to)")


def check_run(cfg: RunConfig, n_train: int, global_batch: int, total_steps: int, is_main: bool) -> None:
    """One warning line for each setting that cannot take effect as written."""
    warnings = []
    if n_train < global_batch:  # step_plan then makes one short batch per epoch (or refuses when too short)
        warnings.append(f"the train set has {n_train} samples, fewer than one global batch ({global_batch}): every "
                        f"step uses all {n_train}; lower train.per_device_train_batch_size / "
                        "gradient_accumulation_steps / global_batch_size to set it")
    if cfg.data.eval and not cfg.train.eval_steps:
        warnings.append("data.eval is set but train.eval_steps=0: no evaluation will run; set train.eval_steps=N")
    if cfg.train.warmup_steps > total_steps:
        warnings.append(f"train.warmup_steps={cfg.train.warmup_steps} is longer than the run ({total_steps} steps): "
                        "the learning rate never reaches train.learning_rate")
    if cfg.train.save_steps and cfg.train.save_steps >= total_steps:
        warnings.append(f"train.save_steps={cfg.train.save_steps} >= the run's {total_steps} steps: no intermediate "
                        "checkpoint will be written (final/ still is)")
    if is_main:
        for w in warnings:
            print(f"warning: {w}")


def check_early_stopping_metric(cfg: RunConfig, eval_channels: list[str]) -> None:
    """A mistyped train.early_stopping.metric failed only at the first eval, possibly hours in: check the loss
    metrics against the eval set's channels now (eval_gen/... names depend on generation: checked at the eval)."""
    es = cfg.train.early_stopping
    if es is None:
        return
    if es.metric.startswith("eval_gen/"):
        if cfg.train.eval_generate is None:
            raise UserError(f"train.early_stopping.metric {es.metric!r} needs train.eval_generate")
        return
    known = ["eval_loss"] + [f"eval_loss/{c}" for c in eval_channels]
    if es.metric not in known:
        raise UserError(f"train.early_stopping.metric {es.metric!r} is not an eval metric of this run "
                        f"(have: {', '.join(known)}, or eval_gen/... with train.eval_generate)")


def weight_decay(cfg: RunConfig) -> float:
    """train.weight_decay, or its default: 0.01 for full fine-tuning, 0 for LoRA."""
    if cfg.train.weight_decay is not None:
        return cfg.train.weight_decay
    return 0.0 if cfg.model.lora is not None else 0.01


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    """train.warmup_steps, else warmup_ratio of the run."""
    return cfg.train.warmup_steps or math.ceil(cfg.train.warmup_ratio * total_steps)


def resolved_values(cfg: RunConfig, micro: int, accum: int, global_batch: int, total_steps: int) -> dict[str, Any]:
    """The derived values as dotted keys, for RUN/config.yaml (what the run used, not null)."""
    return {"train.weight_decay": weight_decay(cfg), "train.per_device_train_batch_size": micro,
            "train.gradient_accumulation_steps": accum, "train.global_batch_size": global_batch,
            "train.warmup_steps": warmup_steps(cfg, total_steps)}


def tracker_options(cfg: RunConfig) -> dict[str, Any]:
    """MetricsWriter's wandb / mlflow options: the user's options plus the run config (None: not reported to)."""
    from sftlab.train.rundir import flatten

    tree = cfg.model_dump(mode="json")
    params: dict[str, Any] = {}
    flatten(tree, "", params)
    params = {k: str(v)[:500] for k, v in params.items()}  # MLflow caps a param value at 500 characters
    return {"wandb": {"config": tree, **cfg.train.wandb} if "wandb" in cfg.train.report_to else None,
            "mlflow": {"params": params, **cfg.train.mlflow} if "mlflow" in cfg.train.report_to else None}
