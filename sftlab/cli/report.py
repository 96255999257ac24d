"""`sftlab report RUN_DIR` (observability)."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.apps import app


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="A run directory written by `sftlab train`."),
           out: Path | None = typer.Option(None, "--out", "-o",
                                           help="Where to write the HTML (default: RUN_DIR/report.html).")) -> None:
    """Write a self-contained HTML report of a run (loss curves per channel, alarms, data, config)."""
    from sftlab.report import write_report  # lazy: start-up

    typer.echo(str(write_report(run_dir, out)))
