"""RMSNorm and rotary embeddings as single autograd ops (CPU training, fp32 activations).

transformers writes both as chains of small tensor ops (RMSNorm: pow, mean, add, rsqrt, mul, mul; rotary: two
slices, neg, cat, two muls, add). Autograd then records every one of them, and their backward adds a full-size
zero tensor per slice and a gradient sum per branch. On a CPU these passes over memory are most of the step's time
outside matmuls and attention. The two functions here compute the same values with about half the passes and save
only what their backward needs:

    RMSNorm   y = x * r * w,  r = 1 / sqrt(mean(x²) + eps)
              dx = r * (g·w - x̂ * mean(g·w * x̂)),  dw = Σ_tokens g * x̂        (x̂ = x * r)
    rotary    y = x * cos + rotate_half(x) * sin,  rotate_half(x) = [-x₂, x₁]
              dx = g * cos + [g₂·sin₂, -g₁·sin₁]                              (the transposed rotation)

Measured on one core of the project's Xeon (benchmarks/README.md): per decoder layer at 1,000 tokens, hidden 512,
forward + backward, RMSNorm 4.5 -> 2.3 ms and rotary 5.6 -> 2.4 ms.

`install_fused_ops(model)` swaps them in only where they are the same function: each RMSNorm class and each
modeling module's `apply_rotary_pos_emb` is first compared with the original on random inputs (outputs and
gradients), so a variant formula (Gemma's 1 + w, partial or interleaved rotary) keeps its own code. At run time
they handle fp32 tensors of the standard shapes and hand anything else (bf16 activations, a KV cache's
unsqueeze_dim, partial rotary) to the original function.
"""

from __future__ import annotations

import copy
import inspect
import sys
import types
from typing import Any

import torch

# ------------------------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        x_hat = x * r
        ctx.save_for_backward(x_hat, weight, r)
        return x_hat * weight

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x_hat, weight, r = ctx.saved_tensors
        grad_weight = (grad * x_hat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            g_hat = grad * weight
            mean = torch.linalg.vecdot(g_hat, x_hat, dim=-1).unsqueeze(-1).div_(x_hat.shape[-1])
            grad_x = torch.addcmul(g_hat, x_hat, mean, value=-1).mul_(r)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the last dim, as one autograd op."""
    return _RMSNorm.apply(x, weight, eps)


def _fused_rms_norm_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The replacement forward of an HF RMSNorm module (bound per instance by `install_fused_ops`)."""
    if hidden_states.dtype == torch.float32 and self.weight.dtype == torch.float32:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return type(self).forward(self, hidden_states)


# ------------------------------------------------------------------------------------------- rotary


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        out = x * cos
        out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1)
        out[..., h:].addcmul_(x[..., :h], sin[..., h:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        h = grad.shape[-1] // 2
        grad_x = grad * cos
        grad_x[..., h:].addcmul_(grad[..., :h], sin[..., :h], value=-1)
        grad_x[..., :h].addcmul_(grad[..., h:], sin[..., h:])
        return grad_x, None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (the half-split rotary of Llama / Qwen / Mistral), as one autograd op."""
    return _Rotary.apply(x, cos, sin)


def _fused_rotary(original: Any) -> Any:
    """A drop-in `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)` that falls back to `original`."""

    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if (unsqueeze_dim != 1 or cos.dim() != 3 or cos.shape[-1] != q.shape[-1] or q.shape[-1] % 2
                or not all(t.dtype == torch.float32 for t in (q, k, cos, sin))):
            return original(q, k, cos, sin, unsqueeze_dim)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return rotate(q, cos, sin), rotate(k, cos, sin)

    apply_rotary_pos_emb.sftlab_original = original
    return apply_rotary_pos_emb


# ------------------------------------------------------------------------------------------- install


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _norm_matches(module: torch.nn.Module) -> bool:
    """Does the module's own forward compute exactly `rms_norm` (outputs and gradients, random input)?"""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not isinstance(eps, float):
        return False
    gen = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(module).to("cpu", torch.float32)
    with torch.no_grad():
        probe.weight.copy_(1 + 0.5 * torch.randn(weight.shape[0], generator=gen))
    probe.weight.requires_grad_(True)
    x = torch.randn(2, 3, weight.shape[0], generator=gen)
    try:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = probe(xa), rms_norm(xb, probe.weight, eps)
        g = torch.randn(ya.shape, generator=gen)
        ga = torch.autograd.grad(ya, (xa, probe.weight), g)
        gb = torch.autograd.grad(yb, (xb, probe.weight), g)
    except Exception:  # noqa: BLE001 - a forward with another signature is simply not ours to replace
        return False
    return _same(ya, yb) and all(_same(a, b) for a, b in zip(ga, gb, strict=True))


def _rotary_matches(fn: Any, head_dim: int) -> bool:
    """Does `fn(q, k, cos, sin, unsqueeze_dim=1)` compute the half-split rotary (outputs and gradients, random
    inputs)? The signature must be transformers' current one, so every call maps onto the replacement."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    if params != ["q", "k", "cos", "sin", "unsqueeze_dim"]:
        return False
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 5, head_dim, generator=gen, requires_grad=True) for _ in range(2))
    cos, sin = torch.randn(2, 5, head_dim, generator=gen), torch.randn(2, 5, head_dim, generator=gen)
    try:
        a, b = fn(q, k, cos, sin)
        c, d = rotate(q, cos.unsqueeze(1), sin.unsqueeze(1)), rotate(k, cos.unsqueeze(1), sin.unsqueeze(1))
        g = torch.randn(a.shape, generator=gen)
        grads_ref = torch.autograd.grad((a, b), (q, k), (g, g))
        grads_new = torch.autograd.grad((c, d), (q, k), (g, g))
    except Exception:  # noqa: BLE001 - another signature or shape convention: keep the original
        return False
    return _same(a, c) and _same(b, d) and all(_same(x, y) for x, y in zip(grads_ref, grads_new, strict=True))


def install_fused_ops(model: torch.nn.Module, skipped: list[str] | None = None) -> list[str]:
    """Swap in `rms_norm` for the model's RMSNorm modules and `rotate` for its modeling module's
    `apply_rotary_pos_emb`, each only after it matched the original numerically. Returns what was replaced,
    e.g. ["LlamaRMSNorm x17", "modeling_llama.apply_rotary_pos_emb"]. Idempotent. What was looked at and left
    alone is appended to `skipped` with the reason (the run log prints it: a transformers release that changes
    its code must not cost the fused op without a word).

    The norms are replaced per module instance (other models in the process keep theirs); the rotary function
    is a module global of transformers' modeling file, so it is replaced there, for every model of that
    architecture in the process, by a function that computes the same values (and falls back to the
    original outside fp32 / the standard shapes)."""
    skipped = [] if skipped is None else skipped
    return _install_norms(model, skipped) + _install_rotary(model, skipped)


def _install_norms(model: torch.nn.Module, skipped: list[str]) -> list[str]:
    matches: dict[type, bool] = {}
    counts: dict[str, int] = {}
    for module in model.modules():
        cls, own = type(module), module.__dict__.get("forward")
        if own is None and cls.__name__.endswith("RMSNorm"):
            if cls not in matches:
                matches[cls] = _norm_matches(module)
                if not matches[cls]:
                    skipped.append(f"{cls.__name__} (not the standard x * rsqrt(mean(x²) + eps) * w)")
            if matches[cls]:
                module.forward = own = types.MethodType(_fused_rms_norm_forward, module)
        if getattr(own, "__func__", None) is _fused_rms_norm_forward:
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return [f"{name} x{n}" for name, n in counts.items()]


def unwrap_kernel_func(fn: Any) -> Any:
    """The plain function behind a `kernels` hub wrapper. transformers >= 5.25 installs the `kernels` package,
    whose `@use_kernel_forward_from_hub` turns `apply_rotary_pos_emb` into an `nn.Module` instance that calls
    the original function (kept in its forward's closure as `func`) unless a hub kernel was activated."""
    if not isinstance(fn, torch.nn.Module):
        return fn
    try:
        inner = inspect.getclosurevars(type(fn).forward).nonlocals.get("func")
    except (TypeError, ValueError):
        return fn
    return inner if inspect.isfunction(inner) else fn


def _install_rotary(model: torch.nn.Module, skipped: list[str]) -> list[str]:
    head_dims: dict[str, int] = {}  # modeling module -> head_dim of its attention
    for module in model.modules():
        head_dim = getattr(module, "head_dim", None)
        if type(module).__name__.endswith("Attention") and isinstance(head_dim, int) and head_dim % 2 == 0:
            head_dims.setdefault(type(module).__module__, head_dim)
    replaced = []
    for mod_name, head_dim in head_dims.items():
        mod = sys.modules.get(mod_name)
        fn = getattr(mod, "apply_rotary_pos_emb", None)
        name = f"{mod_name.rsplit('.', 1)[-1]}.apply_rotary_pos_emb"
        if fn is None:
            continue
        if not hasattr(fn, "sftlab_original"):  # else installed before (another model of this architecture)
            if not _rotary_matches(unwrap_kernel_func(fn), head_dim):
                skipped.append(f"{name} (not the half-split rotary with signature (q, k, cos, sin, unsqueeze_dim))")
                continue
            mod.apply_rotary_pos_emb = _fused_rotary(fn)
        replaced.append(name)
    return replaced


def use_fused_ops(setting: str, device: torch.device) -> bool:
    """model.fused_ops: auto = CPU only (measured there; on CUDA, Liger or torch.compile fuse these ops)."""
    return setting == "on" or (setting == "auto" and device.type == "cpu")
