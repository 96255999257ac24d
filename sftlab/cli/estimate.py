"""`sftlab estimate`: memory per device (and, with --probe, the wall time) of a training config, before the run."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

from sftlab.cli.apps import app
from sftlab.errors import UserError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def estimate(ctx: typer.Context, config: Path = typer.Argument(..., help="YAML config (model/data/train)."),
             gpu: str | None = typer.Option(None, "--gpu", help="Device preset, e.g. h100-80gb, a100-40gb."),
             memory_gb: float | None = typer.Option(None, "--memory-gb", help="Memory per device (GiB)."),
             world_size: int = typer.Option(1, "--world-size", help="Processes (devices) in the run."),
             use_data: bool = typer.Option(True, "--data/--no-data",
                                           help="Use the real token lengths of data.train when present."),
             probe: int = typer.Option(0, "--probe", help="Train STEPS real steps and extrapolate the wall time."),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table.")) -> None:
    """Estimate memory per device (weights, gradients, optimizer, activations, loss head) and, with --probe,
    the time to train: `sftlab estimate CONFIG.yaml [overrides] --gpu h100-80gb [--probe 20] [--json]`."""
    from sftlab.config import load_config  # lazy: start-up (pydantic, torch, transformers)
    from sftlab.train.estimate import GIB, GPU_MEMORY_GIB, estimate_run

    cfg = load_config(config, list(ctx.args))
    if world_size < 1:
        raise UserError(f"--world-size must be >= 1 (got {world_size})")
    if memory_gb is not None and not memory_gb > 0:
        raise UserError(f"--memory-gb must be > 0 (got {memory_gb})")
    if gpu is not None and memory_gb is not None:
        raise UserError("give --gpu or --memory-gb, not both")
    if gpu is not None:
        if gpu.lower() not in GPU_MEMORY_GIB:
            raise UserError(f"--gpu {gpu!r} is not a known preset; use one of {', '.join(GPU_MEMORY_GIB)} "
                            "or --memory-gb N")
        memory_gb = GPU_MEMORY_GIB[gpu.lower()]
    memory = int(memory_gb * GIB) if memory_gb is not None else None
    # with --json, stdout carries only the JSON object: rendering / probe progress goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        est = estimate_run(cfg, world_size, memory, use_data=use_data, gpu=gpu)
        out = est.to_dict()
        if probe:
            from sftlab.train.probe import probe_run  # lazy: start-up

            out["probe"] = probe_run(cfg, probe, quiet=as_json, world_size=world_size)
    if as_json:
        typer.echo(json.dumps(out))
        return
    _print(est, gpu, out.get("probe"))


def _print(est, gpu: str | None, probe: dict | None) -> None:
    from rich.console import Console  # lazy: start-up (rich, and the estimator: torch)
    from rich.table import Table

    from sftlab.train.estimate import format_gib, rows_for_table  # lazy: start-up

    console = Console()
    where = f"{est.parallel} x {est.world_size}" if est.world_size > 1 else "one device"
    t = Table(title=f"memory per device, {where}; {est.basis}")
    t.add_column("term")
    t.add_column("size", justify="right")
    for label, n in rows_for_table(est):
        t.add_row(label, format_gib(n))
    t.add_row("[bold]total[/bold]", f"[bold]{format_gib(est.total_bytes)}[/bold]")
    console.print(t)
    console.print(f"params {est.params:,} (trainable {est.trainable_params:,}); activations without / with "
                  f"checkpointing {format_gib(est.activations_no_checkpointing_bytes)} / "
                  f"{format_gib(est.activations_checkpointing_bytes)}; full-logits loss head would be "
                  f"{format_gib(est.loss_head_full_logits_bytes)}; {est.flops_per_token / 1e9:.2f} GFLOP/token")
    if est.offloaded_bytes:
        console.print(f"train.fsdp.offload: {format_gib(est.offloaded_bytes)} in host memory per process")
    if est.memory_bytes is not None:
        name = gpu or format_gib(est.memory_bytes)
        verdict = "fits" if est.fits else "[red]does NOT fit[/red]"
        console.print(f"{name}: {verdict}; largest micro-batch that fits: {est.max_micro_batch}")
    for note in est.notes:
        console.print(f"warning: {note}" if note.startswith("does not fit") else f"note: {note}")
    if probe:
        console.print(f"probe: {probe['probe_steps']} steps, {probe['step_s']:.3f} s/step "
                      f"(peak memory {probe['memory_peak_gb']:.3f} GiB, {probe['memory_peak_source']}); "
                      f"full run of {probe['total_steps']} steps: {probe['predicted_s']:.0f} s "
                      f"± {probe['uncertainty_s']:.0f} s")
