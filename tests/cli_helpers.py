"""Run the `sftlab` CLI in-process and capture its exit code and output (shared by the CLI tests)."""

from __future__ import annotations

from sftlab.cli import main


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sftlab ARGS`; a user error is exit 2, never a traceback."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
