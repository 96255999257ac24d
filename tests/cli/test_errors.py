"""The error boundary of every command (sftlab/cli/__init__.py): an unexpected exception is one line naming it,
a usage error is click's usage line; exit 1 / 2, never a traceback."""

from __future__ import annotations

from cli_helpers import run_sftlab


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    import sftlab.cli.data as data_cli

    def boom(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(data_cli, "_read", boom)
    code, _, err = run_sftlab(capsys, "data", "inspect", "x.jsonl")
    assert code == 1 and err.startswith("error: input nested too deeply: RecursionError") and err.count("\n") == 1


def test_usage_errors_are_usage_lines(capsys):
    code, _, err = run_sftlab(capsys, "data", "convrt", "x")
    assert code == 2 and "Usage: sftlab data" in err and "No such command 'convrt'" in err
    code, _, err = run_sftlab(capsys, "train", "--nope")
    assert code == 2 and "No such option: --nope" in err and "config file not found" not in err
    code, _, err = run_sftlab(capsys, "train", "cfg.yaml", "--nope")
    assert code == 2 and "No such option: --nope" in err
