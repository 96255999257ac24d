"""The step plan: which samples make every optimizer step, and how a step is split over ranks and micro-batches.

The plan depends only on the seed, the global batch and the task balancing (train.task_epochs, train.task_weights;
sftlab/train/balance.py); how a global batch is cut into micro-batches, accumulation steps and ranks never changes
it (the loss contract, docs/DESIGN.md §2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.train.balance import TaskEpochs, epoch_order, per_sample_values, plan_table, task_epochs_plan
from sftlab.train.batching import packed_micro_batch, plan_packed_micro_batches
from sftlab.train.dataset import DataSet


@dataclass(frozen=True)
class StepPlan:
    """The sample indices of every optimizer step, and what one epoch of the plan holds per task (printed at
    start-up, stored in RUN/data_summary.json as train.plan_per_epoch)."""

    steps: list[np.ndarray]
    per_epoch: int
    table: dict[str, dict[str, Any]]

    @property
    def total(self) -> int:
        return len(self.steps)


def with_task_weights(data: DataSet, task_weights: dict[str, float]) -> DataSet:
    """The train split with its per-sample task weights (train.task_weights); unchanged without any."""
    if not task_weights:
        return data
    return dataclasses.replace(data, weights=per_sample_values(data.task_types(), task_weights, "task_weights"))


def plan_steps(data: DataSet, train: TrainConfig, global_batch: int, min_batch: int,
               group_by_length: bool = False) -> StepPlan:
    """The run's step plan over the train split (task_epochs applied; with group_by_length each global batch is
    sorted by length). `min_batch`: the smallest last batch of an epoch that still makes a step (world x accum)."""
    task_types = data.task_types()
    repeats = task_epochs_plan(task_types, train.task_epochs, train.seed)
    steps, per_epoch = step_plan(len(data.lengths), global_batch, min_batch, train.num_train_epochs, train.max_steps,
                                 train.seed, data.lengths if group_by_length else None, repeats)
    weights = data.weights if data.weights is not None else np.ones(len(task_types))
    return StepPlan(steps, per_epoch, plan_table(task_types, data.lengths, data.supervised, weights, repeats))


def step_plan(n: int, global_batch: int, min_batch: int, epochs: float, max_steps: int, seed: int,
              lengths: np.ndarray | None, task_epochs: TaskEpochs | None = None) -> tuple[list[np.ndarray], int]:
    """The sample indices of every optimizer step. They depend only on the seed and the global batch size;
    how a step is split into micro-batches, accumulation steps and ranks never changes them.
    With `lengths`, each global batch is sorted by length (grouping inside the global batch).
    With `task_epochs`, an epoch repeats or subsamples each task's samples (sftlab/train/balance.py)."""
    pool = n if task_epochs is None else task_epochs.size
    per_epoch = pool // global_batch + (1 if pool % global_batch >= min_batch else 0)
    if per_epoch == 0:
        raise UserError(f"the train set has {n} samples, fewer than one global batch ({global_batch}); "
                        "lower per_device_train_batch_size or gradient_accumulation_steps")
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    plan: list[np.ndarray] = []
    epoch = 0
    while len(plan) < total:
        order = epoch_order(n, seed, epoch, task_epochs)
        for b in range(per_epoch):
            idx = order[b * global_batch:(b + 1) * global_batch]
            if lengths is not None:
                idx = idx[np.argsort(-lengths[idx], kind="stable")]
            plan.append(idx)
            if len(plan) == total:
                break
        epoch += 1
    return plan, per_epoch


def split_global_batch(idx: np.ndarray, world: int, accum: int, rank: int, lengths: np.ndarray | None = None,
                       max_len: int | None = None) -> list[tuple[np.ndarray, list[list[int]] | None]]:
    """This rank's micro-batches of one global batch, as (sample indices, packed rows or None).

    pad / padfree: the global batch is cut into world × accum contiguous parts, part (a · world + r) going
    to rank r at accumulation step a. pack (`lengths` given): the global batch is bin-packed into rows of
    max_len tokens first and the rows are dealt to the micro-batches, so packing never changes which
    samples make an optimizer step."""
    if lengths is None:
        parts = np.array_split(idx, world * accum)
        return [(parts[a * world + rank], None) for a in range(accum)]
    plan = plan_packed_micro_batches(lengths[idx], max_len, world * accum)
    out = []
    for a in range(accum):
        flat, local = packed_micro_batch(list(idx), plan[a * world + rank])
        out.append((np.asarray(flat), local))
    return out
