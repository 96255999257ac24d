"""Run-directory ownership and resume checks: a run never overwrites another run, and never resumes one.

- A new run refuses an output_dir that already holds something, unless `train.resume` is set (continue
  the run there) or `train.overwrite_output_dir=true` (HF's name; the old run's outputs are deleted first,
  so no stale checkpoint can be resumed later).
- Every checkpoint records a fingerprint of what decides the training trajectory: the data files'
  content, the model, and every setting except the few listed in RESUMABLE. A resume compares it with
  this run's and refuses with a one-line diff: one value is never recorded while another is used.

Which checkpoints count, and what one holds: sftlab/train/checkpoint.py.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from sftlab.config import RunConfig
from sftlab.errors import UserError

# What a run writes into its output_dir (deleted by train.overwrite_output_dir=true).
RUN_OUTPUTS = ("checkpoints", "final", "best", "tb", "mlruns", "wandb", "metrics.jsonl", "config.yaml",
               "data_summary.json", "data_cache.json", "wandb_run_id", "mlflow_run_id", "report.html", "report", "eval_results.json")

# Settings that may change on resume; they change what is logged, evaluated or saved, or the run's length
# (max_steps / num_train_epochs: the lr schedule is stretched to the new length from the resume step on).
# Any other change (data content, model, learning rate, batch, seed, ...) refuses the resume.
RESUMABLE = ("train.output_dir", "train.resume", "train.overwrite_output_dir", "train.max_steps",
             "train.num_train_epochs", "train.logging_steps", "train.eval_steps", "train.save_steps",
             "train.save_total_limit", "train.report_to", "train.wandb", "train.mlflow", "train.early_stopping",
             "train.health", "train.eval_on_start", "train.device", "train.gradient_checkpointing",
             "train.loss_chunk_size", "train.torch_compile", "train.eval_generate", "data.eval", "data.num_proc",
             "data.cache_dir", "model.attn_implementation", "model.fused_ops", "train.fsdp.reshard_after_forward")
BATCH_SPLIT = ("train.per_device_train_batch_size", "train.gradient_accumulation_steps", "train.global_batch_size")


# ------------------------------------------------------------------------------------------ ownership


def claim_run_dir(run_dir: Path, cfg: RunConfig, is_main: bool) -> None:
    """Refuse to start a new run in a directory that holds one (call on every rank, then barrier)."""
    if not run_dir.is_dir():
        return
    model = Path(cfg.model.name_or_path).expanduser().resolve()
    inputs = {model.relative_to(run_dir.resolve()).parts[0]} if model.is_relative_to(run_dir.resolve()) else set()
    # a run plan writes the stage's input model into the stage dir (init/): that is this run's, not another's
    # what every start writes before its checks end (data_cache.json, rejects) is rewritten by the next start: a run
    # that failed at start-up does not own the dir
    startup = {"data_cache.json"} | {p.name for p in run_dir.glob("rejects-*.jsonl")}
    entries = sorted(p.name for p in run_dir.iterdir()
                     if not p.name.startswith(".write-test-") and p.name not in inputs | startup)
    if not entries or cfg.train.resume:
        return
    if not cfg.train.overwrite_output_dir:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise UserError(f"train.output_dir: {run_dir} is not empty ({shown}); continue that run with "
                        "train.resume=auto, replace it with train.overwrite_output_dir=true, or choose another "
                        "train.output_dir")
    if is_main:
        removed = []
        for p in [run_dir / n for n in RUN_OUTPUTS] + sorted(run_dir.glob("rejects-*.jsonl")):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                continue
            removed.append(p.name)
        print(f"train.overwrite_output_dir: removed the previous run's {', '.join(removed) or 'nothing'} from {run_dir}")


# ------------------------------------------------------------------------------------------ fingerprint


def _file_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and content, sorted): an HF datasets dir."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def flatten(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for i, v in enumerate(tree):
            flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = tree


def fingerprint(cfg: RunConfig, global_batch: int) -> dict[str, Any]:
    """What decides this run's trajectory, as flat dotted keys: the settings outside RESUMABLE, the
    model (a local path resolved), a content hash per training data file (its path may move), and the
    global batch (how it splits into micro-batches and accumulation steps does not change the
    trajectory: the loss contract, docs/DESIGN.md section 2)."""
    flat: dict[str, Any] = {}
    flatten(cfg.model_dump(mode="json"), "", flat)
    out = {k: v for k, v in flat.items()
           if not any(k == r or k.startswith(r + ".") or k.startswith(r + "[") for r in RESUMABLE + BATCH_SPLIT)}
    out["train.global_batch_size"] = global_batch
    name = cfg.model.name_or_path
    if Path(name).expanduser().exists():
        out["model.name_or_path"] = str(Path(name).expanduser().resolve())
    for i, src in enumerate(cfg.data.train):
        del out[f"data.train[{i}].path"]
        path = Path(src.path)
        out[f"data.train[{i}].sha256"] = _file_digest(path) if path.exists() else None
    return out


# Settings the loop derives when they are unset (setup.Run.resolved) and RUN/config.yaml then records:
# a resume from that config.yaml sets them explicitly, which is no change when the values are the ones used.
DERIVED = ("train.warmup_steps", "train.weight_decay")


def check_resume(ckpt: Path, state: dict[str, Any], current: dict[str, Any], total_steps: int,
                 world_size: int, resolved: dict[str, Any] | None = None) -> None:
    """Refuse a resume from a checkpoint of another run (a one-line diff of what differs). `resolved`: this run's
    derived values (setup.Run.resolved), compared with the checkpoint's for the DERIVED settings."""
    if state.get("world_size", 1) != world_size:
        raise UserError(f"train.resume: {ckpt} was written with world size {state.get('world_size')}, "
                        f"this run has {world_size}; resume with the same number of processes")
    saved, step = state.get("fingerprint"), int(state["step"])
    if saved is None:
        print(f"warning: {ckpt} has no run fingerprint (written by an older sftlab); its settings are not checked")
    else:
        diffs = []
        # a setting only one side knows (added or removed by another sftlab version) is not a difference;
        # a training data file added or removed is
        keys = (set(saved) & set(current)) | {k for k in set(saved) ^ set(current) if k.startswith("data.train[")}
        for k in sorted(keys):
            a, b = saved.get(k, "(unset)"), current.get(k, "(unset)")
            if a != b and k in DERIVED and resolved is not None and k in state.get("resolved", {}) \
                    and state["resolved"][k] == resolved.get(k):
                continue  # e.g. warmup_steps 0 (from warmup_ratio) then 2 (RUN/config.yaml): the same 2 steps
            if a != b:
                diffs.append(f"{k}: content changed" if k.endswith(".sha256") else f"{k}: {a!r} -> {b!r}")
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise UserError(f"train.resume: {ckpt} belongs to a run with other settings ({shown}); only "
                            f"{', '.join(RESUMABLE[3:] + BATCH_SPLIT[:2])} may change on resume. "
                            "Undo the change, or start a new run (another train.output_dir, or "
                            "train.overwrite_output_dir=true)")
    if step > total_steps:
        raise UserError(f"train.resume: {ckpt} is at step {step}, past the end of this run ({total_steps} "
                        "steps); raise train.max_steps / num_train_epochs or start a new run")
