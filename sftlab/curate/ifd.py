"""`select ifd`: Instruction-Following Difficulty (Cherry LLM), IFD = loss(answer | prompt) / loss(answer).

Both losses are mean token negative log-likelihoods of the last assistant turn, found with the same chat
template and supervised-token masks as training (render_records): once with the whole conversation, once
with the answer after an empty user message (the template's
turn markers stay, the prompt's content is gone; chat templates refuse a conversation without a user turn). IFD >= 1 means the prompt does not help the model produce the
answer (often a mismatched pair), so those are dropped; of the rest the highest IFD are kept.
Losses are computed in length-sorted, right-padded batches with an attention mask, one window of
SCORE_WINDOW records at a time: only one window's token ids are held, and the scores are the same whether the
records come as a list or chunk by chunk (`select ifd` streams: scores first, then the records again to write).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.embed import embed_records
from sftlab.curate.scoring import (
    chunks_with_rows,
    load_causal_lm,
    load_generation_model,
    score_windows,
    top_selection,
    train_seed_model,
)
from sftlab.curate.select import ClusterConfig, cluster_select
from sftlab.curate.step import StepResult, drop
from sftlab.data.render import load_tokenizer, render_records
from sftlab.errors import UserError


class IFDConfig(StepConfig):
    """Drop IFD >= max_ifd, then keep the top keep_fraction (or k) by IFD."""

    max_ifd: float | None = Field(1.0, gt=0)
    keep_fraction: float | None = Field(None, gt=0, le=1)
    k: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=2)
    pre_experience: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one(self) -> IFDConfig:
        if self.keep_fraction is not None and self.k is not None:
            raise ValueError("give keep_fraction or k, not both")
        return self


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def mean_answer_losses(model: Any, samples: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Mean NLL over each sample's supervised tokens (labels != -100), batched; float64 [len(samples)]."""
    import torch  # lazy: torch loads only when a step scores with a model

    out = np.zeros(len(samples), dtype=np.float64)
    order = sorted(range(len(samples)), key=lambda i: samples[i]["num_tokens"])
    dev = _device(model)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            width = max(samples[i]["num_tokens"] for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = samples[i]["num_tokens"]
                ids[r, :n] = torch.tensor(samples[i]["input_ids"])
                labels[r, :n] = torch.tensor(samples[i]["labels"])
                mask[r, :n] = 1
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
            tgt = labels[:, 1:].to(dev)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100,
                                                    reduction="none")
            valid = (tgt != -100).float()
            out[idx] = ((nll * valid).sum(1) / valid.sum(1).clamp(min=1)).double().cpu().numpy()
    return out


def conditional_losses(records: Sequence[dict[str, Any]], model: Any, tokenizer: Any, *, batch_size: int = 8,
                       max_length: int = 2048) -> np.ndarray:
    """Mean NLL of each record's last assistant turn given the conversation (the numerator of IFD; its exp is
    the answer perplexity used by `select cluster --band`)."""
    cond, _ = render_records(records, tokenizer, train_on="last_assistant", max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return mean_answer_losses(model, cond, pad, batch_size)


def answer_perplexities(records: Sequence[dict[str, Any]], model_path: str, *, batch_size: int = 8,
                        max_length: int = 2048) -> np.ndarray:
    """exp(conditional_losses) with the model at model_path (its chat template)."""
    return answer_perplexities_of_chunks([records], model_path, batch_size=batch_size, max_length=max_length)


def answer_perplexities_of_chunks(chunks: Iterable[Sequence[dict[str, Any]]], model_path: str, *,
                                  batch_size: int = 8, max_length: int = 2048) -> np.ndarray:
    """answer_perplexities over records read chunk by chunk, scored in windows of SCORE_WINDOW records."""
    model, tokenizer = load_causal_lm(model_path), load_tokenizer(model_path)
    parts = [np.zeros(0)] + [conditional_losses(w, model, tokenizer, batch_size=batch_size, max_length=max_length)
                             for w in score_windows(chunks)]
    return np.exp(np.concatenate(parts))


def ifd_scores(records: Sequence[dict[str, Any]], model: Any, tokenizer: Any, *, batch_size: int = 8,
               max_length: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ifd, conditioned loss, direct loss) per record, for the last assistant turn."""
    return ifd_scores_of_chunks([records], model, tokenizer, batch_size=batch_size, max_length=max_length)


def ifd_scores_of_chunks(chunks: Iterable[Sequence[dict[str, Any]]], model: Any, tokenizer: Any, *,
                         batch_size: int = 8, max_length: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ifd_scores over records read chunk by chunk, scored in windows of SCORE_WINDOW records."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lcs, lds = [np.zeros(0)], [np.zeros(0)]
    for window in score_windows(chunks):
        lcs.append(conditional_losses(window, model, tokenizer, batch_size=batch_size, max_length=max_length))
        alone = [{"id": r["id"], "task_type": r["task_type"], "tools": None,
                  "messages": [{"role": "user", "content": ""},
                               next(m for m in reversed(r["messages"]) if m.get("role") == "assistant")]}
                 for r in window]
        direct, _ = render_records(alone, tokenizer, train_on="last_assistant", max_length=max_length)
        lds.append(mean_answer_losses(model, direct, pad, batch_size))
    lc, ld = np.concatenate(lcs), np.concatenate(lds)
    return lc / np.maximum(ld, 1e-12), lc, ld


# The pre-experience run (Cherry LLM): one short epoch on the sampled records; --train-config / --train-set
# replace any of it (it goes through the same seed-run builder as `select mods`).
PRE_EXPERIENCE_TRAIN: dict[str, Any] = {"train": {"num_train_epochs": 1}}


def pre_experience_config(train_config: dict[str, Any] | None) -> dict[str, Any]:
    """PRE_EXPERIENCE_TRAIN with train_config's model/data/train keys on top (key by key)."""
    raw: dict[str, Any] = {part: dict(v) for part, v in PRE_EXPERIENCE_TRAIN.items()}
    for part, values in (train_config or {}).items():
        raw[part] = {**raw[part], **values} if isinstance(values, dict) and part in raw else values
    return raw


def pre_experience_model(records: Sequence[dict[str, Any]], emb: np.ndarray, n: int, base_model: str,
                         work_dir: str | Path, *, train_config: dict[str, Any] | None = None,
                         overrides: Sequence[str] = (), seed: int = 0) -> tuple[Path, list[int]]:
    """K-means on emb into n clusters, the record nearest each centre, then one short epoch of base_model on
    them with sftlab's training loop (scoring.train_seed_model); returns (final/ dir, chosen indices)."""
    res = cluster_select(records, emb, ClusterConfig(n_clusters=n, per_cluster=1, seed=seed))
    chosen_ids = {r["id"] for r in res.kept}
    chosen = [i for i, r in enumerate(records) if r["id"] in chosen_ids]
    final = train_seed_model([records[i] for i in chosen], work_dir, base_model=base_model,
                             train_config=pre_experience_config(train_config), overrides=overrides,
                             command="select ifd")
    return Path(final), chosen


def ifd_select(records: Sequence[dict[str, Any]], model_path: str, config: IFDConfig | dict | None = None, *,
               model: Any = None, tokenizer: Any = None, emb: np.ndarray | None = None,
               work_dir: str | Path | None = None, train_config: dict[str, Any] | None = None,
               train_overrides: Sequence[str] = ()) -> StepResult:
    """Score IFD (meta.ifd, meta.ifd_loss_cond, meta.ifd_loss_direct), drop IFD >= max_ifd, keep the top.

    pre_experience n: first fine-tune model_path briefly on n cluster-sampled records (pre_experience_model,
    emb = instruction embeddings, embedded with the default model when not given; run in work_dir), then score
    with that model (Cherry LLM's "pre-experienced" model). model_path may be a small scorer (Superfiltering)."""
    cfg = config if isinstance(config, IFDConfig) else parse_config(IFDConfig, "select ifd", config)
    info: dict[str, Any] = {"scorer": str(model_path), "scored": len(records)}
    if cfg.pre_experience is not None:
        if work_dir is None:
            raise UserError("select ifd: pre_experience needs a work directory for its training run (--work-dir)")
        if emb is None:
            emb = embed_records(records)
        final, chosen = pre_experience_model(records, emb, cfg.pre_experience, model_path, work_dir,
                                             train_config=train_config, overrides=train_overrides, seed=cfg.seed)
        model, tokenizer = load_generation_model(final)
        info.update({"pre_experience": len(chosen), "base_model": str(model_path), "scorer": str(final)})
    tokenizer = tokenizer or load_tokenizer(model_path)
    model = model or load_causal_lm(model_path)
    ifd, lc, ld = ifd_scores(records, model, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)
    res = _ifd_result(records, 0, (ifd, lc, ld), _ifd_keep(ifd, cfg), cfg)
    res.info = info
    return res


def ifd_select_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], model_path: str,
                      config: IFDConfig | dict | None = None, *, model: Any = None, tokenizer: Any = None
                      ) -> Iterator[StepResult]:
    """ifd_select over an input read twice: the scores (three floats per record), then the records to write.
    The last result carries the info. pre_experience trains on a sample of the whole list: use ifd_select."""
    cfg = config if isinstance(config, IFDConfig) else parse_config(IFDConfig, "select ifd", config)
    if cfg.pre_experience is not None:
        raise UserError("select ifd: pre_experience needs a work directory for its training run (--work-dir)")
    tokenizer = tokenizer or load_tokenizer(model_path)
    model = model or load_causal_lm(model_path)
    scores = ifd_scores_of_chunks(read_chunks(), model, tokenizer, batch_size=cfg.batch_size,
                                  max_length=cfg.max_length)
    top = _ifd_keep(scores[0], cfg)
    for chunk, start in chunks_with_rows(read_chunks, len(scores[0]), step="select ifd", rows="scores"):
        yield _ifd_result(chunk, start, scores, top, cfg)
    yield StepResult("select_ifd", [], [], info={"scorer": str(model_path), "scored": len(scores[0])})


def _ifd_keep(ifd: np.ndarray, cfg: IFDConfig) -> set[int]:
    """Rows kept: below max_ifd, then the top keep_fraction / k by IFD."""
    ok = [i for i in range(len(ifd)) if cfg.max_ifd is None or ifd[i] < cfg.max_ifd]
    return {ok[j] for j in top_selection(ifd[ok], cfg.keep_fraction, cfg.k)}


def _ifd_result(chunk: Sequence[dict[str, Any]], start: int, scores: tuple[np.ndarray, np.ndarray, np.ndarray],
                top: set[int], cfg: IFDConfig) -> StepResult:
    ifd, lc, ld = scores
    kept, dropped = [], []
    for i, rec in enumerate(chunk, start):
        row = {"ifd": round(float(ifd[i]), 6), "ifd_loss_cond": round(float(lc[i]), 6),
               "ifd_loss_direct": round(float(ld[i]), 6)}
        if i in top:
            kept.append({**rec, "meta": {**(rec.get("meta") or {}), **row}})
        elif cfg.max_ifd is not None and ifd[i] >= cfg.max_ifd:
            dropped.append(drop(rec, "select_ifd", "ifd_too_high", **row))
        else:
            dropped.append(drop(rec, "select_ifd", "below_cut", **row))
    return StepResult("select_ifd", kept, dropped)


def ifd_summary(info: dict[str, Any]) -> str:
    """One line naming the stages: the pre-experience run (when there was one) and the scoring model."""
    parts = []
    if "pre_experience" in info:
        parts.append(f"pre-experience: {info['pre_experience']} cluster-sampled records, one short epoch of "
                     f"{info['base_model']} -> {info['scorer']}")
    parts.append(f"ifd: {info['scored']} records scored with {info['scorer']}")
    return "select_ifd stages: " + "; ".join(parts)
