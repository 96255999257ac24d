"""The Typer apps that command modules register on (kept apart from cli.py to avoid import cycles)."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="sftlab: supervised fine-tuning done correctly — data, training, evaluation.")
data_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Load, inspect, render, convert and curate SFT data.")
app.add_typer(data_app, name="data")
