"""Top-level commands: tiny-model, train, demo, generate, export, report."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli_apps import app


@app.command("tiny-model")
def tiny_model(out_dir: Path = typer.Argument(..., help="Where to write the model (HF layout)."),
               texts: Path | None = typer.Option(None, help="Text file (one text per line) to train the BPE on."),
               vocab_size: int = typer.Option(1024), hidden_size: int = typer.Option(128),
               num_layers: int = typer.Option(4), seed: int = typer.Option(0)) -> None:
    """Build a tiny Llama model + locally trained BPE tokenizer with a ChatML template."""
    from sftlab.tiny import build_tiny_model

    lines = None
    if texts is not None:
        lines = [ln for ln in texts.read_text(encoding="utf-8").splitlines() if ln.strip()]
    path = build_tiny_model(out_dir, lines, vocab_size=vocab_size, hidden_size=hidden_size,
                            num_layers=num_layers, seed=seed)
    typer.echo(f"tiny model written to {path}")
