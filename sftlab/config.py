"""The run configuration: pydantic models for the YAML file, with dotted CLI overrides (train.learning_rate=1e-5).

Key names follow HF TrainingArguments / TRL where the concept is the same; they are a public contract.
Unknown keys and inconsistent values are errors naming the key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sftlab.errors import UserError
from sftlab.io import write_text

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(UserError):
    """A bad configuration value, named by its dotted key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The health alarms (sftlab/train/health.py says what each one watches); abort_on names them.
ALARM_NAMES = ("nonfinite_loss", "no_supervision", "initial_loss", "loss_rising", "grad_spike",
               "channel_divergence", "padding", "memorisation", "diverged")


class HealthConfig(BaseModel):
    """Thresholds of the health alarms (defaults are deliberately conservative: false alarms train people
    to ignore alarms). Windows count logged records, not optimizer steps."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(50, ge=3)  # records in the loss-trend and grad-median windows
    min_points: int = Field(10, ge=3)  # no trend or median alarm before this many records
    slope_t: float = Field(5.0, gt=0)  # t-statistic of the fitted slope that counts as significant
    sustain: int = Field(3, ge=1)  # ...for this many consecutive records (checks repeat every record)
    min_rise: float = Field(0.05, ge=0)  # and the fitted line must rise by this fraction of its mean
    initial_loss_margin: float = Field(1.0, ge=0)  # nats above ln(vocab_size)
    initial_loss_factor: float = Field(2.0, gt=1)  # first train loss vs first eval loss
    grad_spike_k: float = Field(10.0, gt=1)
    grad_spike_every: int = Field(50, ge=1)  # at most one grad_spike alarm per this many records (near zero loss
    # the median is tiny and relative spikes come often: one line per window says it, a flood hides the rest)
    divergence_window: int = Field(50, ge=3)
    padding_ratio_max: float = Field(0.5, gt=0, le=1)
    memorisation_floor: float = Field(0.05, ge=0)
    memorisation_steps: int = Field(20, ge=1)
    abort_on: list[str] = ["nonfinite_loss"]

    @field_validator("abort_on")
    @classmethod
    def _known_alarms(cls, v: list[str]) -> list[str]:
        """At config load, naming the key (HealthMonitor found it only after the run dir was written)."""
        unknown = [n for n in v if n not in ALARM_NAMES and n != "all"]
        if unknown:
            raise ValueError(f"unknown health alarm(s): {', '.join(unknown)} (known: {', '.join(ALARM_NAMES)}, all)")
        return v


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    load_in_4bit: bool = False  # QLoRA (needs CUDA + bitsandbytes)


class ModelConfig(Strict):
    name_or_path: str
    # auto: bf16 autocast where the device computes bf16 natively (CUDA Ampere+, CPUs with AMX / AVX512-BF16), else fp32
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    # auto: sdpa for pad; padfree/pack: flash_attention_2 / flex_attention on CUDA, else sdpa_varlen (train/attention.py)
    attn_implementation: str = "auto"
    # RMSNorm and rotary as single autograd ops (train/fused_ops.py; same values, about half the memory passes):
    # auto = on CPU, where they were measured; on = every device; off = transformers' own code
    fused_ops: Literal["auto", "on", "off"] = "auto"
    lora: LoraConfig | None = None
    chat_template: str | None = None  # builtin name, file, or Jinja text; default: the tokenizer's own
    special_tokens: list[str] = []
    eot_token: str | None = None


class DataSource(Strict):
    path: str
    format: str = "auto"
    task_type: str | None = None
    weight: float = Field(1.0, gt=0)  # repeat factor: 2.0 = every sample twice, 0.5 = a seeded half


class DataConfig(Strict):
    train: list[DataSource]
    eval: list[DataSource] = []
    max_length: int = Field(2048, gt=1)
    train_on: Literal["all_assistant", "last_assistant", "all"] = "all_assistant"
    # auto: padfree where it was measured faster and isolation is exact (CPU: sdpa/eager with block masks;
    # CUDA: flash_attention_2 / flex_attention), else pad. See benchmarks/README.md.
    batching: Literal["auto", "pad", "padfree", "pack"] = "auto"
    group_by_length: bool = False
    extra_roles: list[str] = []
    on_error: Literal["raise", "skip"] = "raise"
    # Rendered stores (sftlab/data/store.py): processes that render (None: all cores) and where the cache lives
    # (None: $SFTLAB_CACHE, else ~/.cache/sftlab/render).
    num_proc: int | None = Field(None, gt=0)
    cache_dir: str | None = None

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _paths_to_sources(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        if not isinstance(v, list):  # None (an empty `eval:`), a number: pydantic names the key and the value
            return v
        return [{"path": x} if isinstance(x, str) else x for x in v]


class EarlyStoppingConfig(Strict):
    metric: str = "eval_loss"
    patience: int = Field(3, gt=0)
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"


class EvalGenerateConfig(Strict):
    """Generation metrics during training (sftlab/eval/during_training.py), at every eval step."""

    max_samples: int = Field(32, gt=0)  # eval records, spread over task_types
    max_new_tokens: int = Field(64, gt=0)
    metrics: list[Literal["exact_match", "rouge", "bleu", "chrf"]] = ["exact_match", "rouge"]
    batch_size: int = Field(16, gt=0)


class FsdpConfig(Strict):
    """FSDP2 (train.parallel: fsdp) in ZeRO's terms (docs/distributed.md): what stays sharded, what goes to the CPU."""

    # true ≈ ZeRO-3: each layer's parameters are gathered for forward and again for backward; false ≈ ZeRO-2:
    # gathered once and kept from forward to backward (more memory, one all-gather less per layer and step)
    reshard_after_forward: bool = True
    # optimizer: AdamW's states and its step on the CPU (sftlab's, FSDP2 has no optimizer-only offload);
    # params: FSDP2's CPUOffloadPolicy (parameter shards, gradients and optimizer states on the CPU)
    offload: Literal["none", "optimizer", "params"] = "none"


class TrainConfig(Strict):
    output_dir: str
    loss: Literal["turn", "token", "sequence"] = "turn"
    per_device_train_batch_size: int | None = Field(4, gt=0)
    gradient_accumulation_steps: int | None = Field(1, gt=0)
    global_batch_size: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: Literal["constant", "linear", "cosine", "cosine_with_min_lr"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float | None = Field(None, ge=0)  # None: 0.01 for full fine-tuning, 0 for LoRA
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = Field(1.0, ge=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    seed: int = 42
    logging_steps: int = Field(1, gt=0)
    eval_steps: int = Field(0, ge=0)
    save_steps: int = Field(0, ge=0)
    save_total_limit: int | None = Field(None, ge=0)  # newest N step-* checkpoints kept; 0 / None = keep all
    overwrite_output_dir: bool = False  # replace the run already in output_dir (else a non-empty dir is refused)
    eval_on_start: bool = False  # evaluate once before the first step (a step-0 baseline), as HF Trainer does
    gradient_checkpointing: bool = False
    torch_compile: bool = False  # torch.compile the decoder (HF's name); off: CPU 0.96x tiny, 1.07x 512x8 (benchmarks/)
    resume: str | None = None  # "auto" or a checkpoint dir
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    fsdp: FsdpConfig = FsdpConfig()  # train.parallel: fsdp only
    loss_chunk_size: int | None = Field(None, gt=0)  # supervised positions per loss-head chunk; None: ~64 MiB of fp32 logits on CPU, 256 MiB on CUDA
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]
    wandb: dict[str, Any] = {}  # wandb.init options: project, name, entity, group, tags, mode (offline), notes
    mlflow: dict[str, Any] = {}  # tracking_uri (default: file store RUN/mlruns), experiment, run_name
    early_stopping: EarlyStoppingConfig | None = None
    eval_generate: EvalGenerateConfig | None = None  # generation metrics at every eval (needs data.eval)
    health: HealthConfig = HealthConfig()  # alarm thresholds and abort_on
    device: str | None = None  # default: cuda if available, else cpu
    # Multi-task balancing (sftlab/train/balance.py): keys are task types or parent channels ('math' covers
    # 'math/add'; the most specific wins; others 1). Weights scale the loss numerator only (D unchanged);
    # epochs repeat (2) or subsample (0.5) a task's samples in each epoch of the step plan.
    task_weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = {}
    task_epochs: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = {}


class RunConfig(Strict):
    model: ModelConfig
    data: DataConfig
    train: TrainConfig

    @model_validator(mode="after")
    def _settings_that_need_eval(self) -> RunConfig:
        """Early stopping watches eval metrics: without an eval set and eval_steps it could never fire."""
        if self.train.early_stopping is not None and not self.data.eval:
            raise ValueError("train.early_stopping needs an eval set: set data.eval (and train.eval_steps)")
        if self.train.early_stopping is not None and not self.train.eval_steps:
            raise ValueError("train.early_stopping needs train.eval_steps > 0 (it is checked at each eval)")
        if self.train.eval_on_start and not self.data.eval:
            raise ValueError("train.eval_on_start needs an eval set: set data.eval")
        if self.train.fsdp != FsdpConfig() and self.train.parallel != "fsdp":
            raise ValueError(f"train.fsdp applies to FSDP2: set train.parallel=fsdp (it is {self.train.parallel!r})")
        return self


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b' (intermediate mappings are created)."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """'train.learning_rate=1e-5' -> ('train.learning_rate', 1e-05); values parsed as YAML."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.fullmatch(value):  # YAML reads '1e-5' as a string
            value = float(value)
        out.append((key.strip(), value))
    return out


def _union_error(errors: list[Any]) -> tuple[Any, tuple]:
    """The error to report and its key path. A union field (`data: [PATH | {path, name, ...}]`) gives one error
    per member, each under the member's tag (`data.0.str`, `data.0.EvalSet.nme`): for a mapping the model
    member's error names the mistake, not "should be a valid string"; the tag is no key of the user's."""
    first = errors[0]
    loc = tuple(first["loc"])
    if not loc:
        return first, loc
    prefix = loc[:-1]
    members = [x for x in errors[1:] if tuple(x["loc"][:len(prefix)]) == prefix and len(x["loc"]) > len(prefix)]
    if not members:
        return first, loc
    if isinstance(first.get("input"), dict):
        inner = next((x for x in members if len(x["loc"]) > len(prefix) + 1), None)
        if inner is not None:
            return inner, prefix + tuple(inner["loc"][len(prefix) + 1:])
    return first, prefix


def _format_validation_error(e: ValidationError, source: str) -> str:
    err, loc = _union_error(e.errors())
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    if err["type"] == "value_error" and not key:  # a check across keys (RunConfig's model validator)
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: key '{key}': {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})"


# DeepSpeed / OpenRLHF settings that configs and command lines carry over, and what sftlab (FSDP2) calls them
ZERO_STAGES = {0: "train.parallel=ddp",
               1: "train.parallel=fsdp train.fsdp.reshard_after_forward=false (ZeRO-2; FSDP2 has no ZeRO-1)",
               2: "train.parallel=fsdp train.fsdp.reshard_after_forward=false",
               3: "train.parallel=fsdp (train.fsdp.reshard_after_forward=true, the default)"}
_FSDP = "train.parallel=fsdp with train.fsdp.reshard_after_forward / train.fsdp.offload"
DEEPSPEED_KEYS = {"adam_offload": "train.parallel=fsdp train.fsdp.offload=optimizer",
                  "offload_optimizer": "train.parallel=fsdp train.fsdp.offload=optimizer",
                  "offload": "train.parallel=fsdp train.fsdp.offload=params (parameters, gradients and optimizer "
                             "states on the CPU; train.fsdp.offload=optimizer: AdamW only)",
                  "offload_param": "train.parallel=fsdp train.fsdp.offload=params",
                  "deepspeed": _FSDP, "zero_optimization": _FSDP}


def _refuse_deepspeed_keys(raw: dict[str, Any], source: str) -> None:
    """`zero_stage: 2`, `adam_offload: true` and the like (at the top or under train): one line naming sftlab's
    FSDP2 setting that does the same, instead of "unknown key"."""
    for where, tree in (("", raw), ("train.", raw.get("train"))):
        if not isinstance(tree, dict):
            continue
        for key, value in tree.items():
            if key == "zero_stage":
                use = ZERO_STAGES.get(value, f"{ZERO_STAGES[2]} (ZeRO-2) or {ZERO_STAGES[3]} (ZeRO-3)")
            elif key in DEEPSPEED_KEYS:
                use = DEEPSPEED_KEYS[key]
            else:
                continue
            raise ConfigError(f"{source}: {where}{key} is a DeepSpeed / OpenRLHF setting; sftlab shards with FSDP2: "
                              f"use {use} (docs/distributed.md)")


def build_config(raw: dict[str, Any], overrides: list[str] = (), source: str = "config") -> RunConfig:
    """Validate a config mapping plus overrides; raise ConfigError naming the key. `raw` is not changed."""
    raw = copy.deepcopy(dict(raw or {}))
    for key, value in parse_overrides(list(overrides)):
        set_dotted(raw, key, value)
    _refuse_deepspeed_keys(raw, source)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    return cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw YAML mapping of a config file (a run config, or a run plan with `stages:`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)  # where the parser stopped: the line to look at
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with model/data/train")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config file and apply dotted overrides."""
    raw = read_config_file(path)
    if "stages" in raw:
        raise ConfigError(f"{path}: has 'stages' (a run plan): run it with `sftlab train` / sftlab.train.plan.run_plan")
    return build_config(raw, overrides, source=str(path))


def resolve_batch_sizes(cfg: TrainConfig, world_size: int) -> tuple[int, int, int]:
    """(micro, accumulation, global): any two determine the third; a mismatch is an error."""
    micro, accum, glob = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.global_batch_size
    explicit = cfg.model_fields_set
    if glob is not None and "gradient_accumulation_steps" not in explicit:
        accum = None  # derive it from the other two
    elif glob is not None and "per_device_train_batch_size" not in explicit:
        micro = None
    if glob is None:
        if micro is None or accum is None:
            raise ConfigError("set two of train.per_device_train_batch_size, train.gradient_accumulation_steps, "
                              "train.global_batch_size")
        return micro, accum, micro * accum * world_size
    if micro is not None and accum is not None:
        if micro * accum * world_size != glob:
            raise ConfigError(f"train.global_batch_size={glob} != per_device_train_batch_size={micro} x "
                              f"gradient_accumulation_steps={accum} x world_size={world_size}; set only two of them")
        return micro, accum, glob
    if micro is not None:
        if glob % (micro * world_size):
            raise ConfigError(f"train.global_batch_size={glob} is not divisible by per_device_train_batch_size="
                              f"{micro} x world_size={world_size}")
        return micro, glob // (micro * world_size), glob
    if accum is None or glob % (accum * world_size):
        raise ConfigError(f"train.global_batch_size={glob} is not divisible by gradient_accumulation_steps x "
                          f"world_size={world_size}")
    return glob // (accum * world_size), accum, glob


def dump_config(cfg: RunConfig, path: str | Path, resolved: dict[str, Any] | None = None) -> None:
    """Write the resolved config as YAML (what the run actually used): `resolved` fills in the values the
    loop derived ({'train.weight_decay': 0.01, 'train.global_batch_size': 16, ...}) instead of nulls.
    Written through a temporary file, so a kill never leaves half a config."""
    tree = cfg.model_dump(mode="json")
    for key, value in (resolved or {}).items():
        set_dotted(tree, key, value)
    write_text(yaml.safe_dump(tree, sort_keys=False), path)
