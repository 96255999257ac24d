"""The loss contract (docs/DESIGN.md §2): the only place that reduces per-token losses.

Every reduction is written as  L = Σ_i c_i l_i / D  over the supervised tokens i of a global batch G, where
the per-token coefficient c_i depends only on the token's own sample, and the denominator D is a sum of
per-sample terms over G:

    token:    c_i = w_t                      D = Σ_samples Σ_t w_t |S_t|
    turn:     c_i = w_t / |S_t|              D = Σ_samples Σ_t w_t
    sequence: c_i = w_t / Σ_t w_t |S_t|      D = number of samples

So the coefficients are fixed when a sample is rendered (sftlab/data/coefficients.py), D is known before any backward pass (every rank
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

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sftlab.data.coefficients import sample_loss_coefficients
from sftlab.train.last_layer import reading_only


def attach_loss_coefficients(samples: list[dict[str, Any]], reduction: str) -> None:
    """Store `loss_coef` (per token) and `loss_denom` (per sample) on rendered samples, in place."""
    for s in samples:
        s["loss_coef"], s["loss_denom"] = sample_loss_coefficients(s["turn_index"], s["turn_weights"], reduction)


def _logit_transform(config: Any):
    """Model-specific logit post-processing that bypassing `model.forward` would otherwise skip (None: none)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)  # Cohere
    divide = getattr(config, "logits_scaling", None)  # Granite
    if not (softcap or scale or divide):
        return None

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
    return F.cross_entropy((transform(logits) if transform else logits).float(), targets, reduction="none")


# Rows of one head chunk when train.loss_chunk_size is not set: about 64 MiB of fp32 logits per chunk on CPU (128
# rows at Qwen's 151,936 columns, 8,192 at a 2,048 vocabulary; 64 rows measured 25 % slower than 128 on one core),
# 256 MiB on a GPU (441 rows at Qwen's vocabulary: fewer, larger matmuls). The fused head recomputes nothing, so a
# smaller chunk only costs more matmul calls.
AUTO_CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}


def chunk_rows(chunk_size: int | None, vocab: int, device_type: str = "cpu") -> int:
    """Supervised positions per loss-head chunk: the configured number, or the auto size for this vocabulary."""
    if chunk_size:
        return int(chunk_size)
    budget = AUTO_CHUNK_BYTES.get(device_type, AUTO_CHUNK_BYTES["cpu"])
    return int(min(8192, max(128, budget // (4 * max(vocab, 1)))))


def _supervised_hidden(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden state at the positions whose next token is supervised: [N, H]."""
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):  # varlen kernels (attention.py)
        if name in batch:
            kwargs[name] = batch[name]
    rows, cols = batch["target_pos"]  # positions whose *next* token is supervised
    decoder = model.get_decoder()
    with reading_only(decoder, rows, cols, batch["input_ids"].shape[1]):  # last_layer.py: the rest is dead work
        hidden = decoder(**kwargs).last_hidden_state  # [R, L, H]
    return hidden[rows, cols]


def supervised_token_nll(model: Any, batch: dict[str, torch.Tensor], chunk_size: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of every supervised token of a micro-batch, in `batch["target_pos"]` order,
    differentiable (evaluation, tests, reference computations; training uses `supervised_token_loss`).

    Logits are computed only at supervised positions, chunk by chunk, and recomputed in backward
    (activation checkpointing per chunk), so the full [rows, length, vocab] logits never exist.
    """
    h = _supervised_hidden(model, batch)
    targets = batch["targets"]
    head = model.get_output_embeddings()
    transform = _logit_transform(model.config)
    chunk = chunk_rows(chunk_size, head.weight.shape[0], h.device.type)
    if h.shape[0] <= chunk:
        return _chunk_nll(h, head.weight, head.bias, targets, transform)
    parts = []
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_nll, hs, head.weight, head.bias, ts, transform, use_reentrant=False))
        else:
            parts.append(_chunk_nll(hs, head.weight, head.bias, ts, transform))
    return torch.cat(parts)


def _chunk_logits_grad(z: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, transform,
                       nll_out: torch.Tensor) -> torch.Tensor:
    """Write the chunk's nll into `nll_out` and return d(Σ s_i nll_i)/dz in z's dtype. Without a logit
    transform this is s_i (softmax(z_i) - onehot(t_i)) made in place in one fp32 buffer (the chunk's only
    [rows, vocab] transient besides z); with one, autograd differentiates it."""
    if transform is None:
        zf = z.float()  # z itself in fp32 (overwritten: it is not needed again), a copy under bf16
        target_logit = zf.gather(1, targets[:, None]).squeeze(1)
        top = zf.amax(dim=1, keepdim=True)
        zf.sub_(top).exp_()  # exp(z - max), in place: no second [rows, vocab] buffer
        total = zf.sum(dim=1, keepdim=True)
        nll_out.copy_((top + total.log()).squeeze(1) - target_logit)  # logsumexp - target logit
        zf.mul_(scale[:, None] / total)  # s_i softmax(z_i)
        zf.scatter_add_(1, targets[:, None], -scale[:, None])
        return zf.to(z.dtype)
    z.requires_grad_()
    with torch.enable_grad():
        piece = F.cross_entropy(transform(z).float(), targets, reduction="none")
        (gz,) = torch.autograd.grad(piece, z, scale.to(piece.dtype))
    nll_out.copy_(piece.detach())
    return gz


class _FusedHeadLoss(torch.autograd.Function):
    """Σ_i s_i · nll_i over supervised positions, its gradient computed chunk by chunk *during forward*.

    The per-token scale s_i (= dL/dnll_i: the contract's c_i W_s / D) is known before the forward pass, so
    each chunk's logits are made, turned into their gradient and dropped at once: only the [N, H] gradient of
    the hidden states and the [V, H] gradient of the head weight live until backward, never [N, V] logits,
    and nothing is recomputed (the fused linear cross-entropy idea; Liger's is the CUDA kernel of it)."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, scale, transform, chunk):  # noqa: ANN001, ANN205
        device_type = h.device.type
        dt = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        w, b, hc = weight.detach().to(dt), None if bias is None else bias.detach().to(dt), h.detach().to(dt)
        need_h, need_w = h.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hc) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, h.shape[0], chunk):
                hs, ts, ss = hc[start:start + chunk], targets[start:start + chunk], scale[start:start + chunk]
                gz = _chunk_logits_grad(F.linear(hs, w, b), ts, ss, transform, nll[start:start + chunk])
                if need_h:
                    torch.mm(gz, w, out=grad_h[start:start + chunk])
                if need_w:
                    if gz.dtype == grad_w.dtype:
                        grad_w.addmm_(gz.t(), hs)
                    else:
                        grad_w.add_(gz.t() @ hs)
                if need_b:
                    grad_b.add_(gz.sum(0))
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        loss = (nll * scale).sum()
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):  # noqa: ANN001, ANN205
        grads, ctx.grads = ctx.grads, None  # hand the buffers over (autograd can then keep them as .grad)
        out = []
        for g, dtype in zip(grads, ctx.dtypes, strict=True):
            out.append(None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype))
        return out[0], out[1], out[2], None, None, None, None


def supervised_token_loss(model: Any, batch: dict[str, torch.Tensor], token_scale: torch.Tensor,
                          chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of a micro-batch: (Σ_i s_i l_i, the per-token nll l_i detached), where
    `token_scale` s_i = dL/dl_i comes from `token_loss_scale`. The head never holds more than one chunk
    of logits (see _FusedHeadLoss); gradients equal `micro_batch_loss(supervised_token_nll(...))`'s."""
    h = _supervised_hidden(model, batch)
    head = model.get_output_embeddings()
    chunk = chunk_rows(chunk_size, head.weight.shape[0], h.device.type)
    return _FusedHeadLoss.apply(h, head.weight, head.bias, batch["targets"],
                                token_scale.detach().float(), _logit_transform(model.config), chunk)


class SupervisedTokenNLL(torch.nn.Module):
    """The model and the supervised-token loss head as one module, so DDP / FSDP2 see a single forward
    (their hooks run on the root module's call) while logits stay restricted to supervised positions.

    `engine(batch)` returns the differentiable per-token nll (evaluation); `engine(batch, token_scale)` the
    training pair (loss, nll detached) of `supervised_token_loss`."""

    def __init__(self, model: Any, chunk_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: dict[str, Any], token_scale: torch.Tensor | None = None) -> Any:
        if token_scale is None:
            return supervised_token_nll(self.model, batch, self.chunk_size)
        return supervised_token_loss(self.model, batch, token_scale, self.chunk_size)


def token_loss_scale(batch: dict[str, torch.Tensor], denominator: float,
                     sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dl_i for every supervised token of the micro-batch: W_s c_i / D (D counted over the global batch).

    `sample_weights` (one per sample of the micro-batch, in collate order; task_weights) multiply the
    coefficients of the sample's tokens here, so stored coefficients and D stay as rendered: a weight moves
    the numerator only, and a weight of 0 gives exactly zero gradient from that sample."""
    coef = batch["target_coef"]
    if sample_weights is not None:
        coef = coef * sample_weights.to(coef.dtype)[batch["target_sample"]]
    return coef / denominator


def micro_batch_loss(nll: torch.Tensor, batch: dict[str, torch.Tensor], denominator: float,
                     sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """This micro-batch's share of the global-batch loss: Σ W_s c_i l_i / D, from a differentiable nll
    (`supervised_token_nll`); the training loop gets the same value and gradients from `supervised_token_loss`."""
    return (nll * token_loss_scale(batch, denominator, sample_weights)).sum()


def per_sample_sums(nll: torch.Tensor, batch: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
    """Σ c_i l_i per sample of the micro-batch (for channel losses); detached, float64."""
    out = torch.zeros(num_samples, dtype=torch.float64, device=nll.device)
    return out.index_add_(0, batch["target_sample"], (nll.detach() * batch["target_coef"]).double())
