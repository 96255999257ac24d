"""Memory and compute of a training run, before the run: bytes per device and model FLOPs per token.

The estimate describes the run `sftlab train` would do with the same config (docs/estimate.md):

    weights, gradients, optimizer states   counted exactly from the model instantiated on the meta device
                                           (config only, no weights), with the project's own LoRA set-up and
                                           FSDP's per-rank shard (dim 0 padded to a multiple of the world size)
    activations                            the tensors autograd saves for backward in one forward of one
                                           micro-batch, per decoder layer, for HF Llama-style blocks (Llama,
                                           Qwen2, Mistral) and the attention kernel that runs (attention_saves:
                                           sdpa's CPU flash / CUDA flash / memory-efficient / math kernels,
                                           sdpa_varlen, flex, flash-attn, eager)
    loss head                              sftlab's supervised-only chunked logits (sftlab/train/loss.py), and
                                           the full-logits head for comparison
    transients and margin                  the recompute of one layer under gradient checkpointing, bf16 weight
                                           copies made by autocast, FSDP's gathered layers, DDP's buckets,
                                           AdamW's foreach temporaries, and a fragmentation/workspace margin

Activation formulas were derived from, and are tested against, the bytes saved for backward counted with
`torch.autograd.graph.saved_tensors_hooks` (tests/train/test_estimate.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.config import FsdpConfig, resolve_batch_sizes
from sftlab.data.render import load_tokenizer
from sftlab.train.attention import resolve_attention, resolve_batching
from sftlab.train.dataset import load_split
from sftlab.train.fused_ops import use_fused_ops
from sftlab.train.loss import chunk_rows
from sftlab.train.model import device_of, load_model_config, meta_model, resolve_precision

GIB = 1024**3
MARGIN = 0.10  # fragmentation / workspace margin on the transient part (activations, loss head, temporaries)
QLORA_BLOCK = 64  # bitsandbytes nf4 block size: one fp32 absmax per 64 weights (no double quantisation)

# Usable memory (GiB, what torch.cuda.mem_get_info reports as total) of common accelerators.
GPU_MEMORY_GIB = {
    "h200-141gb": 139.8, "h100-80gb": 79.1, "h100-94gb": 93.1, "a100-80gb": 79.1, "a100-40gb": 39.4,
    "l40s-48gb": 44.4, "a6000-48gb": 47.5, "a10g-24gb": 22.0, "l4-24gb": 22.0, "rtx4090-24gb": 23.6,
    "rtx3090-24gb": 23.7, "v100-32gb": 31.7, "v100-16gb": 15.8, "t4-16gb": 14.6, "mi300x-192gb": 191.5,
    "b200-180gb": 178.4,
}

# Dense bf16/fp16 tensor-core peak FLOP/s per device (vendor datasheets, without sparsity), matched by
# substring of torch.cuda.get_device_name(); the first match wins, so specific names come first.
PEAK_BF16_FLOPS = [
    ("gh200", 989e12), ("h200", 989e12), ("h100 pcie", 756e12), ("h100", 989e12), ("h800", 989e12),
    ("b200", 2250e12), ("a100", 312e12), ("a800", 312e12), ("l40s", 362e12), ("l40", 181e12),
    ("a6000", 155e12), ("a10g", 70e12), ("a10", 125e12), ("l4", 121e12), ("4090", 165e12), ("3090", 71e12),
    ("v100", 125e12), ("t4", 65e12), ("mi300x", 1307e12), ("mi250", 362e12),
]


# ----------------------------------------------------------------------------------------- model shape


@dataclass
class Shape:
    """What the formulas need from a decoder config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    attention_dropout: float = 0.0

    @classmethod
    def of(cls, config: Any) -> Shape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   intermediate=config.intermediate_size, vocab=config.vocab_size,
                   attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0))


# ----------------------------------------------------------------------------------------- activations


def attention_mask_kind(attn_implementation: str, batching: str, padded: bool) -> str | None:
    """The 4-D attention mask a micro-batch carries: "bool" (sdpa) or "float" (eager) [rows, 1, L, L] when
    samples share a row (padfree, pack) or rows are padded; None for flash / flex / sdpa_varlen (position ids
    or sample boundaries only) and for unpadded rows (causal attention needs no mask)."""
    if attn_implementation not in ("sdpa", "eager"):
        return None
    if batching in ("padfree", "pack") or padded:
        return "bool" if attn_implementation == "sdpa" else "float"
    return None


def _layout(batch: int, length: int, batching: str) -> tuple[int, int]:
    """(rows, row length) of a micro-batch: padfree puts all its samples in one row."""
    return (1, batch * length) if batching == "padfree" else (batch, length)


@dataclass(frozen=True)
class AttentionSaves:
    """What one layer's attention keeps for backward (`attention_saves`), beyond the layer's own q/k/v
    projections' inputs. Measured per kernel with saved_tensors_hooks (tests/test_estimate.py)."""

    kernel: str  # flash | efficient | flash_cpu | math | eager | flex | flash_attention_2 (the one that runs)
    span: int  # keys each query sees at most: the row, or one sample's span under sdpa_varlen
    k_heads: int  # heads k is kept at: its own (the kernel groups them) or every query head (repeated copies)
    v_heads: int
    probs: bool  # keeps the [heads, row] probabilities per token (math, eager); else one log-sum-exp per head
    mask_copy: bool  # keeps its own copy of the [rows, 1, L, L] mask in the compute dtype (fused sdpa kernels)
    out_copy: bool  # o_proj reads a second copy of the output (sdpa_varlen's concatenation of the spans)


def sdpa_backend(device_type: str, masked: bool, half: bool, head_dim: int, dropout: float) -> str:
    """The kernel torch's scaled_dot_product_attention picks (torch 2.13's priority order and checks):
    CPU: its flash kernel (any dtype, with or without a mask) unless dropout > 0 (math);
    CUDA: flash (or cuDNN on H100/B200: the same saved set) for half precision without a mask, else the
    memory-efficient kernel (fp32, masks) where the head size is aligned, else math."""
    if device_type != "cuda":
        return "math" if dropout > 0 else "flash_cpu"
    if not masked and half and head_dim <= 256:
        return "flash"
    return "efficient" if head_dim % (8 if half else 4) == 0 else "math"


def attention_saves(attn_implementation: str, device_type: str, s: Shape, *, masked: bool, half: bool,
                    rows: int, row_len: int, span: int | None) -> AttentionSaves:
    """Which kernel runs for `attn_implementation` on the device, and what it keeps.

    `masked`: the micro-batch carries a 4-D mask (sdpa / eager layouts, `attention_mask_kind`). `span`: rows hold
    several samples of up to `span` tokens, which sdpa_varlen attends one by one (None: one sample per row).
    Grouped-query k/v: sdpa gets `enable_gqa` from transformers only without a mask, flex only when the head count
    is a power of two; otherwise transformers' repeat_kv expands them, a copy unless there is one k/v head (then
    the expansion is a view the fused kernels read as it is). eager's and math's batched matmuls copy an expanded
    single head too, unless the batch is one row (torch folds [rows, heads] into one batch dimension)."""
    nh, kvh = s.heads, s.kv_heads
    repeated = nh if 1 < kvh < nh else kvh  # what transformers' repeat_kv leaves in memory
    matmul = kvh if kvh == 1 and rows == 1 else nh  # what a batched matmul keeps of it
    if attn_implementation == "eager":
        return AttentionSaves("eager", row_len, matmul, matmul, probs=True, mask_copy=False, out_copy=False)
    if attn_implementation == "flex_attention":
        heads = kvh if nh & (nh - 1) == 0 else repeated
        return AttentionSaves("flex", row_len, heads, heads, probs=False, mask_copy=False, out_copy=False)
    if attn_implementation.startswith("flash_attention"):
        return AttentionSaves("flash_attention_2", row_len, kvh, kvh, probs=False, mask_copy=False, out_copy=False)
    per_span = attn_implementation == "sdpa_varlen" and span is not None
    masked = masked and not per_span
    kernel = sdpa_backend(device_type, masked, half, s.head_dim, s.attention_dropout)
    length = span if per_span else row_len
    if kernel == "math":  # k is scaled (a copy); without a mask math expands grouped k/v itself (copies)
        return AttentionSaves("math", length, nh, matmul if masked else nh, probs=True, mask_copy=False,
                              out_copy=False)
    heads = repeated if masked else kvh
    return AttentionSaves(kernel, length, heads, heads, probs=False, mask_copy=masked, out_copy=per_span)


def attention_bytes(a: AttentionSaves, s: Shape, tokens: int, e: int, device_type: str) -> int:
    """Saved bytes of one layer's attention call (`e`: bytes per element of the compute dtype).

    fused kernels (flash, efficient, flash_cpu, flex, flash-attn): q, k, v, the output (laid out as o_proj reads
    it: no copy) and an fp32 log-sum-exp per head; the memory-efficient kernel pads it to 32 positions and its
    mask copy to 16 columns. math: q, k, v upcast to fp32 (torch keeps half inputs in fp32 there), the fp32
    probabilities, o_proj's copy of the output. eager: q, k, v, fp32 probabilities (+ the half copy the matmul
    reads under autocast), o_proj's copy. Dropout adds the dropped probabilities and their mask."""
    q, nh, rows, span = s.heads * s.head_dim, s.heads, tokens // a.span, a.span  # rows: kernel calls
    kv = (a.k_heads + a.v_heads) * s.head_dim
    entries = tokens * nh * span  # probabilities: [rows, heads, L, L]
    dropout = s.attention_dropout > 0
    if a.kernel == "math":
        return tokens * (q + kv) * 4 + entries * (4 + (8 if dropout else 0)) + tokens * q * e
    if a.kernel == "eager":
        probs = entries * (4 + (e if e == 2 else 0) + (2 * e if dropout else 0))
        return tokens * (2 * q + kv) * e + probs
    out = tokens * q * e * (2 if a.out_copy else 1)
    efficient = a.kernel == "efficient" and device_type == "cuda"
    lse = rows * nh * (-(-span // 32) * 32 if efficient else span) * 4
    mask = rows * span * (-(-span // 16) * 16 if efficient else span) * e if a.mask_copy else 0
    return tokens * (q + kv) * e + out + lse + mask


def estimate_activations(model_config: Any, batch: int, length: int, gradient_checkpointing: bool = False,
                         attn_implementation: str = "sdpa", *, batching: str = "pad", dtype: str = "fp32",
                         padded: bool = False, fused_ops: bool = False, device_type: str = "cpu") -> int:
    """Bytes autograd saves for backward during the forward of one micro-batch of `batch` × `length` tokens,
    from the input embedding to the final norm (the loss head is `estimate_loss_head`; the batch's own
    tensors are `estimate_batch_inputs`).

    `batching`: pad keeps `batch` rows of `length`; padfree puts the micro-batch in one row of batch×length
    tokens (attention cost and mask then grow with the row). `padded`: pad mode with padding (a mask exists).
    `dtype` bf16/fp16 means fp32 weights under autocast, as sftlab trains: linear inputs are saved as half
    copies, norms and the residual stream stay fp32. `fused_ops` (`model.fused_ops`, train/fused_ops.py): each
    RMSNorm saves its normalised input and 1/rms, not its input as well. `device_type`: which attention kernel
    runs (`attention_saves`).
    """
    s = Shape.of(model_config)
    rows, row_len = _layout(batch, length, batching)
    tokens = rows * row_len
    final_norm = tokens * ((1 if fused_ops else 2) * s.hidden * 4 + 4)  # (input and) normalised input, 1/rms
    ids = tokens * 8  # input ids (embedding backward)
    if gradient_checkpointing:
        # Each checkpointed layer saves its input (the fp32 residual stream) and nothing else; rotary cos/sin
        # and the mask reach the layers as keyword arguments, held by the checkpoint (see estimate_batch_inputs).
        return s.layers * tokens * s.hidden * 4 + final_norm + ids
    rotary = 2 * tokens * s.head_dim * 4  # cos / sin, computed once, saved by every layer (one tensor each)
    attn = layer_attention(attn_implementation, device_type, s, batch, length, batching, padded, dtype)
    layer = layer_activation_bytes(s, tokens, attn, dtype in ("bf16", "fp16"), fused_ops, device_type)
    return s.layers * layer + final_norm + ids + rotary


def layer_attention(attn_implementation: str, device_type: str, s: Shape, batch: int, length: int,
                    batching: str, padded: bool, dtype: str) -> AttentionSaves:
    """`attention_saves` for a micro-batch of `batch` samples under `batching`."""
    masked = attention_mask_kind(attn_implementation, batching, padded) is not None
    rows, row_len = _layout(batch, length, batching)
    # padfree: the samples of the row; pack: rows of several samples, at most the row (an upper bound)
    span = length if batching == "padfree" and batch > 1 else row_len if batching == "pack" else None
    return attention_saves(attn_implementation, device_type, s, masked=masked, half=dtype in ("bf16", "fp16"),
                           rows=rows, row_len=row_len, span=span)


def layer_activation_bytes(s: Shape, tokens: int, attn: AttentionSaves, half: bool,
                           fused_ops: bool = False, device_type: str = "cpu") -> int:
    """Saved bytes of one decoder layer (HF Llama-style: RMSNorm, rotary attention, SwiGLU MLP)."""
    h, inter = s.hidden, s.intermediate
    e = 2 if half else 4
    # Two RMSNorms: input and normalised input (fp32; fused: the normalised input only), 1/rms; their output as
    # the projections keep it: fp32 once, or under autocast a half copy per projection that reads it (q, k, v
    # and gate, up: autocast caches casts of weights only).
    norms = tokens * (2 * ((1 if fused_ops else 2) * h * 4 + 4) + (5 * h * e if half else 2 * h * 4))
    # MLP: gate output (SiLU input), SiLU output, up output, their product (down_proj input).
    mlp = tokens * 4 * inter * e
    return norms + attention_bytes(attn, s, tokens, e, device_type) + mlp


def estimate_batch_inputs(model_config: Any, batch: int, length: int, gradient_checkpointing: bool = False,
                          attn_implementation: str = "sdpa", *, batching: str = "pad", padded: bool = False) -> int:
    """Bytes of the micro-batch's own tensors alive through the step: ids, positions and targets, the 4-D
    attention mask (bool for sdpa, fp32 for eager) and, under checkpointing, the rotary cos/sin held for the
    recompute (without checkpointing they are counted as saved activations)."""
    s = Shape.of(model_config)
    rows, row_len = _layout(batch, length, batching)
    tokens = rows * row_len
    out = tokens * 8 * 3  # input_ids, position_ids, 2-D mask or targets (int64)
    mask = attention_mask_kind(attn_implementation, batching, padded)
    if mask is not None:
        out += rows * row_len * row_len * (1 if mask == "bool" else 4)
    if gradient_checkpointing:
        out += 2 * tokens * s.head_dim * 4
    return out


def estimate_loss_head(model_config: Any, supervised_tokens: int, chunk_size: int | None = None,
                       dtype: str = "fp32", fused: bool = True, head_trainable: bool = True,
                       device_type: str = "cuda") -> dict[str, int]:
    """Bytes of sftlab's loss head (logits only at supervised positions) and of the usual full-logits head
    over all `supervised_tokens` for comparison.

    fused (training, `supervised_token_loss`): each chunk's logits become their gradient during forward, so
    the [N, H] hidden-state gradient and the fp32 [V, H] head-weight gradient are kept, plus one chunk's
    transients at the peak. Not fused (`supervised_token_nll`): one chunk's fp32 log-softmax is saved when
    N <= the chunk, else the chunks are recomputed in backward.
    saved: kept from forward to backward; peak: saved + the largest transient."""
    s = Shape.of(model_config)
    n, v, h = supervised_tokens, s.vocab, s.hidden
    e = 2 if dtype in ("bf16", "fp16") else 4
    chunk = chunk_rows(chunk_size, v, device_type)
    gathered = n * h * e  # hidden states at supervised positions (the half copy under autocast)
    index = n * 8 * 3  # rows, cols, targets
    if fused:
        c = min(chunk, n)
        saved = gathered + index + (v * h * 4 if head_trainable else 0)
        # + h's half copy; one chunk: fp32 logits overwritten in place by their gradient (bf16: half logits,
        # their fp32 copy, the half gradient = 8 bytes per entry)
        peak = saved + gathered + c * v * (8 if e == 2 else 4)
    elif n <= chunk:
        # one chunk, not checkpointed: the fp32 log-softmax output is saved
        saved = gathered + index + n * v * 4
        peak = saved + 2 * n * v * 4  # gradient of the log-softmax output and of the logits
    else:
        saved = gathered + index
        c = chunk
        peak = saved + c * v * 4 * 3 + (c * v * e if e == 2 else 0)  # one chunk recomputed: logits, lse, grad
    # Full logits (e.g. HF's default loss): [tokens, vocab] logits, their fp32 upcast and log-softmax output.
    full = n * v * e + (n * v * 4 if e == 2 else 0) + n * v * 4 + gathered + index
    return {"saved": saved, "peak": peak, "full_logits_peak": full + 2 * n * v * 4}


# ------------------------------------------------------------------------------------------ FLOPs


def matmul_params(model_config: Any) -> int:
    """Parameters that take part in matrix multiplies per token (all linear layers incl. the LM head; the
    input embedding is a lookup)."""
    s = Shape.of(model_config)
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer = s.hidden * (q + 2 * kv) + q * s.hidden + 3 * s.hidden * s.intermediate
    return s.layers * per_layer + s.hidden * s.vocab


def flops_per_token(model_config: Any, seq_len: int) -> float:
    """Model FLOPs of training one token: 6 N (forward + backward of the matmul parameters) plus attention
    12 · layers · heads · head_dim · seq_len (QKᵀ and AV, forward and backward, counted without the causal
    halving, as in the PaLM paper's MFU). Recomputation (gradient checkpointing) is not counted: MFU uses
    model FLOPs, not hardware FLOPs."""
    s = Shape.of(model_config)
    return 6.0 * matmul_params(model_config) + 12.0 * s.layers * s.heads * s.head_dim * seq_len


def peak_flops(device_name: str | None, dtype: str = "bf16") -> float | None:
    """Dense peak FLOP/s of a device by name (bf16/fp16 tensor cores; fp32 runs count half of that, TF32),
    or None when unknown (CPUs, unlisted GPUs): then no MFU is reported rather than a guessed one."""
    if not device_name:
        return None
    name = device_name.lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops if dtype in ("bf16", "fp16") else flops / 2
    return None


def mfu(tokens_per_s: float, model_config: Any, seq_len: int, device_name: str | None, dtype: str,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilisation of `tokens_per_s` (all ranks together) on `world_size` devices."""
    peak = peak_flops(device_name, dtype)
    if peak is None:
        return None
    return tokens_per_s * flops_per_token(model_config, seq_len) / (peak * world_size)


# ------------------------------------------------------------------------------ parameters


def _shard_numel(p: torch.Tensor, world: int) -> int:
    """Elements FSDP2 allocates per rank for a parameter: dim 0 padded up to a multiple of the world size."""
    if world <= 1 or p.ndim == 0:
        return p.numel()
    return math.ceil(p.shape[0] / world) * (p.numel() // max(p.shape[0], 1))


def _is_quantized_by_bnb(name: str, p: torch.Tensor) -> bool:
    """QLoRA quantises the base weights of the decoder's linear layers (not embeddings, norms, LM head,
    LoRA adapters or saved modules)."""
    return (p.ndim == 2 and not p.requires_grad and ".layers." in name and "lora_" not in name
            and "embed" not in name and "modules_to_save" not in name)


def parameter_bytes(model: Any, world_size: int = 1, sharded: bool = False,
                    load_in_4bit: bool = False) -> dict[str, int]:
    """Per-device bytes of weights, gradients and AdamW states of `model` (meta or real), as sftlab keeps
    them: fp32 master weights (LoRA's frozen base at its stored size, half under bf16 autocast), fp32 gradients
    of the trainable parameters, exp_avg + exp_avg_sq (fp32) plus
    one fp32 `step` scalar per trainable tensor. `sharded`: FSDP2's per-rank shards. `load_in_4bit`: nf4
    base weights (half a byte + an fp32 absmax per 64) for the quantised linear layers."""
    world = world_size if sharded else 1
    seen: set[int] = set()
    weights = grads = states = n_trainable = trainable_tensors = total = quantized = half_stored = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        numel = _shard_numel(p, world)
        total += p.numel()
        if load_in_4bit and _is_quantized_by_bnb(name, p):
            weights += math.ceil(numel / 2) + math.ceil(numel / QLORA_BLOCK) * 4
            quantized += p.numel()
        else:
            weights += numel * p.element_size()  # fp32, or half for LoRA's frozen base (cast_frozen_linear_weights)
            half_stored += p.numel() if p.element_size() == 2 else 0
        if p.requires_grad:
            grads += numel * 4
            states += numel * 8 + 4
            n_trainable += p.numel()
            trainable_tensors += 1
    return {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_bytes": states,
            "params": total, "trainable_params": n_trainable, "quantized_params": quantized,
            "half_stored_params": half_stored}


# -------------------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    """Bytes per device of one training run (see the module docstring for what each term holds)."""

    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    loss_head_bytes: int
    recompute_bytes: int
    autocast_weights_bytes: int
    parallel_buffers_bytes: int
    optimizer_step_bytes: int
    margin_bytes: int
    total_bytes: int
    params: int
    trainable_params: int
    micro_batch: int
    length: int
    basis: str
    loss_head_full_logits_bytes: int
    activations_no_checkpointing_bytes: int
    activations_checkpointing_bytes: int
    flops_per_token: float
    world_size: int = 1
    parallel: str = "none"
    offloaded_bytes: int = 0  # host memory per process holding what train.fsdp.offload moved off the device
    memory_bytes: int | None = None
    max_micro_batch: int | None = None
    fits: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fsdp_terms(model: Any, counts: dict[str, int], layers: int, half: bool,
               fsdp: FsdpConfig) -> tuple[dict[str, int], int, int, int]:
    """FSDP2's part of a device's memory: (parameter terms left on the device, gathered buffers, bytes offloaded
    to host memory, the optimizer step's device temporaries).

    Gathered (in the compute dtype): the root's parameters (embeddings, final norm, LM head: FSDP2 keeps them from
    forward to backward), and of the decoder layers the current and the prefetched one (reshard_after_forward
    true, ZeRO-3) or all of them (false, ZeRO-2: gathered once, kept until backward); plus two layers' unsharded
    fp32 gradients before their reduce-scatter. offload "params" (CPUOffloadPolicy) moves the parameter shards,
    their gradients and AdamW's states to host memory, and the step with them; "optimizer" moves AdamW's states,
    the fp32 shard copies it steps and their gradients."""
    in_layers = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    per_layer, root = in_layers / max(layers, 1), counts["params"] - in_layers
    held = 2 if fsdp.reshard_after_forward else layers
    buffers = int((held * per_layer + root) * (2 if half else 4) + 2 * per_layer * 4)
    step_tmp = counts["gradients_bytes"]
    if fsdp.offload == "params":
        offloaded = counts["weights_bytes"] + counts["gradients_bytes"] + counts["optimizer_bytes"]
        return {**counts, "weights_bytes": 0, "gradients_bytes": 0, "optimizer_bytes": 0}, buffers, offloaded, 0
    if fsdp.offload == "optimizer":
        offloaded = counts["optimizer_bytes"] + 2 * counts["gradients_bytes"]
        return {**counts, "optimizer_bytes": 0}, buffers, offloaded, 0
    return counts, buffers, 0, step_tmp


@dataclass
class RunShape:
    """The parts of a run config the estimate needs, plus the data basis."""

    micro_batch: int
    length: int  # tokens per sample (pad) of the largest micro-batch
    supervised_per_sample: float  # supervised tokens per sample of that micro-batch
    basis: str
    padded: bool = True


def estimate_memory(model: Any, model_config: Any, run: RunShape, *, dtype: str = "fp32",
                    attn_implementation: str = "sdpa", gradient_checkpointing: bool = False,
                    batching: str = "pad", parallel: str = "none", world_size: int = 1,
                    load_in_4bit: bool = False, loss_chunk_size: int | None = None, device_type: str = "cuda",
                    memory_bytes: int | None = None, fused_ops: bool = False,
                    fsdp: FsdpConfig | None = None) -> MemoryEstimate:
    """Per-device memory of the run: exact parameter terms from `model` (meta), formulas for the rest.
    `fsdp`: train.fsdp under parallel fsdp (`fsdp_terms`)."""
    sharded = parallel == "fsdp" and world_size > 1
    counts = parameter_bytes(model, world_size, sharded, load_in_4bit)
    out_head = model.get_output_embeddings()
    head_trainable = out_head is not None and out_head.weight.requires_grad  # the fused head's fp32 grad buffer
    half = dtype in ("bf16", "fp16")
    notes: list[str] = []
    s = Shape.of(model_config)

    def dynamic(micro: int) -> tuple[int, int, int, int]:
        act = estimate_activations(model_config, micro, run.length, gradient_checkpointing, attn_implementation,
                                   batching=batching, dtype=dtype, padded=run.padded, fused_ops=fused_ops,
                                   device_type=device_type)
        act += estimate_batch_inputs(model_config, micro, run.length, gradient_checkpointing, attn_implementation,
                                     batching=batching, padded=run.padded)
        sup = int(math.ceil(micro * run.supervised_per_sample))
        head = estimate_loss_head(model_config, sup, loss_chunk_size, dtype, head_trainable=head_trainable,
                                  device_type=device_type)
        recompute = 0
        if gradient_checkpointing:  # backward recomputes one layer at a time: its saved tensors come back
            rows, row_len = _layout(micro, run.length, batching)
            attn = layer_attention(attn_implementation, device_type, s, micro, run.length, batching, run.padded, dtype)
            recompute = layer_activation_bytes(s, rows * row_len, attn, half, fused_ops, device_type)
        return act, head["peak"], head["full_logits_peak"], recompute

    # bf16 autocast keeps a half copy of every weight a matmul reads until backward (fp32 master weights);
    # FSDP with a bf16 policy gathers half weights per layer instead (fsdp_terms).
    linear_params = matmul_params(model_config)
    autocast = buffers = offloaded = 0
    step_tmp = counts["gradients_bytes"]  # foreach AdamW: one temporary list the size of the trainable shard
    if sharded:
        counts, buffers, offloaded, step_tmp = fsdp_terms(model, counts, s.layers, half, fsdp or FsdpConfig())
    elif half and not load_in_4bit:  # weights already stored in half (LoRA's frozen base) need no copy
        autocast = max(linear_params - counts["half_stored_params"], 0) * 2
    if parallel in ("ddp", "none") and world_size > 1:
        buffers = counts["gradients_bytes"]  # DDP's gradient buckets (gradient_as_bucket_view=False)
    if load_in_4bit:
        # bitsandbytes dequantises one weight at a time into the compute dtype (transient): the largest one
        buffers += max(s.hidden * s.intermediate, s.hidden * s.heads * s.head_dim) * 2
    static = counts["weights_bytes"] + counts["gradients_bytes"] + counts["optimizer_bytes"]

    def total(micro: int) -> tuple[int, int, tuple]:
        act, peak_head, full_head, recompute = dynamic(micro)
        transient = max(act + peak_head + recompute + autocast + buffers, step_tmp)
        margin = int(MARGIN * transient)
        return static + transient + margin, margin, (act, peak_head, full_head, recompute)

    tot, margin, (act, head, full_head, recompute) = total(run.micro_batch)
    max_micro = fits = None
    if memory_bytes is not None:
        fits = tot <= memory_bytes
        lo, hi = 0, 1
        while hi <= 65536 and total(hi)[0] <= memory_bytes:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if total(mid)[0] <= memory_bytes else (lo, mid)
        max_micro = lo
        if not fits:
            notes.append(f"does not fit: {tot / GIB:.1f} GiB needed per device, {memory_bytes / GIB:.1f} GiB "
                         f"available; largest micro-batch that fits: {max_micro}")
    if load_in_4bit:
        notes.append("QLoRA: nf4 base weights without double quantisation, as sftlab configures bitsandbytes")
    act_gc = estimate_activations(model_config, run.micro_batch, run.length, True, attn_implementation,
                                  batching=batching, dtype=dtype, padded=run.padded, fused_ops=fused_ops,
                                  device_type=device_type)
    act_nogc = estimate_activations(model_config, run.micro_batch, run.length, False, attn_implementation,
                                    batching=batching, dtype=dtype, padded=run.padded, fused_ops=fused_ops,
                                    device_type=device_type)
    seq = run.micro_batch * run.length if batching == "padfree" else run.length
    return MemoryEstimate(
        weights_bytes=counts["weights_bytes"], gradients_bytes=counts["gradients_bytes"],
        optimizer_bytes=counts["optimizer_bytes"], activations_bytes=act, loss_head_bytes=head,
        recompute_bytes=recompute, autocast_weights_bytes=autocast, parallel_buffers_bytes=buffers,
        optimizer_step_bytes=step_tmp, margin_bytes=margin, total_bytes=tot, params=counts["params"],
        trainable_params=counts["trainable_params"], micro_batch=run.micro_batch, length=run.length,
        basis=run.basis, loss_head_full_logits_bytes=full_head, activations_no_checkpointing_bytes=act_nogc,
        activations_checkpointing_bytes=act_gc, flops_per_token=flops_per_token(model_config, seq),
        world_size=world_size, parallel=parallel, memory_bytes=memory_bytes, max_micro_batch=max_micro,
        fits=fits, notes=notes, offloaded_bytes=offloaded)


# ----------------------------------------------------------------------------------- from a run config


def data_run_shape(lengths: Any, supervised: Any, micro: int, batching: str) -> RunShape:
    """The largest micro-batch the data can produce: the `micro` longest samples (pad: as many rows of the
    longest; padfree: one row of their summed lengths), with their supervised token counts. Per-sample arrays
    (the loop's DataSet.lengths / .supervised): no sample is materialised."""
    lengths = np.asarray(lengths)
    top = np.argsort(-lengths, kind="stable")[:micro]
    longest = int(lengths[top].max())
    length = longest if batching != "padfree" else int(math.ceil(lengths[top].mean()))
    return RunShape(micro_batch=micro, length=length, supervised_per_sample=float(np.asarray(supervised)[top].mean()),
                    basis=f"data: the {len(top)} longest of {len(lengths)} samples (longest {longest} tokens)",
                    padded=bool(lengths[top].min() != longest))


NO_NATIVE_BF16 = ("v100", "t4")  # presets where model.dtype auto / bf16 trains in fp32 (pre-Ampere)


def estimate_dtype(requested: str, target: str, gpu: str | None = None) -> str:
    """The compute dtype training will use on the target: `auto` / `bf16` are resolved at start-up
    (model.resolve_precision), on this machine's device, or for a GPU preset / memory size: bf16 unless the
    preset lacks native bf16."""
    if requested not in ("auto", "bf16"):
        return requested
    if target == "cpu" or (torch.cuda.is_available() and gpu is None):
        return resolve_precision(requested, torch.device(target))[0]
    return "fp32" if gpu and gpu.lower().startswith(NO_NATIVE_BF16) else "bf16"


def estimate_run(cfg: Any, world_size: int = 1, memory_bytes: int | None = None, use_data: bool = True,
                 data: Any = None, vocab_size: int | None = None, gpu: str | None = None) -> MemoryEstimate:
    """The estimate for a RunConfig: meta model from `model.name_or_path`'s config, the run's micro-batch,
    and the real token lengths of `data.train` when the files are there (else max_length). `gpu`: the preset
    name of `sftlab estimate --gpu` (what model.dtype auto / bf16 become there)."""
    micro, _, _ = resolve_batch_sizes(cfg.train, world_size)
    # `auto` resolves as training would on the target: a GPU when a memory size is given, else the device
    # training picks (train.device, or cuda when one is here)
    here = device_of(cfg.train.device) if cfg.train.device else None
    target = "cuda" if memory_bytes is not None or (here is None and torch.cuda.is_available()) else (
        here.type if here is not None else "cpu")
    dtype = estimate_dtype(cfg.model.dtype, target, gpu)
    batching = resolve_batching(cfg.data.batching, cfg.model.attn_implementation, torch.device(target))
    # the kernel training loads there (auto: sdpa for pad, else flash-attn / flex on CUDA, sdpa_varlen on CPU)
    attn = resolve_attention(cfg.model.attn_implementation, batching, torch.device(target))
    if data is None and use_data and all(Path(s.path).exists() for s in cfg.data.train):
        tok = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template, cfg.model.special_tokens,
                             cfg.model.eot_token)
        vocab_size = len(tok)
        data = load_split(cfg.data.train, cfg, tok, "train", is_main=False)
    if data is not None and len(data.lengths):
        run = data_run_shape(data.lengths, data.supervised, micro, batching)
    else:
        run = RunShape(micro_batch=micro, length=cfg.data.max_length,
                       supervised_per_sample=cfg.data.max_length - 1, padded=False,
                       basis=f"max_length: {micro} x {cfg.data.max_length} tokens, every token supervised")
    # LoRA's frozen base is stored in the resolved compute dtype (model.frozen_base_dtype)
    model = meta_model(cfg.model.model_copy(update={"dtype": dtype}), vocab_size, cfg.train.gradient_checkpointing,
                       cfg.train.parallel)
    config = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
    lora = cfg.model.lora
    est = estimate_memory(model, config, run, dtype=dtype,
                          attn_implementation=attn,
                          gradient_checkpointing=cfg.train.gradient_checkpointing, batching=batching,
                          parallel=cfg.train.parallel, world_size=world_size,
                          load_in_4bit=bool(lora and lora.load_in_4bit), loss_chunk_size=cfg.train.loss_chunk_size,
                          device_type=target, memory_bytes=memory_bytes,
                          fused_ops=use_fused_ops(cfg.model.fused_ops, torch.device(target)), fsdp=cfg.train.fsdp)
    if dtype != cfg.model.dtype:
        est.notes.append(f"model.dtype {cfg.model.dtype}: estimated as {dtype}, what training uses on {gpu or target}")
    return est


def rows_for_table(est: MemoryEstimate) -> list[tuple[str, int]]:
    """(label, bytes) of every term of the total, in the order a reader adds them up."""
    return [("weights", est.weights_bytes), ("gradients", est.gradients_bytes),
            ("optimizer states (AdamW)", est.optimizer_bytes),
            ("activations + batch tensors", est.activations_bytes),
            ("loss head (supervised-only, chunked)", est.loss_head_bytes),
            ("checkpointing recompute (1 layer)", est.recompute_bytes),
            ("autocast half weight copies", est.autocast_weights_bytes),
            ("DDP buckets / FSDP gathered layers / nf4 dequant", est.parallel_buffers_bytes),
            ("fragmentation / workspace margin", est.margin_bytes)]


def format_gib(n: float | None) -> str:
    """Bytes for people: GiB with two decimals, MiB below 1 GiB."""
    if n is None:
        return "-"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


# --------------------------------------------------------------------------- checked on every run


def memory_baseline() -> int:
    """This process's resident memory now (bytes): the CPU reference the training peak is measured from."""
    import resource  # lazy: Unix only (training must still import on other systems)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured_peak(device: torch.device, baseline: int = 0) -> tuple[float, str]:
    """(peak bytes, what was measured): CUDA's max_memory_allocated, or on CPU the growth of the process's
    peak resident memory since `baseline` (it includes allocator slack and Python objects, so it reads high)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return float(max(memory_baseline() - baseline, 0)), "cpu_peak_rss_growth"


@dataclass
class RunCheck:
    """The start-up estimate of a training run, kept to be compared with what the run measures."""

    estimate: MemoryEstimate
    model_config: Any
    device: torch.device
    world_size: int
    dtype: str
    baseline: int

    def metrics(self, tokens_per_s: float) -> dict[str, float]:
        """memory_estimate_gb, memory_peak_gb and, on a device of known peak FLOP/s, mfu (model FLOPs)."""
        peak, _ = measured_peak(self.device, self.baseline)
        out = {"memory_estimate_gb": round(self.estimate.total_bytes / GIB, 4), "memory_peak_gb": round(peak / GIB, 4)}
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        value = mfu(tokens_per_s, self.model_config, self.estimate.length, name, self.dtype, self.world_size)
        if value is not None:
            out["mfu"] = round(value, 4)
        return out

    def summary(self) -> str:
        peak, source = measured_peak(self.device, self.baseline)
        return (f"memory per device: estimate {self.estimate.total_bytes / GIB:.3f} GiB, measured peak "
                f"{peak / GIB:.3f} GiB ({source})")


def memory_check(cfg: Any, device: torch.device, world_size: int, data: Any, vocab_size: int,
                 is_main: bool) -> RunCheck | None:
    """Estimate the run about to start (call before the model is loaded) and print it; None, with a note,
    when the model is outside what the estimator knows (training goes on either way)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = memory_baseline()
    try:
        est = estimate_run(cfg, world_size, data=data, vocab_size=vocab_size)
        model_config = load_model_config(cfg.model.name_or_path)
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a training run
        if is_main:
            print(f"note: no memory estimate for this model ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None
    if is_main:
        print(f"memory estimate per device: {format_gib(est.total_bytes)} (weights {format_gib(est.weights_bytes)}, "
              f"gradients {format_gib(est.gradients_bytes)}, optimizer {format_gib(est.optimizer_bytes)}, "
              f"activations {format_gib(est.activations_bytes)}, loss head {format_gib(est.loss_head_bytes)}); "
              f"{est.basis}")
    return RunCheck(est, model_config, device, world_size, cfg.model.dtype, baseline)

