"""The `sftlab` command line. Subcommands live in their own modules of this package and only parse arguments and call
library functions; this module wires them up and turns user errors into one-line messages."""

from __future__ import annotations

import os
import sys

import typer

# Command modules register themselves on the apps when imported (one module per command group).
from sftlab.cli import curate, data, estimate, eval, report, serve, store, synth, train, ui  # noqa: F401
from sftlab.cli.apps import app
from sftlab.errors import UserError


def _is_click(e: BaseException, name: str) -> bool:
    """isinstance by class name: typer may vendor its own copy of click, so click's classes may differ."""
    return any(c.__name__ == name for c in type(e).__mro__)


def main(argv: list[str] | None = None) -> None:
    """The one error boundary of every command. `--debug` anywhere (or SFTLAB_DEBUG=1) shows tracebacks;
    otherwise user errors print one line `error: ...` (exit 2), usage errors click's usage line (exit 2), and an
    unexpected exception one line naming it (exit 1)."""
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
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        if debug:
            raise
        typer.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        if _is_click(e, "Exit"):
            sys.exit(e.exit_code)
        if _is_click(e, "ClickException"):  # usage errors: the usage line and the reason, exit 2
            e.show()
            sys.exit(e.exit_code)
        if _is_click(e, "Abort"):
            sys.exit(1)
        if debug:
            raise
        what = {UnicodeError: "a text that is not valid Unicode", RecursionError: "input nested too deeply",
                MemoryError: "out of memory"}
        hint = next((v for k, v in what.items() if isinstance(e, k)), None)
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        typer.echo(f"error: {hint + ': ' if hint else 'internal error: '}{type(e).__name__}"
                   f"{': ' + msg if msg else ''} (rerun with --debug for the traceback"
                   f"{'' if hint else ' and please report it'})", err=True)
        sys.exit(1)


__all__ = ["main"]
