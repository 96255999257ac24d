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
    from rich.console import Console
    from rich.table import Table

    from sftlab.config import load_config, read_config_file
    from sftlab.data.render import load_tokenizer
    from sftlab.data.store import RenderSettings, build_or_open, tokenizer_hash

    raw = read_config_file(config)
    if "stages" in raw:
        from sftlab.train.plan import plan_configs

        configs = [c for _, c in plan_configs(raw, list(ctx.args), source=str(config))]
    else:
        configs = [load_config(config, list(ctx.args))]
    # Later stages of a plan start from the previous stage's checkpoint, which carries the same tokenizer:
    # the first stage's tokenizer renders every stage.
    first = configs[0].model
    tokenizer = load_tokenizer(first.name_or_path, first.chat_template, first.special_tokens, first.eot_token)
    digest = tokenizer_hash(tokenizer)
    table = Table("split", "source", "samples", "tokens", "cache", "store")
    notes: list[str] = []  # what rendering left out, per source: nothing is dropped silently
    seen: set[tuple] = set()
    for cfg in configs:
        settings = RenderSettings(max_length=cfg.data.max_length, train_on=cfg.data.train_on, loss=cfg.train.loss,
                                  on_error=cfg.data.on_error, extra_roles=tuple(cfg.data.extra_roles))
        for split, sources in (("train", cfg.data.train), ("eval", cfg.data.eval)):
            for k, src in enumerate(sources):
                if (src.path, src.format, src.task_type, settings, cfg.data.cache_dir) in seen:
                    continue
                seen.add((src.path, src.format, src.task_type, settings, cfg.data.cache_dir))
                got = build_or_open(src, tokenizer, settings, cfg.data.cache_dir, num_proc or cfg.data.num_proc,
                                    tokenizer_digest=digest, label=f"data.{split}[{k}]", verify=verify)
                m = got.store.manifest
                state = ("hit, verified" if got.store.verified else "hit") if got.hit else \
                    f"rendered in {m['render']['seconds']:.1f} s"
                table.add_row(split, str(src.path), str(m["samples"]), str(m["num_tokens"]), state,
                              str(got.store.path))
                lost = [f"{m['truncated']} truncated to max_length ({m['turns_truncated_away']} turns lost)"] \
                    if m.get("truncated") else []
                lost += [f"{m['history_truncated']} shortened by dropping {m['exchanges_dropped']} oldest exchanges "
                         "(last_assistant)"] if m.get("history_truncated") else []
                lost += [f"dropped {n}: {why}" for why, n in sorted(m.get("dropped", {}).items())]
                lost += [f"rejected {m['read_rejects']} when read"] if m.get("read_rejects") else []
                if lost:
                    notes.append(f"data.{split}[{k}] {src.path}: {m['records']} records -> {m['samples']} samples; "
                                 + "; ".join(lost))
    Console().print(table)
    for note in notes:
        typer.echo(note)
