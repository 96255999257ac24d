"""The loss contract (docs/DESIGN.md §2): the only place that reduces per-token losses.

Every reduction is written as  L = Σ_i c_i l_i / D  over the supervised tokens i of a global batch G, where
the per-token coefficient c_i depends only on the token's own sample, and the denominator D is a sum of
per-sample terms over G:

    token:    c_i = w_t                      D = Σ_samples Σ_t w_t |S_t|
    turn:     c_i = w_t / |S_t|              D = Σ_samples Σ_t w_t
    sequence: c_i = w_t / Σ_t w_t |S_t|      D = number of samples

So the coefficients are fixed when a sample is rendered, D is known before any backward pass (every rank
holds the global batch plan), and each micro-batch contributes  Σ_{i in micro} c_i l_i / D . Summing these
over micro-batches, accumulation steps and ranks gives exactly L, whatever the layout: that is the
invariance the property tests check. Channel (task_type) losses are the same reduction restricted to the
samples of one channel: Σ_{i in ch} c_i l_i / Σ_{s in ch} D_s, so they recombine exactly into the total.

Task weights (train.task_weights, sftlab/train/balance.py) multiply the coefficients of a sample's tokens by a
per-sample W_s when a micro-batch is reduced: L = Σ_i W_s(i) c_i l_i / D with D unchanged. The coefficients
still depend only on the token's own sample, so the invariance holds as before. Channel losses stay unweighted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

REDUCTIONS = ("token", "turn", "sequence")


def sample_loss_coefficients(turn_index: Any, turn_weights: Any, reduction: str) -> tuple[np.ndarray, float]:
    """Per-token coefficients c_i (0 where unsupervised) and the sample's share of the denominator D."""
    ti = np.asarray(turn_index, dtype=np.int64)
    w = np.asarray(turn_weights, dtype=np.float64)
    sup = ti >= 0
    counts = np.bincount(ti[sup], minlength=len(w)).astype(np.float64)
    coef = np.zeros(len(ti), dtype=np.float64)
    if reduction == "token":
        coef[sup] = w[ti[sup]]
        denom = float((w * counts).sum())
    elif reduction == "turn":
        coef[sup] = (w / np.maximum(counts, 1.0))[ti[sup]]
        denom = float(w[counts > 0].sum())
    elif reduction == "sequence":
        total = float((w * counts).sum())
        coef[sup] = w[ti[sup]] / total
        denom = 1.0
    else:
        raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return coef, denom


def attach_loss_coefficients(samples: list[dict[str, Any]], reduction: str) -> None:
    """Store `loss_coef` (per token) and `loss_denom` (per sample) on rendered samples, in place."""
    for s in samples:
        s["loss_coef"], s["loss_denom"] = sample_loss_coefficients(s["turn_index"], s["turn_weights"], reduction)


def _logit_transform(config: Any):
    """Model-specific logit post-processing that bypassing `model.forward` would otherwise skip."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite

    def f(logits: torch.Tensor) -> torch.Tensor:
        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return f


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
               transform) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(transform(logits).float(), targets, reduction="none")


def supervised_token_nll(model: Any, batch: dict[str, torch.Tensor], chunk_size: int = 4096) -> torch.Tensor:
    """Negative log-likelihood of every supervised token of a micro-batch, in `batch["target_pos"]` order.

    Logits are computed only at supervised positions, chunk by chunk, and recomputed in backward
    (activation checkpointing per chunk), so the full [rows, length, vocab] logits never exist.
    """
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):  # varlen kernels (attention.py)
        if name in batch:
            kwargs[name] = batch[name]
    hidden = model.get_decoder()(**kwargs).last_hidden_state  # [R, L, H]
    rows, cols = batch["target_pos"]  # positions whose *next* token is supervised
    h = hidden[rows, cols]  # [N, H]
    targets = batch["targets"]
    head = model.get_output_embeddings()
    transform = _logit_transform(model.config)
    if h.shape[0] <= chunk_size:
        return _chunk_nll(h, head.weight, head.bias, targets, transform)
    parts = []
    for start in range(0, h.shape[0], chunk_size):
        hs, ts = h[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_nll, hs, head.weight, head.bias, ts, transform, use_reentrant=False))
        else:
            parts.append(_chunk_nll(hs, head.weight, head.bias, ts, transform))
    return torch.cat(parts)


class SupervisedTokenNLL(torch.nn.Module):
    """The model and the supervised-token loss head as one module, so DDP / FSDP2 see a single forward
    (their hooks run on the root module's call) while logits stay restricted to supervised positions."""

    def __init__(self, model: Any, chunk_size: int = 4096) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return supervised_token_nll(self.model, batch, self.chunk_size)


def micro_batch_loss(nll: torch.Tensor, batch: dict[str, torch.Tensor], denominator: float,
                     sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss: Σ W_s c_i l_i / D (D counted over the global batch).

    `sample_weights` (one per sample of the micro-batch, in collate order; task_weights) multiply the
    coefficients of the sample's tokens here, so stored coefficients and D stay as rendered: a weight moves
    the numerator only, and a weight of 0 gives exactly zero gradient from that sample."""
    coef = batch["target_coef"]
    if sample_weights is not None:
        coef = coef * sample_weights.to(coef.dtype)[batch["target_sample"]]
    return (nll * coef).sum() / denominator


def per_sample_sums(nll: torch.Tensor, batch: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
    """Σ c_i l_i per sample of the micro-batch (for channel losses); detached, float64."""
    out = torch.zeros(num_samples, dtype=torch.float64, device=nll.device)
    return out.index_add_(0, batch["target_sample"], (nll.detach() * batch["target_coef"]).double())
