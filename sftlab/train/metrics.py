"""Where training metrics go: `RUN/metrics.jsonl` (always), TensorBoard, W&B and MLflow (when asked for),
and a live view in the terminal.

The training loop builds one flat dict per logging step and hands the same dict to `MetricsWriter.log`
and `LiveView.update`; nothing here computes metrics. Only rank 0 should create these objects.

Record shapes (the run-directory contract, read back by `sftlab report`):
  train: {"step", "epoch", "loss", "grad_norm", "lr", "tokens_per_s", "padding_ratio", "loss/<channel>",
          "loss_share/<channel>", "token_share/<channel>", "loss_unweighted" (with train.task_weights), ...}
  eval:  {"step", "eval_loss", "eval_loss/<channel>", "eval_<set>_loss", ...}
  alarm: {"step", "alarm", "message"}
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from sftlab.errors import UserError
from sftlab.io import write_text

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def is_number(v: Any) -> bool:
    """True for ints and floats (bools are not metrics)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl and the number of unreadable lines skipped.

    A run that is still training (or crashed mid-write) can end with a partial line; readers skip it
    instead of failing, so a report can be made of a live run."""
    records: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the lines of `path` logged after `last_step` (and any partial line); returns lines kept.

    A resumed run restarts from its checkpoint step, so what the interrupted run logged after that step
    would otherwise appear twice. Rewritten through a temporary file so a crash here loses nothing."""
    path = Path(path)
    if not path.exists():
        return 0
    kept: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            step = rec.get("step")
            if is_number(step) and step > last_step:
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    write_text("".join(kept), path)
    return len(kept)


def _mlflow_key(key: str) -> str:
    """MLflow metric names allow letters, digits, '_', '-', '.', ' ', '/' only ('@eot' becomes '_eot')."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


class MetricsWriter:
    """Writes every record to metrics.jsonl (flushed per line) and to the configured trackers.

    `wandb` / `mlflow` are option dicts (None = off). W&B: project, name, entity, group, tags, mode
    ("offline" works without a network; WANDB_MODE is respected when mode is not given), config.
    MLflow: tracking_uri (default: file store RUN/mlruns), experiment, run_name, params.
    `resume_from_step`: the checkpoint step a resumed run restarts from; later lines are dropped
    from metrics.jsonl and TensorBoard, and the same W&B / MLflow run is continued.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, wandb: dict[str, Any] | None = None,
                 mlflow: dict[str, Any] | None = None, resume_from_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        resuming = resume_from_step is not None
        if resuming:
            truncate_metrics(self.path, int(resume_from_step))
        else:  # a fresh run into an existing dir must not append to an old run's curves
            self.path.unlink(missing_ok=True)
            if tensorboard:
                for old in (self.run_dir / TB_DIR).glob("events.out.tfevents.*"):
                    old.unlink()
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives until close)
        self._tb = None
        self._wandb = None
        self._mlflow = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: optional extra (tensorboard)

            # purge_step makes TensorBoard hide the interrupted run's events after the checkpoint.
            self._tb = SummaryWriter(str(self.run_dir / TB_DIR), flush_secs=30,
                                     purge_step=int(resume_from_step) + 1 if resuming else None)
        try:
            if wandb is not None:
                self._wandb = self._start_wandb(dict(wandb), resuming)
            if mlflow is not None:
                self._mlflow = self._start_mlflow(dict(mlflow), resuming)
        except BaseException:
            self.close()  # no half-open writer (open file, running W&B run) left behind
            raise

    # -- trackers -------------------------------------------------------------------------------
    def _start_wandb(self, opts: dict[str, Any], resuming: bool) -> Any:
        try:
            import wandb  # lazy: optional extra
        except ImportError:
            raise UserError("W&B logging is configured but wandb is not installed: pip install wandb "
                            "(or remove wandb from train.report_to)") from None
        id_file = self.run_dir / "wandb_run_id"
        kwargs: dict[str, Any] = {
            "project": opts.pop("project", "sftlab"),
            "name": opts.pop("name", self.run_dir.name),
            "dir": str(self.run_dir),
            "config": opts.pop("config", None),
        }
        for k in ("entity", "group", "tags", "mode", "notes"):
            if k in opts:
                kwargs[k] = opts.pop(k)
        if opts:
            raise UserError(f"unknown W&B option(s): {', '.join(sorted(opts))}")
        if resuming and id_file.exists():
            kwargs.update(id=id_file.read_text().strip(), resume="allow")
        run = wandb.init(**kwargs)
        id_file.write_text(run.id)
        return run

    def _start_mlflow(self, opts: dict[str, Any], resuming: bool) -> Any:
        try:
            import mlflow  # lazy: optional extra
        except ImportError:
            raise UserError("MLflow logging is configured but mlflow is not installed: pip install mlflow "
                            "(or remove mlflow from train.report_to)") from None
        id_file = self.run_dir / "mlflow_run_id"
        mlflow.set_tracking_uri(opts.pop("tracking_uri", (self.run_dir / "mlruns").resolve().as_uri()))
        mlflow.set_experiment(opts.pop("experiment", "sftlab"))
        run_name = opts.pop("run_name", self.run_dir.name)
        params = opts.pop("params", None)
        if opts:
            raise UserError(f"unknown MLflow option(s): {', '.join(sorted(opts))}")
        if resuming and id_file.exists():
            run = mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            run = mlflow.start_run(run_name=run_name)
            if params:
                mlflow.log_params(params)
        id_file.write_text(run.info.run_id)
        return mlflow

    # -- logging --------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one record (train, eval or alarm line) everywhere. `step` is the x axis."""
        if self._file is None:
            raise RuntimeError("MetricsWriter is closed")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        scalars = {k: float(v) for k, v in record.items() if k != "step" and is_number(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            if "alarm" in record:
                self._tb.add_text("alarms", f"**{record['alarm']}**: {record.get('message', '')}", step)
        if self._wandb is not None:
            payload: dict[str, Any] = dict(scalars)
            if "alarm" in record:
                payload["alarm"] = f"{record['alarm']}: {record.get('message', '')}"
            if payload:
                self._wandb.log(payload, step=step)
        if self._mlflow is not None:
            finite = {_mlflow_key(k): v for k, v in scalars.items() if math.isfinite(v)}
            if finite:
                self._mlflow.log_metrics(finite, step=step)

    def close(self) -> None:
        """Flush and close everything (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- live view -------------------------------------------------------------------------------------

def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _fmt(v: Any, spec: str = ".4f") -> str:
    return format(v, spec) if is_number(v) else "-"


class LiveView:
    """What a person watching the terminal needs: progress, loss, lr, tokens/s, ETA, the worst channels.

    On a TTY this is a rich Live panel; elsewhere (CI, `nohup`, redirected logs) it prints one plain line
    every `plain_every` train records (default: ~20 lines per run), plus every eval record and alarm.
    """

    def __init__(self, total_steps: int, top_k: int = 6, plain_every: int | None = None,
                 stream: TextIO | None = None, force_terminal: bool | None = None) -> None:
        self.total_steps = max(1, int(total_steps))
        self.top_k = top_k
        self.stream = stream if stream is not None else sys.stdout
        self.plain_every = plain_every or max(1, self.total_steps // 20)
        self.last: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.alarms: list[dict[str, Any]] = []
        self._t0: float | None = None
        self._step0 = 0
        self._n_train = 0
        self._console = Console(file=self.stream, force_terminal=force_terminal)
        self.interactive = self._console.is_terminal
        self._live = None
        if self.interactive:
            self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
            self._live.start()

    # -- state --------------------------------------------------------------------------------------
    def eta_seconds(self) -> float | None:
        """Remaining time from the mean seconds/step since the first record (None until measurable)."""
        step = self.last.get("step")
        if self._t0 is None or not is_number(step) or step <= self._step0:
            return None
        per_step = (time.monotonic() - self._t0) / (step - self._step0)
        return per_step * max(0, self.total_steps - step)

    def top_channels(self) -> list[tuple[str, float, float | None]]:
        """(channel, train loss, eval loss or None), highest train loss first."""
        rows = []
        for k, v in self.last.items():
            if k.startswith("loss/") and is_number(v):
                ch = k[len("loss/"):]
                ev = self.last_eval.get(f"eval_loss/{ch}")
                rows.append((ch, float(v), float(ev) if is_number(ev) else None))
        rows.sort(key=lambda r: -r[1] if math.isfinite(r[1]) else -math.inf)
        return rows[: self.top_k]

    def update(self, record: dict[str, Any]) -> None:
        """Take one record (train, eval or alarm) and refresh the view."""
        if "alarm" in record:
            self.alarms.append(record)
            if not self.interactive:
                self._print(f"ALARM step {record.get('step')} {record['alarm']}: {record.get('message', '')}")
        elif any(k.startswith("eval_") for k in record):
            self.last_eval = dict(record)
            if not self.interactive:
                evs = " ".join(f"{k}={_fmt(v)}" for k, v in record.items()
                               if k.startswith("eval_") and "/" not in k and is_number(v))
                self._print(f"eval step {record.get('step')} {evs}")
        else:
            if self._t0 is None:
                self._t0 = time.monotonic()
                self._step0 = int(record.get("step", 0))
            self.last = dict(record)
            self._n_train += 1
            step = record.get("step")
            if not self.interactive and (self._n_train % self.plain_every == 0 or step == self.total_steps
                                         or self._n_train == 1):
                self._print(self.plain_line())
        if self._live is not None:
            self._live.update(self._render())

    def plain_line(self) -> str:
        """The one-line summary printed in non-interactive mode."""
        r = self.last
        step = r.get("step", 0)
        worst = ", ".join(f"{c}={v:.3f}" for c, v, _ in self.top_channels()[:3])
        parts = [f"step {step}/{self.total_steps}", f"loss {_fmt(r.get('loss'))}", f"lr {_fmt(r.get('lr'), '.2e')}",
                 f"grad {_fmt(r.get('grad_norm'), '.3f')}", f"tok/s {_fmt(r.get('tokens_per_s'), ',.0f')}",
                 f"eta {_fmt_duration(self.eta_seconds())}"]
        if worst:
            parts.append(f"worst: {worst}")
        return " | ".join(parts)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _render(self) -> Any:
        r = self.last
        step = int(r.get("step", 0) or 0)
        head = Table.grid(padding=(0, 2))
        for _ in range(6):
            head.add_column()
        head.add_row(f"[bold]step[/] {step}/{self.total_steps}", f"[bold]epoch[/] {_fmt(r.get('epoch'), '.2f')}",
                     f"[bold]loss[/] {_fmt(r.get('loss'))}", f"[bold]lr[/] {_fmt(r.get('lr'), '.2e')}",
                     f"[bold]tok/s[/] {_fmt(r.get('tokens_per_s'), ',.0f')}",
                     f"[bold]ETA[/] {_fmt_duration(self.eta_seconds())}")
        ev = self.last_eval
        sub = [f"grad_norm {_fmt(r.get('grad_norm'), '.3f')}", f"padding {_fmt(r.get('padding_ratio'), '.1%')}"]
        if is_number(ev.get("eval_loss")):
            sub.append(f"eval_loss {_fmt(ev['eval_loss'])} (step {ev.get('step')})")
        bar = Table.grid(expand=True)
        bar.add_column(ratio=1)
        bar.add_column(justify="right", width=6)
        bar.add_row(ProgressBar(total=self.total_steps, completed=step), f"{step / self.total_steps:.0%}")
        parts: list[Any] = [head, bar, "  ".join(sub)]
        chans = self.top_channels()
        if chans:
            t = Table(title="highest-loss channels", title_justify="left", box=None, pad_edge=False)
            t.add_column("channel")
            t.add_column("train loss", justify="right")
            t.add_column("eval loss", justify="right")
            for c, v, e in chans:
                t.add_row(c, f"{v:.4f}", "-" if e is None else f"{e:.4f}")
            parts.append(t)
        for a in self.alarms[-3:]:
            parts.append(f"[bold red]ALARM[/] step {a.get('step')} {a['alarm']}: {a.get('message', '')}")
        return Panel(Group(*parts), title="sftlab train", border_style="cyan")

    def close(self) -> None:
        """Stop the live display (leaves the final panel on screen)."""
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
