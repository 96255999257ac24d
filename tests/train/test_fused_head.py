"""The training loss head (`supervised_token_loss`): gradient computed chunk by chunk during forward. It must
give the gradients of the plain differentiable head (`micro_batch_loss(supervised_token_nll(...))`) for every
chunk size, tied and untied heads, a logit transform (soft-capping), a frozen head (LoRA), bf16 autocast, and
never hold more than one chunk of logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sftlab.train import loss as loss_mod
from sftlab.train.loss import (
    chunk_rows,
    micro_batch_loss,
    supervised_token_loss,
    supervised_token_nll,
    token_loss_scale,
)

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


def _model(tied: bool = False, softcap: float | None = None, vocab: int = 300):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    if softcap:
        cfg.final_logit_softcapping = softcap  # applied by sftlab's head transform (Gemma-2 style)
    return AutoModelForCausalLM.from_config(cfg).train()


def _batch(vocab: int = 300, rows: int = 3, length: int = 25) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    r = torch.arange(rows).repeat_interleave(length - 1)
    c = torch.arange(length - 1).repeat(rows)
    keep = torch.rand(len(r), generator=gen) < 0.7  # a supervised subset
    r, c = r[keep], c[keep]
    return {"input_ids": ids, "position_ids": torch.arange(length).expand(rows, length), "target_pos": (r, c),
            "targets": ids[r, c + 1], "target_coef": torch.rand(len(r), generator=gen), "target_sample": r}


def _grads(model, fn) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return float(loss), [torch.zeros(1) if p.grad is None else p.grad.clone() for p in model.parameters()]


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).norm() / max(float(x.norm()), 1e-30)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [None, 1, 7, 10_000])
def test_fused_head_equals_the_plain_head(tied, softcap, chunk):
    model, b = _model(tied, softcap), _batch()
    ref_loss, ref = _grads(model, lambda: micro_batch_loss(supervised_token_nll(model, b, chunk), b, 4.0))
    loss, got = _grads(model, lambda: supervised_token_loss(model, b, token_loss_scale(b, 4.0), chunk)[0])
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert _max_rel(ref, got) <= 1e-5
    _, nll = supervised_token_loss(model, b, token_loss_scale(b, 4.0), chunk)
    assert not nll.requires_grad
    assert torch.allclose(nll, supervised_token_nll(model, b).detach(), rtol=1e-6, atol=1e-6)


def test_fused_head_with_a_frozen_head_and_a_scaled_backward():
    """LoRA freezes the head: only the hidden states get a gradient; a backward scaled by k scales it by k."""
    model, b = _model(), _batch()
    model.get_output_embeddings().weight.requires_grad_(False)
    _, ref = _grads(model, lambda: 3.0 * micro_batch_loss(supervised_token_nll(model, b), b, 2.0))
    _, got = _grads(model, lambda: 3.0 * supervised_token_loss(model, b, token_loss_scale(b, 2.0))[0])
    assert model.get_output_embeddings().weight.grad is None
    assert _max_rel(ref, got) <= 1e-5


def test_fused_head_under_bf16_autocast_is_at_least_as_close_to_fp32():
    """bf16: the chunked head accumulates the head-weight gradient in fp32, so it is no further from the fp32
    gradient than the plain bf16 head is."""
    model, b = _model(), _batch()
    _, exact = _grads(model, lambda: micro_batch_loss(supervised_token_nll(model, b), b, 4.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain = _grads(model, lambda: micro_batch_loss(supervised_token_nll(model, b), b, 4.0))
        _, fused = _grads(model, lambda: supervised_token_loss(model, b, token_loss_scale(b, 4.0), 7)[0])
    assert _max_rel(exact, fused) <= max(1.05 * _max_rel(exact, plain), 1e-3)


def test_fused_head_never_holds_more_than_one_chunk_of_logits(monkeypatch):
    seen: list[tuple[int, int]] = []
    real = loss_mod._chunk_logits_grad

    def spy(z, *a, **k):
        seen.append(tuple(z.shape))
        return real(z, *a, **k)

    monkeypatch.setattr(loss_mod, "_chunk_logits_grad", spy)
    model, b = _model(), _batch()
    supervised_token_loss(model, b, token_loss_scale(b, 1.0), 8)[0].backward()
    n = int(b["targets"].numel())
    assert max(r for r, _ in seen) == 8 and sum(r for r, _ in seen) == n  # every supervised position once, 8 at a time
    assert {v for _, v in seen} == {300}


def test_auto_chunk_follows_the_vocabulary():
    assert chunk_rows(None, 151_936) == 128  # 110 rows would be 64 MiB of fp32 logits; 128 is the floor
    assert chunk_rows(None, 2048) == 8192
    assert chunk_rows(512, 151_936) == 512
    assert chunk_rows(None, 151_936, "cuda") == 441  # 256 MiB of fp32 logits on a GPU


def test_heap_trim_runs_before_the_embedding_backward_and_changes_no_gradient(monkeypatch):
    """`trim_heap_before_embedding_grad` (CPU peak RSS) calls malloc_trim once per backward, at the input
    embedding's output gradient (before its dense [vocab, hidden] gradient is made), and leaves every gradient
    as it was; a small embedding or a frozen one (LoRA) gets no hook."""
    from sftlab.train import model as model_mod

    calls = []
    monkeypatch.setattr(model_mod, "_malloc_trim", lambda: calls.append)
    model, b = _model(tied=True), _batch()
    assert not model_mod.trim_heap_before_embedding_grad(model)  # a 300 x 32 gradient never sets the peak
    monkeypatch.setattr(model_mod, "EMBED_GRAD_TRIM_MIN_BYTES", 0)
    fn = lambda: supervised_token_loss(model, b, token_loss_scale(b, 4.0))[0]  # noqa: E731
    _, ref = _grads(model, fn)
    emb_grad_seen = []
    model.get_input_embeddings().weight.register_hook(lambda g: emb_grad_seen.append(len(calls)))
    assert model_mod.trim_heap_before_embedding_grad(model)
    _, got = _grads(model, fn)
    assert calls == [0] and emb_grad_seen[-1] == 1  # trimmed once, before the embedding's weight gradient
    assert _max_rel(ref, got) == 0.0
    with torch.no_grad():
        model(b["input_ids"])
    assert calls == [0]  # no backward, no trim
    frozen = _model()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not model_mod.trim_heap_before_embedding_grad(frozen)


def test_lora_frozen_base_in_bf16_gives_the_same_loss_and_gradients_under_autocast(tiny_model_dir):
    """`cast_frozen_linear_weights`: LoRA's frozen Linear weights stored in bf16 (half the base's memory) give
    bit-identical loss and LoRA gradients under bf16 autocast, since autocast rounded the fp32 weights to the
    same bf16 values; trainable weights, the embedding and norms stay fp32."""
    from transformers import AutoTokenizer

    from sftlab.config import ModelConfig
    from sftlab.train.model import autocast_context, frozen_base_dtype, load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="bf16", lora={"r": 4, "alpha": 8})
    assert frozen_base_dtype(cfg) == torch.bfloat16 and frozen_base_dtype(cfg, "fsdp") is None
    assert frozen_base_dtype(cfg.model_copy(update={"dtype": "fp32"})) is None
    cpu = torch.device("cpu")
    results = []
    for frozen in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = load_model(cfg, tok, cpu, frozen_dtype=frozen).train()
        b = _batch(vocab=len(tok))
        with autocast_context("bf16", cpu):
            loss = supervised_token_loss(model, b, token_loss_scale(b, 4.0))[0]
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert results[0][0] == results[1][0]
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    assert all(torch.equal(results[0][1][n], results[1][1][n]) for n in results[0][1])
    base = [n for n in dtypes if "base_layer.weight" in n]
    assert base and all(dtypes[n] == torch.bfloat16 for n in base)
    assert dtypes[[n for n in dtypes if "lm_head" in n][0]] == torch.bfloat16  # untied head: frozen Linear too
    assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n or "norm" in n or "embed_tokens" in n)


def test_lora_half_frozen_base_under_ddp(tiny_model_dir, tmp_path):
    """DDP (one gloo rank) accepts LoRA's mixed-dtype parameters (bf16 frozen base, fp32 adapters) and reduces
    only the trainable fp32 gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    from sftlab.config import ModelConfig
    from sftlab.train.loss import SupervisedTokenNLL
    from sftlab.train.model import autocast_context, load_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="bf16", lora={"r": 4, "alpha": 8})
    model = load_model(cfg, tok, torch.device("cpu"), frozen_dtype=torch.bfloat16).train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        engine = DistributedDataParallel(SupervisedTokenNLL(model))
        b = _batch(vocab=len(tok))
        with autocast_context("bf16", torch.device("cpu")):
            loss, _ = engine(b, token_loss_scale(b, 4.0))
        loss.backward()
    finally:
        dist.destroy_process_group()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
