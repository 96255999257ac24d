"""The training step on a GPU (skipped without CUDA), plus the CPU halves of the same paths: gradient
checkpointing and torch.compile under the sdpa_varlen kernel, pinned copies, the fused loss head vs Liger."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sftlab.train.attention import register_attention_kernels
from sftlab.train.batching import collate, move_batch
from sftlab.train.loss import micro_batch_loss, supervised_token_nll

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _samples(lengths: list[int]) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(3, 200, (n,), generator=gen).numpy()
        labels = ids.copy()
        labels[: n // 3] = -100
        out.append({"input_ids": ids, "labels": labels, "loss_coef": [1.0] * n, "num_tokens": n})
    return out


def _model(tiny_model_dir, impl: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    register_attention_kernels()
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl,
                                                dtype=torch.float32).to(device).train()


def _grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = micro_batch_loss(supervised_token_nll(model, batch, chunk_size=8), batch, 10.0)
    loss.backward()
    return loss.item(), [p.grad.detach().float().cpu().clone() for p in model.parameters()]


def _fused(model, monkeypatch) -> None:
    """model.fused_ops on this model; the rotary global of transformers' modeling file is put back afterwards."""
    from transformers.models.llama import modeling_llama

    from sftlab.train.fused_ops import install_fused_ops

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)
    assert install_fused_ops(model)


def _varlen_model_and_batch(model_dir, fused: bool, monkeypatch):
    """The tiny model under sdpa_varlen (fused ops or not) and a padding-free batch of four samples."""
    model = _model(model_dir, "sdpa_varlen")
    if fused:
        _fused(model, monkeypatch)
    return model, collate(_samples([9, 20, 4, 13]), "padfree", 0, attn_implementation="sdpa_varlen")


@pytest.mark.parametrize("fused", [False, True])
def test_gradient_checkpointing_under_sdpa_varlen_gives_the_same_gradients(tiny_model_dir, fused, monkeypatch):
    model, batch = _varlen_model_and_batch(tiny_model_dir, fused, monkeypatch)
    loss, grads = _grads(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, grads_ckpt = _grads(model, batch)
    assert abs(loss - loss_ckpt) <= 1e-6 * abs(loss)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, grads_ckpt, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_torch_compile_under_sdpa_varlen_gives_the_same_loss(tiny_model_dir, fused, monkeypatch):
    model, batch = _varlen_model_and_batch(tiny_model_dir, fused, monkeypatch)
    loss, _ = _grads(model, batch)
    model.get_decoder().compile(dynamic=True)
    loss_compiled, _ = _grads(model, batch)
    assert abs(loss - loss_compiled) <= 1e-4 * abs(loss)


@cuda
def test_move_batch_pins_and_keeps_counts():
    batch = collate(_samples([5, 7]), "padfree", 0, attn_implementation="sdpa_varlen")
    moved = move_batch(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved["input_ids"].is_cuda and moved["target_pos"][0].is_cuda
    assert moved["tokens"] == 12 and moved["max_length_q"] == 7
    assert torch.equal(moved["input_ids"].cpu(), batch["input_ids"])


@cuda
def test_cuda_bf16_is_native_on_ampere_and_newer():
    from sftlab.train.model import bf16_native, resolve_precision

    ok, why = bf16_native(torch.device("cuda"))
    major, _ = torch.cuda.get_device_capability()
    assert ok == (major >= 8) and torch.cuda.get_device_name() in why
    assert resolve_precision("auto", torch.device("cuda"))[0] == ("bf16" if ok else "fp32")


@cuda
@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")
def test_supervised_head_matches_liger_fused_linear_cross_entropy(tiny_model_dir):
    """Our chunked head (logits at supervised positions only) and Liger's fused linear CE give the same
    per-token losses and gradients on the same hidden states."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    model = _model(tiny_model_dir, "sdpa_varlen", "cuda")
    batch = move_batch(collate(_samples([30, 50, 20]), "padfree", 0, attn_implementation="sdpa_varlen"),
                       torch.device("cuda"))
    ours = supervised_token_nll(model, batch, chunk_size=16)
    head = model.get_output_embeddings().weight
    hidden = model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 use_cache=False).last_hidden_state[batch["target_pos"]]
    liger = LigerFusedLinearCrossEntropyLoss(reduction="none")(head, hidden, batch["targets"])
    assert torch.allclose(ours, liger, rtol=1e-4, atol=1e-5)
    g_ours = torch.autograd.grad(ours.sum(), head, retain_graph=True)[0]
    g_liger = torch.autograd.grad(liger.sum(), head)[0]
    assert torch.allclose(g_ours, g_liger, rtol=1e-3, atol=1e-5)
