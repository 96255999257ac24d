"""The eval configuration (`sftlab eval CONFIG.yaml [dotted overrides]`); unknown keys are errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from sftlab.config import (
    ConfigError,
    Strict,
    _format_validation_error,
    parse_overrides,
    read_config_file,
    set_dotted,
)


class EvalSet(Strict):
    path: str
    format: str = "auto"
    name: str | None = None  # default: the file stem
    task_type: str | None = None  # default: the record's own task_type / category, else the file stem


class GenerationConfig(Strict):
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    batch_size: int = Field(32, gt=0)


class JudgeConfig(Strict):
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # None: OPENAI_API_KEY when set, else no key (local servers need none)
    concurrency: int = Field(8, gt=0)
    mode: Literal["single", "pairwise"] = "single"
    dimensions: list[str] = ["helpfulness", "honesty", "harmlessness"]
    weights: dict[str, Any] | None = None  # {dim: w} or {task_type: {dim: w}, default: {...}}
    reference: bool = True  # put the reference answer in the prompt when there is one (reference-guided)
    repeats: int = Field(1, gt=0)
    temperature: float | None = None  # default: 0 for one repeat, 0.7 when repeats > 1
    max_new_tokens: int = Field(512, gt=0)
    retries: int = Field(1, ge=0)
    prompt_template: str | None = None  # text or a .txt/.md file; placeholders as in sftlab/eval/judge.py
    verdict_pattern: str | None = None  # regex with one group ({dimension} is replaced in single mode)
    cache: str | None = None  # sqlite file; default ~/.cache/sftlab/judge_cache.sqlite

    def as_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        if d["temperature"] is None:
            d["temperature"] = 0.7 if self.repeats > 1 else 0.0
        return d


class Normalization(Strict):
    lower: bool = True
    strip_punct: bool = True
    collapse_space: bool = True
    strip_articles: bool = False


class BenchmarksConfig(Strict):
    """lm-evaluation-harness tasks run on the model (and on `base`, for before/after deltas): sftlab/eval/benchmarks.py."""
    tasks: list[str] = Field(min_length=1)  # harness task names, or a task YAML / a directory of them (local data)
    base: str | dict[str, Any] | None = None  # the model before fine-tuning: a model dir or {base_url, model, ...}
    num_fewshot: int | None = Field(None, ge=0)
    limit: float | None = Field(None, gt=0)  # docs per task (a fraction when < 1), as the harness's --limit
    batch_size: int = Field(1, gt=0)
    device: str | None = None  # hf model type: default cuda when available, else cpu
    apply_chat_template: bool | None = None  # default: off for a model dir, on for an endpoint (chat API)
    model_args: dict[str, Any] = {}  # more arguments for the harness's model type (dtype, max_length, ...)
    seed: int = 0


class EvalConfig(Strict):
    model: str | dict[str, Any] | None = None  # a model dir (run dir / final / HF dir) or {base_url, model, ...}
    backend: Literal["auto", "hf", "vllm", "openai"] = "auto"
    data: list[str | EvalSet] = []
    metrics: list[str] = ["exact_match", "rouge", "bleu", "chrf"]
    normalization: Normalization = Normalization()
    checkers: list[dict[str, Any]] = []  # {type: regex|json_valid|numeric|python, task_type?, ...}
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig | None = None
    baseline: str | dict[str, Any] | None = None  # predictions.jsonl, or a model like `model`
    output_dir: str = "eval_out"
    limit: int | None = Field(None, gt=0)  # the first N records of each set
    seed: int = 0
    bad_cases: int = Field(5, ge=0)  # worst items per task_type in bad_cases.jsonl and the report
    benchmarks: BenchmarksConfig | None = None  # general-ability check through lm-evaluation-harness

    def sets(self) -> list[EvalSet]:
        return [EvalSet(path=d) if isinstance(d, str) else d for d in self.data]


def load_eval_config(path: str | Path | None, overrides: list[str] = ()) -> EvalConfig:
    """Read the YAML (optional) and apply dotted overrides (`judge.repeats=3`, `limit=10`)."""
    raw = read_config_file(path) if path else {}
    for key, value in parse_overrides(list(overrides)):
        set_dotted(raw, key, value)
    try:
        cfg = EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(path or "eval config"))) from None
    if cfg.model is None:
        raise ConfigError(f"{path or 'eval config'}: missing required key 'model' (a model dir or {{base_url, model}})")
    if not cfg.data and cfg.benchmarks is None:
        raise ConfigError(f"{path or 'eval config'}: missing required key 'data' (a list of eval set paths; "
                          "or only `benchmarks:`)")
    return cfg


def load_judge_config(path: str | Path | None, overrides: list[str] = ()) -> JudgeConfig:
    """The `judge:` section of a config file (optional) plus overrides (`model=x` or `judge.model=x`)."""
    raw = dict(read_config_file(path).get("judge") or {}) if path else {}
    for key, value in parse_overrides([o.removeprefix("judge.") for o in overrides]):
        set_dotted(raw, key, value)
    try:
        return JudgeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, f"{path or 'judge options'} (judge)")) from None
