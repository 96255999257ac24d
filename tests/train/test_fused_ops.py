"""RMSNorm and rotary as single autograd ops (sftlab/train/fused_ops.py): the same values and gradients as
transformers' own code, swapped in only where the formula matches, and the loss contract still holds."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

from sftlab.train.fused_ops import install_fused_ops, rms_norm, rotate, use_fused_ops

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


@pytest.fixture(autouse=True)
def _restore_rotary(monkeypatch):
    """install_fused_ops replaces a module global of transformers: put the original back after each test."""
    for mod in (modeling_llama, modeling_qwen2):
        monkeypatch.setattr(mod, "apply_rotary_pos_emb", mod.apply_rotary_pos_emb)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).norm().item() <= tol * b.norm().item() + 1e-12


@pytest.mark.parametrize("norm_cls", [modeling_llama.LlamaRMSNorm, modeling_qwen2.Qwen2RMSNorm])
def test_rms_norm_equals_transformers_values_and_gradients(norm_cls):
    torch.manual_seed(0)
    norm = norm_cls(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
    x = torch.randn(2, 7, 64) * 3
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = norm(xa), rms_norm(xb, norm.weight, norm.variance_epsilon)
    assert _close(yb, ya)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, (xa, norm.weight), g)
    gb = torch.autograd.grad(yb, (xb, norm.weight), g)
    assert _close(gb[0], ga[0]) and _close(gb[1], ga[1])


def test_rotate_equals_transformers_apply_rotary_pos_emb():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    k = torch.randn(2, 2, 9, 16, requires_grad=True)  # grouped-query: fewer key heads
    cos, sin = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    qa, ka = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    qb, kb = rotate(q, cos.unsqueeze(1), sin.unsqueeze(1)), rotate(k, cos.unsqueeze(1), sin.unsqueeze(1))
    assert _close(qb, qa) and _close(kb, ka)
    gq, gk = torch.randn_like(qa), torch.randn_like(ka)
    ref = torch.autograd.grad((qa, ka), (q, k), (gq, gk))
    new = torch.autograd.grad((qb, kb), (q, k), (gq, gk))
    assert _close(new[0], ref[0]) and _close(new[1], ref[1])


def _grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_install_keeps_the_model_function_and_is_idempotent(tiny_model_dir, arch):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "llama":
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        expected = ["LlamaRMSNorm x5", "modeling_llama.apply_rotary_pos_emb"]
    else:  # q/k/v bias, 2 key-value heads
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=128))
        expected = ["Qwen2RMSNorm x5", "modeling_qwen2.apply_rotary_pos_emb"]
    with torch.no_grad():  # norms initialised to 1 would hide a wrong weight gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ids = torch.randint(0, 250, (2, 33))
    logits_ref, grads_ref = _grads(model, ids)
    assert install_fused_ops(model) == expected
    assert install_fused_ops(model) == expected  # a second call changes nothing
    logits, grads = _grads(model, ids)
    assert _close(logits, logits_ref)
    for name, g in grads.items():
        assert _close(g, grads_ref[name]), name


def test_a_different_norm_formula_is_left_alone():
    """Gemma-style 1 + w: not the same function, so its own forward stays."""

    class OffsetRMSNorm(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(dim))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)

    model = torch.nn.Sequential(OffsetRMSNorm(8))
    assert install_fused_ops(model) == []
    assert "forward" not in model[0].__dict__


def test_other_dtypes_and_shapes_fall_back_to_the_original(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    original = modeling_llama.apply_rotary_pos_emb
    install_fused_ops(model)
    norm = model.model.norm
    x = torch.randn(1, 5, norm.weight.shape[0], dtype=torch.bfloat16)
    assert torch.equal(norm(x), type(norm).forward(norm, x))  # bf16 activations: transformers' own code
    q, k = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16), torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
    cos, sin = torch.randn(1, 5, 8, dtype=torch.bfloat16), torch.randn(1, 5, 8, dtype=torch.bfloat16)
    for a, b in zip(modeling_llama.apply_rotary_pos_emb(q, k, cos, sin), original(q, k, cos, sin), strict=True):
        assert torch.equal(a, b)


def test_auto_means_cpu_only():
    assert use_fused_ops("auto", torch.device("cpu")) and not use_fused_ops("auto", torch.device("cuda"))
    assert use_fused_ops("on", torch.device("cuda")) and not use_fused_ops("off", torch.device("cpu"))


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_varlen"])
def test_loss_contract_holds_with_fused_ops(tiny_model_dir, tiny_tokenizer, kernel):
    """Every layout of the global batch, run with the fused ops, gives the unfused pad reference's loss and
    gradients (the same 1e-5 as tests/train/test_contract_layouts.py)."""
    from test_contract_layouts import assert_every_layout_matches_after

    assert_every_layout_matches_after(install_fused_ops, tiny_model_dir, tiny_tokenizer, kernel)


def test_estimator_counts_what_the_fused_norm_saves():
    """estimate_activations(fused_ops=True) follows the saved bytes down: each norm saves one tensor fewer."""
    from test_estimate import saved_bytes
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sftlab.train.batching import collate
    from sftlab.train.estimate import estimate_activations

    cfg = LlamaConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=256)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").train()
    ids = torch.randint(0, 512, (64,)).numpy()
    batch = collate([{"input_ids": ids, "labels": ids.copy(), "loss_coef": torch.ones(64).numpy(), "num_tokens": 64}],
                    "pad", 0, attn_implementation="sdpa", max_len=64)
    before = saved_bytes(model, batch, decoder_only=True)
    install_fused_ops(model)
    after = saved_bytes(model, batch, decoder_only=True)
    est_before = estimate_activations(cfg, 1, 64, False, "sdpa")
    est_after = estimate_activations(cfg, 1, 64, False, "sdpa", fused_ops=True)
    assert after < before and est_after < est_before
    assert abs(est_after / after - 1) <= 0.15, (est_after, after)
    assert abs((est_before - est_after) / (before - after) - 1) <= 0.1, (est_before - est_after, before - after)


def test_a_kernels_hub_wrapper_is_looked_through(monkeypatch):
    """transformers >= 5.25 ships with `kernels`, which turns apply_rotary_pos_emb into an nn.Module instance
    (its forward calls the original `func` from a closure). The fused op must still be installed behind it."""
    from sftlab.train.fused_ops import unwrap_kernel_func

    def wrap(func):
        class Func(torch.nn.Module):
            def forward(self, *args, **kwargs):
                return func(*args, **kwargs)
        return Func()

    original = modeling_llama.apply_rotary_pos_emb
    plain = unwrap_kernel_func(original)
    wrapped = wrap(plain)
    assert unwrap_kernel_func(wrapped) is plain
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", wrapped)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64))
    assert "modeling_llama.apply_rotary_pos_emb" in install_fused_ops(model)


def test_a_rotary_of_another_form_is_named_in_skipped(monkeypatch):
    """A modeling function that is not the half-split rotary keeps its code, and the run log can say so."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):
        return q * cos.unsqueeze(unsqueeze_dim), k * cos.unsqueeze(unsqueeze_dim)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", interleaved)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64))
    skipped: list[str] = []
    assert install_fused_ops(model, skipped) == ["LlamaRMSNorm x3"]
    assert any(s.startswith("modeling_llama.apply_rotary_pos_emb (") for s in skipped)
    assert modeling_llama.apply_rotary_pos_emb is interleaved
