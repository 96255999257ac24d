"""Multi-task balancing inside a run: per-task loss weights and per-task epochs (docs/DESIGN.md §2, §2.1).

Two levers, both keyed by task_type (or a parent channel: `math` covers `math/add`; the most specific key wins):

- `train.task_weights: {task: W}` multiplies the loss coefficients of every supervised token of that task's
  samples. It is a per-sample array applied when a micro-batch is reduced (`loss.token_loss_scale`), so the
  rendered coefficients are never rewritten, and the denominator D of the global batch is unchanged:
  weights move the numerator only. Every layout still sums to the same Σ W_s c_i l_i / D.
- `train.task_epochs: {task: n}` changes how many times a task's samples appear in each epoch of the step
  plan (2 = twice, 0.5 = a seeded half, rotating so that two epochs see every sample once). It transforms
  the plan's sample indices; no sample is copied.

Channel losses stay unweighted (the evaluation view), so a task with weight 0 is still watched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sftlab.data.records import task_channels
from sftlab.errors import UserError


def per_sample_values(task_types: Sequence[str], values: dict[str, float], key: str) -> np.ndarray:
    """Each sample's value from a {task channel: value} mapping: the most specific matching channel of its
    task_type, else 1. A key that is no channel of the data is an error naming the channels it has."""
    kinds, inverse = np.unique(np.asarray(task_types, dtype=object).astype(str), return_inverse=True)
    known = {c for t in kinds for c in task_channels(str(t))}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise UserError(f"train.{key}: task type {unknown[0]!r} is not in the train data; it has: "
                        f"{', '.join(sorted(known))}")
    per_kind = np.ones(len(kinds), dtype=np.float64)
    for j, t in enumerate(kinds):
        for ch in reversed(task_channels(str(t))):
            if ch in values:
                per_kind[j] = float(values[ch])
                break
    return per_kind[inverse]


@dataclass
class TaskEpochs:
    """Per-task repetition of the step plan. Each group of samples (one task_type) appears `whole` times per
    epoch plus `extra` more samples, taken in a fixed seeded order that rotates from epoch to epoch."""

    groups: list[tuple[np.ndarray, int, int]]  # (sample indices in a seeded order, whole copies, extra samples)

    @property
    def size(self) -> int:
        """Plan entries per epoch."""
        return sum(len(idx) * whole + extra for idx, whole, extra in self.groups)


def task_epochs_plan(task_types: Sequence[str], task_epochs: dict[str, float], seed: int) -> TaskEpochs | None:
    """None when no task is repeated (the plan stays one plain pass per epoch)."""
    if not task_epochs:
        return None
    mult = per_sample_values(task_types, task_epochs, "task_epochs")
    types = np.asarray(task_types, dtype=object).astype(str)
    groups = []
    for code, t in enumerate(np.unique(types)):
        idx = np.flatnonzero(types == t)
        m = float(mult[idx[0]])
        whole, extra = int(m), int(np.floor((m - int(m)) * len(idx) + 0.5))  # half up, not to even
        if whole == 0 and extra == 0:
            raise UserError(f"train.task_epochs: {m:g} of task {t!r} ({len(idx)} samples) keeps no sample per epoch;"
                            " raise it, or drop the task from data.train")
        groups.append((np.random.default_rng([seed, 7919, code]).permutation(idx), whole, extra))
    return TaskEpochs(groups)


def epoch_order(n: int, seed: int, epoch: int, task_epochs: TaskEpochs | None = None) -> np.ndarray:
    """The shuffled sample indices of one epoch (a sample repeated by task_epochs appears several times).
    Without task_epochs this is `default_rng([seed, epoch]).permutation(n)`, the plan's historical order."""
    rng = np.random.default_rng([seed, epoch])
    if task_epochs is None:
        return rng.permutation(n)
    parts = []
    for idx, whole, extra in task_epochs.groups:
        parts += [idx] * whole
        if extra:
            start = (epoch * extra) % len(idx)
            parts.append(np.roll(idx, -start)[:extra])
    pool = np.sort(np.concatenate(parts))
    return pool[rng.permutation(len(pool))]


def plan_table(task_types: Sequence[str], lengths: np.ndarray, supervised: np.ndarray, weights: np.ndarray,
               task_epochs: TaskEpochs | None) -> dict[str, dict[str, float]]:
    """Per task_type, what one epoch of the plan holds: samples, tokens, supervised tokens, weight, epochs."""
    types = np.asarray(task_types, dtype=object).astype(str)
    order = epoch_order(len(types), 0, 0, task_epochs)  # counts do not depend on the shuffle
    count = np.bincount(order, minlength=len(types))
    out = {}
    for t in np.unique(types):
        sel = types == t
        n = int(count[sel].sum())
        out[str(t)] = {"samples": n, "tokens": int((count * lengths)[sel].sum()),
                       "supervised_tokens": int((count * supervised)[sel].sum()),
                       "weight": float(weights[sel][0]), "epochs": n / int(sel.sum())}
    return out


def format_plan_table(table: dict[str, dict[str, float]]) -> str:
    """The start-up print: one line per task."""
    width = max(len("task_type"), *(len(t) for t in table))
    lines = [f"{'task_type':<{width}}  {'samples':>8}  {'tokens':>10}  {'supervised':>10}  {'weight':>6}  "
             f"{'epochs':>6}   (per epoch of the plan)"]
    for t, r in table.items():
        lines.append(f"{t:<{width}}  {r['samples']:>8,}  {r['tokens']:>10,}  {r['supervised_tokens']:>10,}  "
                     f"{r['weight']:>6.3g}  {r['epochs']:>6.3g}")
    return "\n".join(lines)


def weighted_sums(per_sample: torch.Tensor, weights: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """[weighted total, weighted numerator per channel] of one micro-batch, from its unweighted per-sample
    numerators Σ c_i l_i and the samples' channel-matrix rows."""
    w = per_sample if weights is None else per_sample * weights.to(per_sample.dtype)
    return torch.cat([w.sum().reshape(1), rows.T @ w])


def share_metrics(channels: list[str], weighted: torch.Tensor, channel_tokens: np.ndarray,
                  total_tokens: float) -> dict[str, float]:
    """Each channel's share of one step's weighted loss numerator (what the weights did to the objective) and
    of its supervised tokens (what the data mix and task_epochs put in the step)."""
    out = {}
    total = float(weighted[0])
    for j, c in enumerate(channels):
        if total > 0:
            out[f"loss_share/{c}"] = float(weighted[1 + j]) / total
        if total_tokens > 0:
            out[f"token_share/{c}"] = float(channel_tokens[j]) / total_tokens
    return out
