"""Run plans: a config with a `stages:` list trains the stages in order, each from the previous stage's final model.

Why: the task-mixing strategies (sequential, mixed-sequential, DMT; see `sftlab data mix --strategy`) are
several training runs chained on their weights. Writing them as one config keeps the chain explicit and
reproducible instead of a shell script that copies paths by hand.

    model: {name_or_path: path/to/base}
    data: {max_length: 1024}                 # shared data keys; a data.train here is the default of every stage
    train: {output_dir: runs/plan, learning_rate: 2e-5}
    stages:
      - {name: specialised, data: {train: [math.jsonl, code.jsonl]}}
      - {name: general, data: {train: [general.jsonl]}, train: {learning_rate: 1e-5}}

Rules (kept deliberately simple):
- stage i (from 1) runs in `<train.output_dir>/stage-<i>-<name>/`; a stage's `data` / `train` keys replace the
  shared ones key by key; `train.output_dir` is set by the plan (a stage may not set it);
- stage 1 starts from `model.name_or_path`, stage i > 1 from stage i-1's `final/`;
- LoRA: stage i-1's adapter is merged into its base weights (`sftlab.train.export.export_model(merge=True)`) in
  `<stage i dir>/init/`, and stage i trains a fresh adapter on that merged model (so every stage's final/ is an
  adapter over the previous stage's merged weights; `sftlab export --merge` of the last one gives the result);
- dotted CLI overrides apply to every stage and win over stage values, except that `train.output_dir` is the
  plan's root and `model.name_or_path` the first stage's model;
- with `train.resume=auto` a stage whose final/ exists is skipped, so an interrupted plan continues where it
  stopped (the interrupted stage resumes from its own last checkpoint);
- every stage is validated before the first one trains (an unknown key fails at once, naming the stage).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from sftlab.config import (
    ConfigError,
    RunConfig,
    Strict,
    _format_validation_error,
    build_config,
    parse_overrides,
    set_dotted,
)

if TYPE_CHECKING:
    from sftlab.train.setup import GenerationEvalFactory


class StageSpec(Strict):
    """One entry of `stages:`; data/train hold keys of DataConfig/TrainConfig (checked when merged)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}


def stage_dir(root: str | Path, index: int, name: str) -> Path:
    """`<root>/stage-<index>-<name>` (index from 1)."""
    return Path(root) / f"stage-{index}-{name}"


def plan_configs(raw: dict[str, Any], overrides: list[str] = (), source: str = "config") -> list[tuple[str, RunConfig]]:
    """Validate the plan: one (name, RunConfig) per stage, model paths already chained to the previous stage."""
    raw = copy.deepcopy(dict(raw or {}))
    stages = raw.pop("stages", None)
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{source}: key 'stages': expected a non-empty list of stages")
    pairs = parse_overrides(list(overrides))
    for key, _ in pairs:
        if key == "stages" or key.startswith("stages."):
            raise ConfigError(f"override {key!r}: stages cannot be overridden on the command line; edit {source}")
    for key, value in pairs:
        set_dotted(raw, key, value)
    for part in ("model", "data", "train"):
        if not isinstance(raw.get(part, {}), dict):
            raise ConfigError(f"{source}: key '{part}': expected a mapping")
    root = (raw.get("train") or {}).get("output_dir")
    if not root:
        raise ConfigError(f"{source}: missing required key 'train.output_dir' (the plan's root directory)")
    lora = bool((raw.get("model") or {}).get("lora"))
    if lora and len(stages) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{source}: a multi-stage LoRA plan runs in one process (the adapter merge between "
                          "stages is not distributed); drop --nproc or use full fine-tuning")

    out: list[tuple[str, RunConfig]] = []
    names: set[str] = set()
    prev_final: Path | None = None
    for i, item in enumerate(stages, start=1):
        where = f"{source}: stages.{i - 1}"
        try:
            spec = StageSpec.model_validate(item)
        except ValidationError as e:
            raise ConfigError(_format_validation_error(e, where)) from None
        if spec.name in names:
            raise ConfigError(f"{where}: duplicate stage name {spec.name!r}")
        names.add(spec.name)
        if "output_dir" in spec.train:
            raise ConfigError(f"{where}: key 'train.output_dir' is set by the plan ({root}/stage-<i>-<name>)")
        merged = copy.deepcopy(raw)
        merged.setdefault("data", {}).update(copy.deepcopy(spec.data))
        merged.setdefault("train", {}).update(copy.deepcopy(spec.train))
        for key, value in pairs:  # the command line wins over stage values
            set_dotted(merged, key, value)
        here = stage_dir(root, i, spec.name)
        merged["train"]["output_dir"] = str(here)
        if prev_final is not None:
            merged.setdefault("model", {})["name_or_path"] = str(here / "init" if lora else prev_final)
        out.append((spec.name, build_config(merged, [], source=where)))
        prev_final = here / "final"
    return out


def run_plan(raw: dict[str, Any], overrides: list[str] = (), source: str = "config",
             generation_eval: GenerationEvalFactory | None = None) -> list[Path]:
    """Train the stages in order; returns each stage's final/ directory. `generation_eval`: passed to every
    stage's `train` (train.eval_generate)."""
    # lazy: torch and transformers; plan_configs validates a plan (before `--nproc` spawns workers) without them
    from sftlab.train.export import export_model, is_adapter_dir
    from sftlab.train.loop import train

    configs = plan_configs(raw, overrides, source)
    main = int(os.environ.get("RANK", "0")) == 0
    finals: list[Path] = []
    for i, (name, cfg) in enumerate(configs, start=1):
        here = Path(cfg.train.output_dir)
        if cfg.train.resume == "auto" and (here / "final").is_dir():
            if main:
                print(f"plan: stage {i}/{len(configs)} {name!r} already done ({here / 'final'}); skipped")
            finals.append(here / "final")
            continue
        if finals and cfg.model.lora is not None and is_adapter_dir(finals[-1]):
            export_model(finals[-1], cfg.model.name_or_path, merge=True)
        if main:
            print(f"plan: stage {i}/{len(configs)} {name!r} from {cfg.model.name_or_path} -> {here}")
        finals.append(train(cfg, generation_eval))
    return finals
