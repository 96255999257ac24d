"""Start-up checks: every setting either takes effect or fails (or warns) in one line, before hours are spent.

They run in this order (sftlab/train/setup.py), each as soon as what it checks is known:
`check_before_loading` before any data or model is read (packages a setting needs, settings that need each
other, the output dir is writable); `check_early_stopping_metric` once the eval split's channels are known;
`check_run` once the train set and the step plan are known (warns about settings that cannot take effect).
Checks that belong to one component stay with it, next to what they protect: the model path
(model.check_model_path), the attention kernel's isolation (attention.check_attention_isolation), the compute
dtype on this device (model.resolve_precision), a resumed checkpoint (rundir.check_resume).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sftlab.config import ConfigError, RunConfig
from sftlab.errors import UserError
from sftlab.train.model import check_attn_implementation

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_before_loading(cfg: RunConfig, has_generation_eval: bool) -> None:
    """Packages the settings need (the attention backend, the experiment trackers in report_to), and
    train.eval_generate's needs. `has_generation_eval`: the caller of train() passed the function that scores
    generations (training does not import sftlab.eval)."""
    check_attn_implementation(cfg.model.attn_implementation)
    for name in cfg.train.report_to:
        pkg = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(pkg) is None:
            raise UserError(f"train.report_to: {name} is not installed here: pip install {pkg} "
                            f"(or remove {name} from train.report_to)")
    if cfg.train.eval_generate is not None:
        if not cfg.data.eval or not cfg.train.eval_steps:
            raise ConfigError("train.eval_generate needs data.eval and train.eval_steps > 0 (it runs at every eval)")
        if cfg.train.parallel == "fsdp":
            raise ConfigError("train.eval_generate is not supported with train.parallel=fsdp (rank 0 generates alone)")
        if not has_generation_eval:
            raise UserError("train.eval_generate is set, but this caller of train() passed no generation_eval "
                            "(sftlab train passes sftlab.eval.during_training.generation_eval)")


def check_output_dir(run_dir: Path, rank: int) -> None:
    """train.output_dir can be created and written (by every rank), before anything is loaded."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{rank}"  # one per rank: ranks must not delete each other's probe
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"train.output_dir: cannot write to {run_dir}: {e.strerror}") from None


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
