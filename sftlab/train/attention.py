"""Attention isolation for padding-free and packed batches (docs/DESIGN.md §3).

When several samples share a row, attention must never cross from one sample into another. How that is
achieved depends on the attention backend, so each backend gets one *layout*:

    sdpa                  "bool_mask"   a 4-D boolean block-diagonal causal mask [rows, 1, L, L] (True = attend)
    eager                 "float_mask"  the same mask as an additive float mask (0 / dtype min): eager attention
                                        adds the mask to the scores, so a boolean mask would silently leak
    flash_attention_2/3/4 "varlen"      one row, position_ids restarting at 0 per sample, no mask, plus
                                        cu_seq_lens / max_length from the collator (flash_attn_varlen_func)
    sdpa_varlen           "varlen"      the same batch; sftlab's kernel (below): one causal sdpa call per sample
                                        span, so a row costs Σ len² instead of T² (any device)
    flex_attention        "doc_ids"     position_ids restarting per sample, no mask: transformers builds a
                                        document BlockMask from them (CUDA only here)

`auto` (the default) picks per batching mode and device (`resolve_attention`): pad → sdpa; padfree / pack →
flash_attention_2 on CUDA when flash-attn is installed, else flex_attention on CUDA, else sdpa_varlen.
Naming a backend overrides it (`sdpa` keeps the dense block mask).

Position ids alone do NOT isolate samples under sdpa / eager (checked with transformers 5.x: the logits of a
packed row differ from separate runs by ~0.5), so any backend outside this table is refused with a UserError
instead of training on contaminated attention. `batching.verify_isolation` checks it numerically on the real
model.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from sftlab.errors import UserError

LAYOUTS = {
    "sdpa": "bool_mask",
    "eager": "float_mask",
    "flash_attention_2": "varlen",
    "flash_attention_3": "varlen",
    "flash_attention_4": "varlen",
    "flex_attention": "doc_ids",
    "sdpa_varlen": "varlen",
}
VARLEN_KERNEL = "sdpa_varlen"
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface",
                   "flash_attention_4": "flash_attn"}
FIX = ("set model.attn_implementation to 'auto' or 'sdpa_varlen' (per-sample sdpa, any device), 'sdpa' (4-D block "
        "mask) or use data.batching: pad")


# ------------------------------------------------------------------------------------- the Σ len² kernel


def _span_bounds(query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> list[list[int]] | None:
    """Per row, the boundaries [0, b1, ..., L] of its samples; None when the call is not a training-shaped
    self-attention (cached decoding, cross lengths), which then goes to plain sdpa unchanged."""
    length = query.shape[2]
    if key.shape[2] != length:
        return None
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and query.shape[0] == 1:
        return [cu.tolist()]  # from the collator: no search per layer
    pos = kwargs.get("position_ids")
    if pos is None:
        return None
    pos = pos.expand(query.shape[0], -1)
    return [(row == 0).nonzero().flatten().tolist() + [length] for row in pos]


def sdpa_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention restricted to each sample of a padding-free row: one sdpa call per sample span.

    A row of T tokens holding samples of lengths n_1..n_k costs Σ n_j² instead of the dense block mask's T²,
    and no [T, T] mask is ever built. A row with one sample is exactly one causal sdpa call (the plain
    kernel). With a padding mask (pad batching, generation) it is transformers' sdpa unchanged.
    Registered in transformers' AttentionInterface as `sdpa_varlen` (`register_attention_kernels`).
    """
    # lazy: transformers takes seconds to import
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = None if attention_mask is not None else _span_bounds(query, key, kwargs)
    if bounds is None or all(len(b) <= 2 for b in bounds):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=True if attention_mask is None else None)
    rows = []
    # split (not slicing): its backward is one concatenation, not a full-size zero tensor per span
    for b, q, k, v in zip(bounds, query.split(1), key.split(1), value.split(1), strict=True):
        lens = [e - s for s, e in zip(b[:-1], b[1:], strict=False) if e > s]
        parts = [sdpa_attention_forward(module, qs, ks, vs, None, dropout=dropout, scaling=scaling, is_causal=True)[0]
                 for qs, ks, vs in zip(q.split(lens, 2), k.split(lens, 2), v.split(lens, 2), strict=True)]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def _sdpa_varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """Mask builder for `sdpa_varlen`: no mask at all for unpadded training rows (the kernel isolates samples
    from the spans), transformers' sdpa mask otherwise (padding, KV cache)."""
    from transformers.masking_utils import sdpa_mask  # lazy: transformers takes seconds to import

    q_length, kv_length = kwargs.get("q_length"), kwargs.get("kv_length")
    if attention_mask is None and q_length == kv_length and not kwargs.get("q_offset"):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_attention_kernels() -> None:
    """Make `sdpa_varlen` a name transformers accepts (from_pretrained, set_attn_implementation). Idempotent."""
    # lazy: transformers takes seconds to import
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_KERNEL, sdpa_varlen_attention)
    AttentionMaskInterface.register(VARLEN_KERNEL, _sdpa_varlen_mask)


def flash_available(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def flex_available(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda" and importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def resolve_attention(requested: str | None, mode: str, device: torch.device | str) -> str:
    """The backend to load for `model.attn_implementation` (`auto` or a name) under a batching mode.

    auto: pad → sdpa (a padding mask, nothing to isolate); padfree / pack → flash_attention_2 on CUDA with
    flash-attn installed, else flex_attention on CUDA, else sdpa_varlen (Σ len², any device). A named
    backend is kept as it is (the override); `sdpa_varlen` under pad is sdpa (same kernel, padding mask).
    """
    impl = requested or "auto"
    if impl == "auto":
        if mode == "pad":
            return "sdpa"
        if flash_available(device):
            return "flash_attention_2"
        if flex_available(device):
            return "flex_attention"
        return VARLEN_KERNEL
    if impl == VARLEN_KERNEL and mode == "pad":
        return "sdpa"
    return impl


def resolve_batching(batching: str, attn_implementation: str, device: torch.device) -> str:
    """`data.batching` auto -> padfree where it is measured faster with exact isolation, else pad
    (docs/DESIGN.md §3); a named mode is kept."""
    if batching != "auto":
        return batching
    attn = attn_implementation
    if attn in ("auto", VARLEN_KERNEL):  # isolating kernels on every device (resolve_attention)
        return "padfree"
    if device.type == "cpu" and attn in ("sdpa", "eager"):
        return "padfree"
    if device.type == "cuda" and (attn.startswith("flash_attention") or attn == "flex_attention"):
        return "padfree"
    return "pad"


def attention_layout(attn_implementation: str | None) -> str:
    """The isolation layout of a backend (see the module docstring); UserError for backends that cannot isolate.
    An unresolved `auto` is plain sdpa here, as in `load_model` (the training loop resolves it first)."""
    impl = attn_implementation or "sdpa"
    impl = "sdpa" if impl == "auto" else impl
    if impl not in LAYOUTS:
        raise UserError(f"attention backend {impl!r} cannot keep packed samples apart (padfree/pack would let "
                        f"attention cross samples); {FIX}")
    return LAYOUTS[impl]


def check_attention_isolation(attn_implementation: str | None, mode: str, device: torch.device | str) -> str | None:
    """Start-up check: can this backend on this device isolate the samples of a padfree / packed row?

    Returns the layout to pass to `collate` (None for `pad`, which needs no isolation), or raises a
    UserError naming the backend and the fix. Cheap: looks at the backend name, the device and the
    installed packages only; `batching.verify_isolation` is the numerical check.
    """
    if mode == "pad":
        return None
    impl = attn_implementation or "sdpa"
    layout = attention_layout(impl)
    dev = torch.device(device)
    if impl == VARLEN_KERNEL:
        register_attention_kernels()
        return layout
    if layout == "varlen":
        pkg = _FLASH_PACKAGES[impl]
        if dev.type != "cuda" or importlib.util.find_spec(pkg) is None:
            raise UserError(f"attention backend {impl!r} needs CUDA and the {pkg!r} package for {mode} batching "
                            f"(device is {dev.type}, {pkg} {'found' if importlib.util.find_spec(pkg) else 'missing'}); "
                            f"{FIX}")
    if layout == "doc_ids":
        from transformers import masking_utils  # lazy: transformers takes seconds to import

        if dev.type != "cuda":
            raise UserError(f"attention backend 'flex_attention' isolates {mode} rows with a document mask on CUDA "
                            f"only (device is {dev.type}); {FIX}")
        if not hasattr(masking_utils, "find_packed_sequence_indices"):
            raise UserError("this transformers version does not build document masks from position_ids for "
                            f"flex_attention; {FIX}")
    return layout


def block_causal_mask(doc: torch.Tensor, layout: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[rows, 1, L, L] causal mask that only lets a token attend to earlier tokens of its own document.

    doc: [rows, L] document id of each token (padding forms its own document, so no query row is fully
    masked: a fully masked row gives NaN attention, and NaN * 0 in backward would poison the gradients).
    """
    length = doc.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril_()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal
    mask = mask[:, None]
    if layout == "bool_mask":
        return mask
    if layout == "float_mask":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    raise ValueError(f"layout {layout!r} uses no 4-D mask")
