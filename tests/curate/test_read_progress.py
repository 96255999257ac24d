"""Progress of the curation reads: a bar per pass on a terminal (with the first pass's count as the total of the
next ones), nothing when stderr is not a terminal, and no error when a read runs inside another."""

from __future__ import annotations

import io as stdio

from rich.console import Console

from sftlab import io
from sftlab.curate.files import reread_record_chunks
from sftlab.io import write_jsonl


def _input(tmp_path):
    recs = [{"id": f"r{i}", "task_type": "t", "messages": [{"role": "user", "content": f"q {i}"},
                                                           {"role": "assistant", "content": f"a {i}"}]}
            for i in range(50)]
    write_jsonl(recs, tmp_path / "in.jsonl")
    return tmp_path / "in.jsonl"


def test_each_pass_shows_a_bar_on_a_terminal(tmp_path, monkeypatch):
    screen = stdio.StringIO()
    monkeypatch.setattr(io, "progress_console", lambda: Console(file=screen, force_terminal=True, width=120))
    read = reread_record_chunks(_input(tmp_path), chunk_size=7, label="dedup")
    assert sum(len(c) for c in read()) == 50 and sum(len(c) for c in read()) == 50
    shown = screen.getvalue()
    assert "dedup, pass 1" in shown and "50/?" in shown  # the first pass does not know the total yet
    assert "dedup, pass 2" in shown and "50/50" in shown
    for _outer in read():  # a read inside another: the inner one draws nothing and does not fail
        assert sum(len(c) for c in read()) == 50
        break


def test_nothing_at_all_off_a_terminal(tmp_path, capsys):
    read = reread_record_chunks(_input(tmp_path), chunk_size=7, label="dedup")
    assert sum(len(c) for c in read()) == 50 and sum(len(c) for c in read()) == 50
    assert capsys.readouterr().err == ""  # not even the blank line rich prints when a live display stops


def test_progress_bars_print_nothing_off_a_terminal_and_draw_on_stderr(capfd, monkeypatch):
    """Every long loop's bar (render cache, generation, eval, judge, teacher) goes through io.progress_bar: off a
    terminal rich's Progress printed a blank line on stdout when it stopped, before the command's summary / JSON."""
    with io.progress_bar() as bar:
        task = bar.add_task("generate", total=3)
        bar.advance(task, 3)
    assert capfd.readouterr() == ("", "")
    screen = stdio.StringIO()
    monkeypatch.setattr(io, "progress_console", lambda: Console(file=screen, force_terminal=True, width=80))
    with io.progress_bar() as bar:
        bar.add_task("generate", total=3)
    assert capfd.readouterr().out == "" and "generate" in screen.getvalue()


def test_no_long_loop_builds_its_own_rich_progress():
    """One helper for every bar, in sftlab/io.py (so none prints on stdout off a terminal again)."""
    from pathlib import Path

    import sftlab

    root = Path(sftlab.__file__).parent
    own = [str(p.relative_to(root)) for p in root.rglob("*.py")
           if "Progress(" in p.read_text(encoding="utf-8") and p != root / "io.py"]
    assert own == []
