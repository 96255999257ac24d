"""`select ifd`: Instruction-Following Difficulty (Cherry LLM), IFD = loss(answer | prompt) / loss(answer).

Both losses are mean token negative log-likelihoods of the last assistant turn, found with the same chat
template and supervised-token masks as training (render_records): once with the whole conversation, once
with the answer after an empty user message (the template's
turn markers stay, the prompt's content is gone; chat templates refuse a conversation without a user turn). IFD >= 1 means the prompt does not help the model produce the
answer (often a mismatched pair), so those are dropped; of the rest the highest IFD are kept.
Losses are computed in length-sorted, right-padded batches with an attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from sftlab.data.curate.config import StepConfig, parse_config
from sftlab.data.curate.io import StepResult, drop
from sftlab.data.render import load_tokenizer, render_records
from sftlab.errors import UserError


class IFDConfig(StepConfig):
    """Drop IFD >= max_ifd, then keep the top keep_fraction (or k) by IFD."""

    max_ifd: float | None = Field(1.0, gt=0)
    keep_fraction: float | None = Field(None, gt=0, le=1)
    k: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=2)

    @model_validator(mode="after")
    def _one(self) -> IFDConfig:
        if self.keep_fraction is not None and self.k is not None:
            raise ValueError("give keep_fraction or k, not both")
        return self


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def mean_answer_losses(model: Any, samples: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """Mean NLL over each sample's supervised tokens (labels != -100), batched; float64 [len(samples)]."""
    import torch

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


def load_causal_lm(path: str) -> Any:
    """AutoModelForCausalLM in float32 on CUDA when present, else CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"cannot load model {path!r}: {str(e).splitlines()[0]}") from None
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def ifd_scores(records: Sequence[dict[str, Any]], model: Any, tokenizer: Any, *, batch_size: int = 8,
               max_length: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ifd, conditioned loss, direct loss) per record, for the last assistant turn."""
    cond, _ = render_records(records, tokenizer, train_on="last_assistant", max_length=max_length)
    alone = [{"id": r["id"], "task_type": r["task_type"], "tools": None,
              "messages": [{"role": "user", "content": ""},
                           next(m for m in reversed(r["messages"]) if m.get("role") == "assistant")]}
             for r in records]
    direct, _ = render_records(alone, tokenizer, train_on="last_assistant", max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lc = mean_answer_losses(model, cond, pad, batch_size)
    ld = mean_answer_losses(model, direct, pad, batch_size)
    return lc / np.maximum(ld, 1e-12), lc, ld


def top_selection(scores: np.ndarray, keep_fraction: float | None, k: int | None) -> set[int]:
    """Indices of the highest scores (ties broken by index), all when neither bound is given."""
    n = len(scores)
    if keep_fraction is not None:
        k = max(1, round(keep_fraction * n)) if n else 0
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return set(order if k is None else order[:k])


def ifd_select(records: Sequence[dict[str, Any]], model_path: str, config: IFDConfig | dict | None = None, *,
               model: Any = None, tokenizer: Any = None) -> StepResult:
    """Score IFD (meta.ifd, meta.ifd_loss_cond, meta.ifd_loss_direct), drop IFD >= max_ifd, keep the top."""
    cfg = config if isinstance(config, IFDConfig) else parse_config(IFDConfig, "select ifd", config)
    tokenizer = tokenizer or load_tokenizer(model_path)
    model = model or load_causal_lm(model_path)
    ifd, lc, ld = ifd_scores(records, model, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)
    ok = [i for i in range(len(records)) if cfg.max_ifd is None or ifd[i] < cfg.max_ifd]
    top = {ok[j] for j in top_selection(ifd[ok], cfg.keep_fraction, cfg.k)}
    kept, dropped = [], []
    for i, rec in enumerate(records):
        scores = {"ifd": round(float(ifd[i]), 6), "ifd_loss_cond": round(float(lc[i]), 6),
                  "ifd_loss_direct": round(float(ld[i]), 6)}
        if i in top:
            kept.append({**rec, "meta": {**(rec.get("meta") or {}), **scores}})
        elif cfg.max_ifd is not None and ifd[i] >= cfg.max_ifd:
            dropped.append(drop(rec, "select_ifd", "ifd_too_high", **scores))
        else:
            dropped.append(drop(rec, "select_ifd", "below_cut", **scores))
    return StepResult("select_ifd", kept, dropped)
