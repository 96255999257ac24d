"""Checkpoints: atomic HF-layout model directories plus the state a resume needs, and which of them count.

    RUN/checkpoints/step-<N>/   model files (weights or LoRA adapter) + tokenizer, optimizer.pt (optimizer.rank<r>.pt
                                under FSDP), training_state.pt (step, schedule, every rank's RNG state, early
                                stopping, world size, the run's fingerprint and derived values)
    RUN/best/, RUN/final/       model files + tokenizer only

Only complete `step-<int>` checkpoints count (the state file is written last); leftovers of a kill in the save
window (`step-N.tmp`, `step-N.old`) are cleaned up with a line, once a resume has passed its checks (a refused
resume changes nothing): until then `step-N.old` stands in for a missing `step-N`.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftlab.errors import UserError
from sftlab.train import parallel
from sftlab.train.optim import set_scheduled_lr

STATE_FILE = "training_state.pt"
CHECKPOINT = re.compile(r"step-(\d+)")
LEFTOVER = re.compile(r"step-(\d+)\.(tmp|old)")


# ------------------------------------------------------------------------------------------ save


def save_model_dir(path: Path, engine: Any, tokenizer: Any, info: parallel.DistInfo,
                   extra: dict[str, Any] | None = None, optimizer: Any = None) -> None:
    """Write an HF-layout directory atomically (temp dir + rename): a crash never leaves a half checkpoint.
    Every rank must call this (FSDP gathers the shards)."""
    state = parallel.full_state_dict(engine, info)
    tmp = path.with_name(path.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        parallel.unwrap(engine).model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
    parallel.barrier(info)
    if optimizer is not None:
        # Optimizer state: one file per rank (sharded under FSDP; identical under DDP, so only rank 0 writes).
        sharded = parallel.is_sharded(engine)
        if info.is_main or sharded:
            name = f"optimizer.rank{info.rank}.pt" if sharded else "optimizer.pt"
            torch.save(optimizer.state_dict(), tmp / name)
    parallel.barrier(info)
    if info.is_main:
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    parallel.barrier(info)


def save_checkpoint(path: Path, step: int, engine: Any, tokenizer: Any, optimizer: Any, scheduler: Any,
                    info: parallel.DistInfo, run_state: dict[str, Any]) -> Path:
    """A resumable checkpoint at `path` (every rank calls it): the model dir, the optimizer, the schedule, every
    rank's RNG state and `run_state` (world size, fingerprint, derived values, early stopping)."""
    rng = parallel.all_gather_object(rng_state(), info)  # per rank: dropout masks differ between ranks
    state = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng, **run_state}
    save_model_dir(path, engine, tokenizer, info, extra=state, optimizer=optimizer)
    return path


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) random states: a resume continues the same streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ resume


def find_resume_dir(run_dir: Path, resume: str | None) -> Path | None:
    """`auto`: the newest complete checkpoint in RUN/checkpoints, counting the `step-N.old` that
    `tidy_checkpoints` will restore as step-N (none: start fresh); else the given dir. Read its files from
    `checkpoint_files(path)` until the tidy has run."""
    if not resume:
        return None
    if resume == "auto":
        restored = [(int(CHECKPOINT.fullmatch(final.name).group(1)), final)
                    for final in leftovers(run_dir).values() if final is not None]
        ckpts = sorted(complete_checkpoints(run_dir) + restored)  # never step-N.tmp
        return ckpts[-1][1] if ckpts else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        raise UserError(f"train.resume: {resume} is not a checkpoint directory (no {STATE_FILE})")
    return p


def checkpoint_files(ckpt: Path) -> Path:
    """Where a checkpoint's files are now: the dir itself, or the `step-N.old` copy a kill left in its place
    (renamed to step-N by `tidy_checkpoints` when the run goes ahead)."""
    old = ckpt.with_name(ckpt.name + ".old")
    return old if not ckpt.exists() and (old / STATE_FILE).is_file() else ckpt


def read_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's training_state.pt."""
    return torch.load(checkpoint_files(ckpt) / STATE_FILE, weights_only=False)


def restore(ckpt: Path, optimizer: Any, scheduler: Any, info: parallel.DistInfo, engine: Any) -> tuple[int, dict]:
    """Load a checkpoint's optimizer, schedule and this rank's RNG state; returns (its step, its state file)."""
    state = read_state(ckpt)
    if state.get("world_size", 1) != info.world_size:
        raise UserError(f"train.resume: {ckpt} was written with world size {state.get('world_size')}, "
                        f"this run has {info.world_size}; resume with the same number of processes")
    sharded = parallel.is_sharded(engine)
    opt_file = ckpt / (f"optimizer.rank{info.rank}.pt" if sharded else "optimizer.pt")
    optimizer.load_state_dict(torch.load(opt_file, weights_only=False))
    scheduler.load_state_dict(state["scheduler"])
    # the restored optimizer and scheduler hold the checkpoint's lr for the next step, from the old run length:
    # take it from this run's schedule (max_steps / num_train_epochs may have changed; same value otherwise)
    set_scheduled_lr(optimizer, scheduler)
    set_rng_state(state.get("rng_per_rank", [state["rng"]] * info.world_size)[info.rank])
    return int(state["step"]), state


# ------------------------------------------------------------------------------------------ which count


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete `step-<int>` checkpoint in RUN/checkpoints, oldest first."""
    out = []
    for p in (run_dir / "checkpoints").glob("step-*"):
        m = CHECKPOINT.fullmatch(p.name)
        if m and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def leftovers(run_dir: Path) -> dict[Path, Path | None]:
    """What a kill in the save window left in RUN/checkpoints: {leftover: the checkpoint it is restored as, or
    None when it is to be removed}. `step-N.old` is the previous complete copy of step-N (restored when step-N is
    missing); `step-N.tmp` is possibly half-written."""
    out: dict[Path, Path | None] = {}
    for p in sorted((run_dir / "checkpoints").glob("step-*")):
        m = LEFTOVER.fullmatch(p.name)
        if m is None:
            continue
        final = p.with_name(f"step-{m.group(1)}")
        restorable = m.group(2) == "old" and not final.exists() and (p / STATE_FILE).is_file()
        out[p] = final if restorable else None
    return out


def tidy_checkpoints(run_dir: Path) -> None:
    """Deal with what a kill in the save window left (`leftovers`; rank 0 only, once the run goes ahead)."""
    for p, final in leftovers(run_dir).items():
        if final is not None:
            p.rename(final)
            print(f"checkpoints: restored {final.name} from {p.name} (left by a kill while saving)")
        else:
            shutil.rmtree(p, ignore_errors=True)
            print(f"checkpoints: removed {p.name} (an incomplete save left by a kill)")


def prune(run_dir: Path, limit: int | None, keep: Path | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (0 / None: all). `keep` (the one just written) and
    best/ are never deleted."""
    if not limit:
        return
    ckpts = complete_checkpoints(run_dir)
    for _, p in ckpts[:-limit]:
        if keep is None or p.resolve() != keep.resolve():
            shutil.rmtree(p, ignore_errors=True)
