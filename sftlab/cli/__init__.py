"""The `sftlab` command line. Subcommands live in their own modules of this package and only parse arguments and call
library functions; this module wires them up and turns user errors into one-line messages."""

from __future__ import annotations

import os
import sys

import typer

# Command modules register themselves on the apps when imported (one module per command group).
from sftlab.cli import curate, data, estimate, report, train  # noqa: F401
from sftlab.cli.apps import app
from sftlab.errors import UserError


def main(argv: list[str] | None = None) -> None:
    """Entry point: `--debug` anywhere shows tracebacks; otherwise user errors print one line, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SFTLAB_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        app(args=argv, prog_name="sftlab", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        typer.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


__all__ = ["main"]
