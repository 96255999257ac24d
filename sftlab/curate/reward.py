"""`select reward`: score each conversation with a reward model (any AutoModelForSequenceClassification with
one output) and keep records whose score is >= min_score, or the top fraction / k.

Records are scored in windows of whole batches (scoring.batch_window), in input order, so the batches
are the same whether the records come as a list or chunk by chunk; `select reward` streams (scores first, then
the records again to write)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.scoring import batch_window, chunks_with_rows, top_selection, windows
from sftlab.curate.step import StepResult, drop
from sftlab.errors import UserError


class RewardConfig(StepConfig):
    """Keep score >= min_score, then (optionally) the top keep_fraction or k."""

    min_score: float | None = None
    keep_fraction: float | None = Field(None, gt=0, le=1)
    k: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=2)

    @model_validator(mode="after")
    def _one(self) -> RewardConfig:  # as select ifd: one would be ignored silently
        if self.keep_fraction is not None and self.k is not None:
            raise ValueError("give keep_fraction or k, not both")
        return self


def load_reward_model(path: str) -> tuple[Any, Any]:
    """(model, tokenizer); the pad token is made known to the model so batched scoring finds each last token."""
    import torch  # lazy: torch and transformers load only when a step scores with a model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"cannot load reward model {path!r}: {str(e).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise UserError(f"reward model {path!r} has {model.config.num_labels} outputs; a reward model has one")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tok


def conversation_text(rec: dict[str, Any], tokenizer: Any) -> str:
    """The conversation as the reward model reads it: its chat template, else role-prefixed lines."""
    msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in rec["messages"]]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def reward_scores(records: Sequence[dict[str, Any]], model: Any, tokenizer: Any, *, batch_size: int = 8,
                  max_length: int = 2048) -> np.ndarray:
    """One scalar per record, in batches (right padding, attention mask)."""
    return reward_scores_of_chunks([records], model, tokenizer, batch_size=batch_size, max_length=max_length)


def reward_scores_of_chunks(chunks: Iterable[Sequence[dict[str, Any]]], model: Any, tokenizer: Any, *,
                            batch_size: int = 8, max_length: int = 2048) -> np.ndarray:
    """reward_scores over records read chunk by chunk; windows hold whole batches, so batch b is always records
    [b * batch_size, (b + 1) * batch_size) of the input."""
    import torch  # lazy: torch loads only when a step scores with a model

    dev = next(model.parameters()).device
    tokenizer.padding_side = "right"
    parts = [np.zeros(0)]
    with torch.inference_mode():
        for recs in windows(chunks, batch_window(batch_size)):
            texts = [conversation_text(r, tokenizer) for r in recs]
            out = np.zeros(len(texts), dtype=np.float64)
            for b in range(0, len(texts), batch_size):
                enc = tokenizer(texts[b:b + batch_size], padding=True, truncation=True, max_length=max_length,
                                add_special_tokens=False, return_tensors="pt").to(dev)
                out[b:b + batch_size] = model(**enc).logits[:, 0].float().cpu().numpy()
            parts.append(out)
    return np.concatenate(parts)


def reward_select(records: Sequence[dict[str, Any]], model_path: str, config: RewardConfig | dict | None = None,
                  *, model: Any = None, tokenizer: Any = None) -> StepResult:
    """meta.reward on kept records; removed ones are 'below_min_score' or 'below_cut'."""
    cfg = config if isinstance(config, RewardConfig) else parse_config(RewardConfig, "select reward", config)
    if model is None:
        model, tokenizer = load_reward_model(model_path)
    scores = reward_scores(records, model, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)
    return _reward_result(records, 0, scores, _reward_keep(scores, cfg), cfg)


def reward_select_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], model_path: str,
                         config: RewardConfig | dict | None = None, *, model: Any = None, tokenizer: Any = None
                         ) -> Iterator[StepResult]:
    """reward_select over an input read twice: the scores (one float per record), then the records to write."""
    cfg = config if isinstance(config, RewardConfig) else parse_config(RewardConfig, "select reward", config)
    if model is None:
        model, tokenizer = load_reward_model(model_path)
    scores = reward_scores_of_chunks(read_chunks(), model, tokenizer, batch_size=cfg.batch_size,
                                     max_length=cfg.max_length)
    top = _reward_keep(scores, cfg)
    for chunk, start in chunks_with_rows(read_chunks, len(scores), step="select reward", rows="scores"):
        yield _reward_result(chunk, start, scores, top, cfg)


def _reward_keep(scores: np.ndarray, cfg: RewardConfig) -> set[int]:
    ok = [i for i in range(len(scores)) if cfg.min_score is None or scores[i] >= cfg.min_score]
    return {ok[j] for j in top_selection(scores[ok], cfg.keep_fraction, cfg.k)}


def _reward_result(chunk: Sequence[dict[str, Any]], start: int, scores: np.ndarray, top: set[int],
                   cfg: RewardConfig) -> StepResult:
    kept, dropped = [], []
    for i, rec in enumerate(chunk, start):
        s = round(float(scores[i]), 6)
        if i in top:
            kept.append({**rec, "meta": {**(rec.get("meta") or {}), "reward": s}})
        else:
            reason = "below_min_score" if cfg.min_score is not None and scores[i] < cfg.min_score else "below_cut"
            dropped.append(drop(rec, "select_reward", reason, reward=s))
    return StepResult("select_reward", kept, dropped)
