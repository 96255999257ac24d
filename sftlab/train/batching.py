"""Collators: rendered samples -> model inputs (docs/DESIGN.md §3).

Every mode returns the same batch contract, so the loss never knows the layout:
    input_ids, position_ids [rows, length]; attention_mask (2-D padding mask, or 4-D boolean block mask,
    or None); target_pos = (rows, cols) of the positions whose next token is supervised; targets (the
    supervised token ids); target_coef (loss coefficient c_i); target_sample (index of the token's sample
    in the micro-batch); plus counts: tokens (real), padded_tokens (rows × length).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BATCHING_MODES = ("pad", "padfree", "pack")


def _targets(labels: np.ndarray, coef: np.ndarray, sample_of: np.ndarray) -> dict[str, torch.Tensor]:
    """Targets of a laid-out batch: the token at (r, c+1) is predicted from position (r, c)."""
    rows, cols = np.nonzero(labels[:, 1:] != -100)
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


def collate(samples: list[dict[str, Any]], mode: str, pad_id: int, **kw: Any) -> dict[str, Any]:
    """Lay out one micro-batch in the given batching mode."""
    if mode == "pad":
        return collate_pad(samples, pad_id, **kw)
    raise NotImplementedError(f"batching mode {mode!r} is not implemented yet")


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors (and tuples of tensors) to the device; counts stay Python ints."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, tuple):
            out[k] = tuple(t.to(device, non_blocking=True) for t in v)
        else:
            out[k] = v
    return out
