"""Progress of the curation reads: a bar per pass on a terminal (with the first pass's count as the total of the
next ones), nothing when stderr is not a terminal, and no error when a read runs inside another."""

from __future__ import annotations

import io as stdio

from rich.console import Console

from sftlab.data.curate import io
from sftlab.data.records import write_jsonl


def _input(tmp_path):
    recs = [{"id": f"r{i}", "task_type": "t", "messages": [{"role": "user", "content": f"q {i}"},
                                                           {"role": "assistant", "content": f"a {i}"}]}
            for i in range(50)]
    write_jsonl(recs, tmp_path / "in.jsonl")
    return tmp_path / "in.jsonl"


def test_each_pass_shows_a_bar_on_a_terminal(tmp_path, monkeypatch):
    screen = stdio.StringIO()
    monkeypatch.setattr(io, "progress_console", lambda: Console(file=screen, force_terminal=True, width=120))
    read = io.reread_record_chunks(_input(tmp_path), chunk_size=7, label="dedup")
    assert sum(len(c) for c in read()) == 50 and sum(len(c) for c in read()) == 50
    shown = screen.getvalue()
    assert "dedup, pass 1" in shown and "50/?" in shown  # the first pass does not know the total yet
    assert "dedup, pass 2" in shown and "50/50" in shown
    for _outer in read():  # a read inside another: the inner one draws nothing and does not fail
        assert sum(len(c) for c in read()) == 50
        break


def test_nothing_at_all_off_a_terminal(tmp_path, capsys):
    read = io.reread_record_chunks(_input(tmp_path), chunk_size=7, label="dedup")
    assert sum(len(c) for c in read()) == 50 and sum(len(c) for c in read()) == 50
    assert capsys.readouterr().err == ""  # not even the blank line rich prints when a live display stops
