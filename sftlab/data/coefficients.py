"""Per-token loss coefficients, fixed when a sample is rendered (docs/DESIGN.md §2).

Every reduction of the loss contract is L = Σ_i c_i l_i / D: the coefficient c_i of a supervised token depends
only on its own sample (its turn's weight and size), and D is a sum of per-sample terms. Both are properties of
the rendered sample, so the store (sftlab/data/store.py) computes them once; sftlab/train/loss.py reduces with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
