"""Run directories as the Runs page sees them: found under the given dirs, their state (running / finished / stopped /
failed), step, ETA, alarms and what is wrong with them, the resolved config and a diff of two configs.

Everything is read from the files `sftlab train` writes (config.yaml, metrics.jsonl, data_summary.json,
checkpoints/, final/); a run dir that is missing, half-written or damaged gives notes, never an exception.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftlab.ui.curves import MetricsIndex, is_number

RUN_FILES = ("metrics.jsonl", "config.yaml", "data_summary.json")
SKIP_DIRS = {"checkpoints", "final", "best", "tb", "mlruns", "wandb", "review", "node_modules", "__pycache__"}
STEP_DIR = re.compile(r"step-(\d+)")
QUIET_S = 300.0  # a run that wrote nothing for this long (and at least 20 logging intervals) is no longer running


@dataclass
class RunStatus:
    state: str  # running | finished | stopped | failed | empty
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    alarms: int = 0
    updated: float | None = None  # unix time of the last write
    why: str = ""  # one line on how the state was decided
    notes: list[str] = field(default_factory=list)  # what is wrong with the run dir


def is_run_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in RUN_FILES) or (path / "checkpoints").is_dir()


def walk_dirs(root: Path, depth: int = 4) -> list[Path]:
    """root and its sub-directories down to `depth` levels, skipping what runs and evals keep inside them."""
    out = [root]
    if depth == 0:
        return out
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return out
    for child in children:
        if child.name not in SKIP_DIRS:
            out += walk_dirs(child, depth - 1)
    return out


def read_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """(config tree, raw text, notes) of RUN/config.yaml."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, None, ["no config.yaml (the run has not got past its start-up checks, or the dir is incomplete)"]
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return None, text, [f"config.yaml is not valid YAML ({str(e).splitlines()[0]})"]
    if not isinstance(tree, dict):
        return None, text, ["config.yaml is empty or not a mapping"]
    return tree, text, []


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train.learning_rate': 0.001, ...}: the dotted keys users write as overrides."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def configs_diff(configs: list[dict[str, Any] | None]) -> list[tuple[str, list[Any]]]:
    """(dotted key, the value in each config) for every setting that is not the same in all ('-' where a config
    lacks it; train.output_dir differs by construction and is left out)."""
    flat = [flatten(c or {}) for c in configs]
    keys = sorted(set().union(*flat) - {"train.output_dir"})
    rows = [(k, [f.get(k, "-") for f in flat]) for k in keys]
    return [(k, vs) for k, vs in rows if any(v != vs[0] for v in vs)]


def _checkpoints(run_dir: Path) -> tuple[list[tuple[int, float]], list[str]]:
    """(step, mtime) of complete checkpoints, and the names of emergency checkpoints (a non-finite loss)."""
    done, emergency = [], []
    ck = run_dir / "checkpoints"
    if ck.is_dir():
        for p in ck.iterdir():
            if p.name.startswith("emergency-"):
                emergency.append(p.name)
            m = STEP_DIR.fullmatch(p.name)
            if m and (p / "training_state.pt").exists():
                done.append((int(m.group(1)), p.stat().st_mtime))
    return sorted(done), sorted(emergency)


def _has_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _total_steps(cfg: dict[str, Any] | None, last: dict[str, Any]) -> int | None:
    train = (cfg or {}).get("train") or {}
    if is_number(train.get("max_steps")) and train["max_steps"] > 0:
        return int(train["max_steps"])
    step, epoch, epochs = last.get("step"), last.get("epoch"), train.get("num_train_epochs")
    if is_number(step) and is_number(epoch) and epoch > 0 and is_number(epochs):
        return math.ceil(round(step / epoch) * epochs)
    return None


def _seconds_per_step(index: MetricsIndex) -> float | None:
    """Tokens of a step / tokens per second over the recent logs (no wall-clock time is logged)."""
    speed = list(index.recent_speed)
    if not speed:
        return None
    return sum(t for t, _ in speed) / sum(s for _, s in speed)


def run_status(run_dir: Path, index: MetricsIndex, now: float | None = None) -> RunStatus:
    """The state of a run dir, decided from its files (see the module docstring)."""
    now = time.time() if now is None else now
    if not run_dir.is_dir():
        return RunStatus("failed", why="missing", notes=[f"{run_dir}: the directory is gone"])
    index.refresh()
    cfg, _, notes = read_config(run_dir)
    notes += index.problems()
    last, last_eval = index.last_train, index.last_eval
    ckpts, emergency = _checkpoints(run_dir)
    mtimes = [p.stat().st_mtime for p in (run_dir / f for f in (*RUN_FILES, "checkpoints")) if p.exists()]
    updated = max(mtimes + [m for _, m in ckpts], default=None)
    st = RunStatus("empty", step=last.get("step"), total_steps=_total_steps(cfg, last), loss=last.get("loss"),
                   eval_loss=last_eval.get("eval_loss"), alarms=len(index.alarms), updated=updated, notes=notes)
    per_step = _seconds_per_step(index)
    every = ((cfg or {}).get("train") or {}).get("logging_steps")
    quiet = max(QUIET_S, 20 * (per_step or 0) * (every if is_number(every) else 1))
    if _has_model(run_dir / "final"):
        st.state, st.why = "finished", "final/ holds the trained model"
    elif emergency:
        st.state, st.why = "failed", f"a non-finite loss stopped it ({emergency[-1]} kept the last good state)"
    elif updated is not None and now - updated < quiet:
        st.state, st.why = "running", f"last write {now - updated:.0f} s ago"
        if st.total_steps and is_number(st.step) and per_step:
            st.eta_s = max(0.0, (st.total_steps - st.step) * per_step)
    elif ckpts and ckpts[-1][0] >= (st.step or 0) and ckpts[-1][1] >= max(mtimes, default=0) - 2:
        st.state, st.why = "stopped", (f"checkpoint step-{ckpts[-1][0]} is its last write; continue it with "
                                       "train.resume=auto")
    elif last or ckpts or cfg:
        st.state = "failed"
        st.why = (f"no final model and nothing written for {_ago(now - updated)} (crashed or killed?)"
                  if updated else "no final model")
    else:
        st.why = "no metrics, config or checkpoint yet"
        if not notes:
            st.notes.append("the directory holds none of metrics.jsonl, config.yaml, data_summary.json")
    return st


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def read_data_summary(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = run_dir / "data_summary.json"
    if not path.is_file():
        return None, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, [f"data_summary.json could not be read ({e})"]
    return (data, []) if isinstance(data, dict) else (None, ["data_summary.json is not a JSON object"])


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def data_files(cfg: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(split, path) of the data files a run config names."""
    out = []
    data = (cfg or {}).get("data") or {}
    for split in ("train", "eval"):
        for src in data.get(split) or []:
            path = src.get("path") if isinstance(src, dict) else src
            if isinstance(path, str):
                out.append((split, path))
    return out


def locate(path: str, run_dir: Path) -> Path | None:
    """A data path from a config: as written (relative to where training ran, unknown here), else relative to
    the run dir's parents."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), *run_dir.resolve().parents):
        if (base / p).exists():
            return base / p
    return None


def mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
