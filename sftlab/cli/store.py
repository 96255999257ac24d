"""`sftlab data render-cache CONFIG`: render a training config's data into the store cache ahead of training."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.apps import data_app


@data_app.command("render-cache", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def render_cache_cmd(ctx: typer.Context,
                     config: Path = typer.Argument(..., help="training config (or run plan with stages:)"),
                     num_proc: int = typer.Option(None, "--num-proc", min=1, help="rendering processes (default: "
                                                  "data.num_proc, else all cores)"),
                     verify: bool = typer.Option(False, "--verify", help="check every found store's content "
                                                 "checksums (reads it whole); a damaged one is rendered again")
                     ) -> None:
    """Build (or find) the rendered store of every train/eval source, so `sftlab train` starts from the cache.
    Extra arguments are dotted overrides (data.max_length=1024), as for `sftlab train`."""
    from rich.console import Console  # lazy: start-up (rich, pydantic, torch, transformers)
    from rich.table import Table

    from sftlab.config import load_config, read_config_file  # lazy: start-up
    from sftlab.train.dataset import render_cache
    from sftlab.train.plan import plan_configs

    raw = read_config_file(config)
    if "stages" in raw:
        configs = [c for _, c in plan_configs(raw, list(ctx.args), source=str(config))]
    else:
        configs = [load_config(config, list(ctx.args))]
    sources = render_cache(configs, num_proc, verify=verify)
    table = Table("split", "source", "samples", "tokens", "cache", "store")
    for s in sources:
        table.add_row(s.split, s.path, str(s.samples), str(s.tokens), s.cache, s.store)
    Console().print(table)
    for s in sources:
        if s.note:
            typer.echo(s.note)
