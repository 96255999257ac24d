"""Collators: rendered samples -> model inputs (docs/DESIGN.md §3).

Every mode returns the same batch contract, so the loss never knows the layout:
    input_ids, position_ids [rows, length]; attention_mask (2-D padding mask, 4-D block mask, or None);
    target_pos = (rows, cols) of the positions whose next token is supervised; targets (the supervised token
    ids); target_coef (loss coefficient c_i); target_sample (index of the token's sample in the micro-batch's
    sample list, in the order given); plus counts: tokens (real), padded_tokens (rows × length).

Modes:
    pad      one sample per row, right padding to the longest, 2-D padding mask.
    padfree  all samples of the micro-batch in ONE row, position_ids restarting at 0 per sample.
    pack     several rows, each holding the samples of one best-fit-decreasing bin (`pack_samples`),
             rows padded to the longest row. The loop packs *within a global batch*
             (`plan_packed_micro_batches`), so packing never changes which samples make an optimizer step.
In padfree / pack, attention is kept inside each sample by the backend's layout (sftlab/train/attention.py):
a 4-D block-diagonal causal mask (sdpa: bool, eager: additive float), or position ids plus the sample
boundaries (`cu_seq_lens_q/k`, `max_length_q/k`, transformers' names) for the varlen kernels (flash-attention,
sftlab's sdpa_varlen), or position ids alone (flex document masks). Padding forms a document of its own.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from sftlab.errors import UserError
from sftlab.train.attention import FIX, attention_layout, block_causal_mask

BATCHING_MODES = ("pad", "padfree", "pack")


def _targets(labels: np.ndarray, coef: np.ndarray, sample_of: np.ndarray) -> dict[str, torch.Tensor]:
    """Targets of a laid-out batch: the token at (r, c+1) is predicted from position (r, c) of the same sample."""
    same = sample_of[:, 1:] == sample_of[:, :-1]  # never predict a sample's first token from the previous sample
    rows, cols = np.nonzero((labels[:, 1:] != -100) & same)
    nxt = cols + 1
    return {
        "target_pos": (torch.from_numpy(rows), torch.from_numpy(cols)),
        "targets": torch.from_numpy(labels[rows, nxt]),
        "target_coef": torch.from_numpy(coef[rows, nxt].astype(np.float32)),
        "target_sample": torch.from_numpy(sample_of[rows, nxt]),
    }


def collate_pad(samples: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 1) -> dict[str, Any]:
    """Right padding to the longest sample of the micro-batch; a 2-D attention mask."""
    lengths = [s["num_tokens"] for s in samples]
    length = max(lengths)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(samples)
    input_ids = np.full((n, length), pad_id, dtype=np.int64)
    labels = np.full((n, length), -100, dtype=np.int64)
    coef = np.zeros((n, length), dtype=np.float64)
    sample_of = np.full((n, length), -1, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    for r, s in enumerate(samples):
        k = s["num_tokens"]
        input_ids[r, :k] = s["input_ids"]
        labels[r, :k] = s["labels"]
        coef[r, :k] = s["loss_coef"]
        sample_of[r, :k] = r
        mask[r, :k] = 1
    position_ids = np.broadcast_to(np.arange(length, dtype=np.int64), (n, length)).copy()
    batch = {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(position_ids),
             "attention_mask": torch.from_numpy(mask), "tokens": int(sum(lengths)), "padded_tokens": n * length}
    batch.update(_targets(labels, coef, sample_of))
    return batch


def collate_rows(samples: list[dict[str, Any]], rows: Sequence[Sequence[int]], pad_id: int,
                 layout: str = "bool_mask", mask_dtype: torch.dtype = torch.float32,
                 pad_to_multiple_of: int = 1) -> dict[str, Any]:
    """Lay samples out several to a row: `rows[r]` lists the indices (into `samples`) of row r, in order.

    Every sample must appear exactly once. Position ids restart at 0 per sample; the attention mask (or
    its absence) follows `layout` (see attention.py). The "varlen" layout (flash attention) reads
    sequence boundaries from position ids of a single row only, so its rows are concatenated into one.
    """
    if layout == "varlen":
        rows = [list(chain.from_iterable(rows))]
    order = np.fromiter(chain.from_iterable(rows), dtype=np.int64)
    if not np.array_equal(np.sort(order), np.arange(len(samples))):
        raise ValueError("rows must list every sample index exactly once")
    n_rows = len(rows)
    lens = np.array([samples[i]["num_tokens"] for i in order], dtype=np.int64)
    row_of = np.repeat(np.arange(n_rows), [len(r) for r in rows])
    flat_start = np.cumsum(lens) - lens
    row_tokens = np.bincount(row_of, weights=lens, minlength=n_rows).astype(np.int64)
    row_start = np.cumsum(row_tokens) - row_tokens
    length = int(row_tokens.max())
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    total = int(lens.sum())

    # Token-level coordinates of every real token, without a per-token loop.
    tok_row = np.repeat(row_of, lens)
    tok_pos = np.arange(total) - np.repeat(flat_start, lens)
    tok_col = np.repeat(flat_start - row_start[row_of], lens) + tok_pos
    ids = np.concatenate([np.asarray(samples[i]["input_ids"], dtype=np.int64) for i in order])
    labs = np.concatenate([np.asarray(samples[i]["labels"], dtype=np.int64) for i in order])
    coefs = np.concatenate([np.asarray(samples[i]["loss_coef"], dtype=np.float64) for i in order])

    input_ids = np.full((n_rows, length), pad_id, dtype=np.int64)
    labels = np.full((n_rows, length), -100, dtype=np.int64)
    coef = np.zeros((n_rows, length), dtype=np.float64)
    sample_of = np.full((n_rows, length), -1, dtype=np.int64)  # -1: padding, a document of its own
    # Padding tails count from 0 as well, so position-id based backends see them as a separate sequence.
    position_ids = np.maximum(np.arange(length, dtype=np.int64)[None, :] - row_tokens[:, None], 0)
    input_ids[tok_row, tok_col] = ids
    labels[tok_row, tok_col] = labs
    coef[tok_row, tok_col] = coefs
    sample_of[tok_row, tok_col] = np.repeat(order, lens)
    position_ids[tok_row, tok_col] = tok_pos

    doc = torch.from_numpy(sample_of)
    mask = block_causal_mask(doc, layout, mask_dtype) if layout in ("bool_mask", "float_mask") else None
    batch = {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(position_ids),
             "attention_mask": mask, "tokens": total, "padded_tokens": n_rows * length}
    if layout == "varlen":  # the sample boundaries once per micro-batch, so no kernel searches position ids per layer
        bounds = np.append(flat_start, [total] + ([length] if length > total else []))
        cu = torch.from_numpy(bounds.astype(np.int32))
        max_len = int(np.diff(bounds).max())
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_len, max_length_k=max_len)
    batch.update(_targets(labels, coef, sample_of))
    return batch


def _lengths(samples: Sequence[dict[str, Any]] | Sequence[int]) -> np.ndarray:
    return np.array([s if isinstance(s, (int, np.integer)) else s["num_tokens"] for s in samples], dtype=np.int64)


def pack_samples(samples: Sequence[dict[str, Any]] | Sequence[int], max_len: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: sample indices grouped into rows of at most max_len tokens.

    Longest first, each into the open row whose free space fits it most tightly (ties: the older row);
    O(n log n) with a sorted list of (free space, row). Deterministic. A sample longer than max_len
    gets a row of its own (never dropped or cut here: truncation is rendering's job).
    """
    lens = _lengths(samples)
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free tokens, row id) of rows that still have room
    for i in np.argsort(-lens, kind="stable").tolist():
        n = int(lens[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            if room > n:
                bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            if n < max_len:
                bisect.insort(free, (max_len - n, len(rows) - 1))
    return rows


def plan_packed_micro_batches(samples: Sequence[dict[str, Any]] | Sequence[int], max_len: int,
                              n_micro: int) -> list[list[list[int]]]:
    """Pack one global batch and deal its rows to n_micro micro-batches, balanced by tokens.

    Returns, per micro-batch, its rows, each a list of indices into `samples` (the global batch). The loop
    passes n_micro = accumulation steps × data-parallel ranks and collates micro-batch k with
    `packed_micro_batch(samples, plan[k])` + `collate(..., "pack", rows=...)`. The union of all
    micro-batches is exactly the global batch, so the loss contract's global denominator is unchanged.
    Rows go largest first to the lightest micro-batch; when there are fewer rows than micro-batches, the
    fullest multi-sample rows are split so that no micro-batch is empty.
    """
    lens = _lengths(samples)
    if n_micro < 1 or len(lens) < n_micro:
        raise ValueError(f"cannot split {len(lens)} samples into {n_micro} non-empty micro-batches")
    rows = pack_samples(lens, max_len)
    while len(rows) < n_micro:
        splittable = [r for r in range(len(rows)) if len(rows[r]) > 1]
        r = max(splittable, key=lambda j: (int(lens[rows[j]].sum()), -j))
        row = rows.pop(r)
        rows += [row[0::2], row[1::2]]
    row_tokens = [int(lens[r].sum()) for r in rows]
    heap = [(0, 0, k) for k in range(n_micro)]  # (tokens, rows, micro-batch)
    plan: list[list[list[int]]] = [[] for _ in range(n_micro)]
    for r in sorted(range(len(rows)), key=lambda j: (-row_tokens[j], j)):
        tokens, count, k = heapq.heappop(heap)
        plan[k].append(rows[r])
        heapq.heappush(heap, (tokens + row_tokens[r], count + 1, k))
    return plan


def packed_micro_batch(samples: Sequence[dict[str, Any]], rows: Sequence[Sequence[int]]
                       ) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The samples of one planned micro-batch (row by row) and its rows re-indexed into that list."""
    micro = [samples[i] for row in rows for i in row]
    local, start = [], 0
    for row in rows:
        local.append(list(range(start, start + len(row))))
        start += len(row)
    return micro, local


def collate(samples: list[dict[str, Any]], mode: str, pad_id: int, *, attn_implementation: str | None = None,
            mask_dtype: torch.dtype = torch.float32, pad_to_multiple_of: int = 1,
            rows: Sequence[Sequence[int]] | None = None, max_len: int | None = None) -> dict[str, Any]:
    """Lay out one micro-batch in the given batching mode.

    padfree / pack need the model's attention backend (`attn_implementation`, see attention.py) to choose
    the isolation layout, and there is no default on purpose: a mask made for the wrong backend leaks
    silently (eager adds a boolean mask as 0/1). eager also needs the model's dtype (`mask_dtype`). pack
    takes the planned `rows` (indices into `samples`), or packs `samples` itself into rows of `max_len`.
    """
    if mode == "pad":
        return collate_pad(samples, pad_id, pad_to_multiple_of)
    if mode not in BATCHING_MODES:
        raise ValueError(f"batching mode must be one of {BATCHING_MODES}, got {mode!r}")
    if attn_implementation is None:
        raise ValueError(f"collate(mode={mode!r}) needs attn_implementation (the model's attention backend) to "
                         "keep samples apart")
    layout = attention_layout(attn_implementation)
    if mode == "padfree":
        rows = [list(range(len(samples)))]
    elif rows is None:
        if max_len is None:
            raise ValueError("pack mode needs the planned rows or max_len")
        rows = pack_samples(samples, max_len)
    return collate_rows(samples, rows, pad_id, layout, mask_dtype, pad_to_multiple_of)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors (and tuples of tensors) to the device; counts stay Python ints. On CUDA the host tensors are
    pinned first, so the copies are truly asynchronous (non_blocking from pageable memory waits)."""
    device = torch.device(device)
    pin = device.type == "cuda"

    def to(t: torch.Tensor) -> torch.Tensor:
        return (t.pin_memory() if pin and t.device.type == "cpu" else t).to(device, non_blocking=True)

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = to(v)
        elif isinstance(v, tuple):
            out[k] = tuple(to(t) for t in v)
        else:
            out[k] = v
    return out


@torch.no_grad()
def verify_isolation(model: Any, layout: str, lengths: tuple[int, int] = (11, 7), tol: float = 1e-3) -> float:
    """Numerical leak check on the real model: change the first sample of a two-sample row and make sure
    the second sample's hidden states do not move. Returns the relative change; UserError above `tol`.

    Same shapes and kernels in both runs, so an isolating backend gives (near) bit-identical outputs, while a
    leak moves them by O(1) relative amounts whatever the precision.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    second = torch.randint(0, vocab, (lengths[1],), generator=gen).tolist()
    outs = []
    for _ in range(2):
        first = torch.randint(0, vocab, (lengths[0],), generator=gen).tolist()
        samples = [{"input_ids": ids, "labels": [-100] * len(ids), "loss_coef": [0.0] * len(ids),
                    "num_tokens": len(ids)} for ids in (first, second)]
        batch = collate_rows(samples, [[0, 1]], pad_id=0, layout=layout, mask_dtype=dtype)
        kwargs = {"input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device),
                  "use_cache": False}
        if batch["attention_mask"] is not None:
            kwargs["attention_mask"] = batch["attention_mask"].to(device)
        hidden = model.get_decoder()(**kwargs).last_hidden_state[0, lengths[0]:].float()
        outs.append(hidden)
    rel = float((outs[0] - outs[1]).abs().max() / outs[1].abs().max().clamp_min(1e-12))
    if rel > tol:
        impl = getattr(model.config, "_attn_implementation", "?")
        raise UserError(f"attention backend {impl!r} leaks across packed samples (a change in one sample moved "
                        f"another's hidden states by {rel:.2e} relative); {FIX}")
    return rel
