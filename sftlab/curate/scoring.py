"""What the model-driven steps (select ifd, reward, mods; cluster --band middle) share: scoring in windows,
the top-k cut, loading the scoring models, and the short fine-tune that makes a scoring model of a seed set.

Records are scored in windows of SCORE_WINDOW records (whole batches where batches matter), so the scores are
the same whether the records come as a list or chunk by chunk, and only one window is held at a time; the
steps that stream then read their input again and match records to scores by position (chunks_with_rows).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.config import ConfigError, RunConfig, build_config
from sftlab.data.render import load_tokenizer
from sftlab.errors import UserError
from sftlab.io import write_jsonl
from sftlab.train.export import load_for_inference

SCORE_WINDOW = 1024  # records rendered and scored together (length sort and batches stay inside a window)


def windows(chunks: Iterable[Sequence[dict[str, Any]]], size: int) -> Iterator[list[dict[str, Any]]]:
    """The records of `chunks` regrouped into lists of exactly `size` (the last may be shorter): model scoring
    batches by window, so its results do not depend on how the input happened to be chunked (or not)."""
    window: list[dict[str, Any]] = []
    for chunk in chunks:
        for rec in chunk:
            window.append(rec)
            if len(window) == size:
                yield window
                window = []
    if window:
        yield window


def score_windows(chunks: Iterable[Sequence[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """The records regrouped into windows of SCORE_WINDOW."""
    return windows(chunks, SCORE_WINDOW)


def batch_window(batch_size: int) -> int:
    """SCORE_WINDOW rounded up to whole batches: scoring in input order then batches exactly as on the list."""
    return batch_size * -(-SCORE_WINDOW // batch_size)


def chunks_with_rows(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], n_rows: int, *,
                     step: str = "select", rows: str = "embeddings") -> Iterator[tuple[Sequence[dict[str, Any]], int]]:
    """(chunk, its first row) over an input read again, which must give exactly the n_rows records an earlier
    pass computed one row each for (embeddings, scores): the passes match records by position."""
    start = 0
    for chunk in read_chunks():
        if start + len(chunk) > n_rows:
            raise UserError(f"{step}: {n_rows} {rows} for more records than that")
        yield chunk, start
        start += len(chunk)
    if start != n_rows:
        raise UserError(f"{step}: {n_rows} {rows} for {start} records")


def top_selection(scores: np.ndarray, keep_fraction: float | None, k: int | None) -> set[int]:
    """Indices of the highest scores (ties broken by index), all when neither bound is given."""
    n = len(scores)
    if keep_fraction is not None:
        k = max(1, round(keep_fraction * n)) if n else 0
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return set(order if k is None else order[:k])


def _device() -> str:
    import torch  # lazy: torch loads only when a step scores with a model

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(path: str) -> Any:
    """AutoModelForCausalLM in float32 on CUDA when present, else CPU, in eval mode."""
    import torch  # lazy: torch and transformers load only when a step scores with a model
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
    return model.to(_device()).eval()


def load_generation_model(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained final/ dir (full weights or a LoRA adapter), on CUDA when present."""
    model = load_for_inference(path).to(_device()).eval()
    return model, load_tokenizer(str(path))


# The small run that fine-tunes the initial model on the seed records when `select mods` trains it itself.
# Why these values: MoDS fine-tunes the seed set for a few epochs at the usual SFT learning rate; everything can
# be replaced by a --train-config file (model/data/train keys) and dotted --train-set overrides.
SEED_TRAIN_DEFAULTS: dict[str, Any] = {
    "data": {"max_length": 1024},
    "train": {"num_train_epochs": 3, "learning_rate": 2e-5, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "report_to": [], "save_steps": 0, "eval_steps": 0},
}


def seed_run_config(work_dir: str | Path, *, base_model: str | None = None, train_config: dict[str, Any] | None = None,
                    overrides: Sequence[str] = (), command: str = "select mods") -> RunConfig:
    """The RunConfig of the seed run: SEED_TRAIN_DEFAULTS, then train_config (replacing keys within
    model/data/train), then base_model as model.name_or_path, then the dotted overrides; data.train
    (WORK/seed.jsonl) and train.output_dir (WORK/run) are set here. Built before any scoring, so bad keys fail fast.
    command names the calling command in errors (`select ifd --pre-experience` trains through here too).
    """
    work = Path(work_dir)
    raw = copy.deepcopy(SEED_TRAIN_DEFAULTS)
    for part, values in (train_config or {}).items():
        if isinstance(values, dict) and isinstance(raw.get(part), dict):
            raw[part].update(values)
        else:
            raw[part] = values
    if base_model is not None:
        raw.setdefault("model", {})["name_or_path"] = base_model
    if not (raw.get("model") or {}).get("name_or_path"):
        raise ConfigError(f"{command}: the seed model needs a base model (--base-model or model.name_or_path in "
                          "--train-config)")
    for key in ("data.train", "train.output_dir"):
        part, sub = key.split(".")
        if sub in (raw.get(part) or {}):
            raise ConfigError(f"{command}: --train-config key '{key}' is set by the command")
    raw["data"]["train"] = [str(work / "seed.jsonl")]
    raw["train"]["output_dir"] = str(work / "run")
    return build_config(raw, list(overrides), source=f"{command} --train-config")


def train_seed_model(seed_records: Sequence[dict[str, Any]], work_dir: str | Path, *, base_model: str | None = None,
                     train_config: dict[str, Any] | None = None, overrides: Sequence[str] = (),
                     command: str = "select mods") -> Path:
    """Fine-tune the initial model on the seed records with sftlab's training loop (config: seed_run_config);
    returns its final/ dir."""
    from sftlab.eval.during_training import generation_eval  # lazy: imports the hf backend (torch)
    from sftlab.train.loop import train  # lazy: the training engine imports torch

    cfg = seed_run_config(work_dir, base_model=base_model, train_config=train_config, overrides=overrides,
                          command=command)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    write_jsonl(list(seed_records), cfg.data.train[0].path)
    return train(cfg, generation_eval)  # a seed --train-config may use train.eval_generate, as `sftlab train` does
