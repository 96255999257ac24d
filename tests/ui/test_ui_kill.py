"""No vote is lost when the server or the browser is killed mid-review: `sftlab ui` as a real subprocess, kill -9
between votes, a vote cast while the server is down, restarts, and a browser that is closed and opened again."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import urllib.request

from conftest import free_port, start_cli

from sftlab.ui.workspace import path_id

TIMEOUT = 60_000


def start_ui_process(root, port, fixes) -> subprocess.Popen:
    return start_cli(["ui", str(root), "--port", str(port), "--fixes", str(fixes)], f"http://127.0.0.1:{port}/review")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def vote(pg, key: str, done: int | None, total: int) -> str:
    """Press `key` on the item shown; with `done`, wait until the server stored it and the next item is shown.
    Returns the item voted on."""
    pg.wait_for_selector("#dims .dim.current", timeout=TIMEOUT)
    item = pg.get_attribute("#fix-form", "data-id")
    pg.keyboard.press(key)
    if done is not None:
        pg.wait_for_function(f"document.getElementById('done').textContent === '{done}/{total}' && "
                             f"document.getElementById('fix-form').dataset.id !== '{item}'", timeout=TIMEOUT)
    return item


def test_no_vote_is_lost_when_the_server_or_the_browser_is_killed(browser, ui_root, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_ui_process(ui_root, port, tmp_path / "fixes")
    try:
        name = f"kill-{time.time_ns()}"
        req = urllib.request.Request(f"{url}/api/review", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"eval": path_id(ui_root / "evals" / "after"), "limit": 6,
                                                      "name": name}).encode())
        sid = json.loads(urllib.request.urlopen(req).read())["id"]
        ctx = browser.new_context()
        pg = ctx.new_page()
        pg.goto(f"{url}/review/{sid}")
        pg.fill("#who", "dana")
        pg.click("#who-form button")
        cast = {vote(pg, "A", 1, 6): "A"}
        kill9(proc)  # between two votes
        cast[vote(pg, "B", None, 6)] = "B"  # cast while the server is down: kept in the page, retried
        pg.wait_for_selector("#status.warn", timeout=TIMEOUT)
        assert "not saved yet" in pg.inner_text("#status")
        proc = start_ui_process(ui_root, port, tmp_path / "fixes")
        pg.wait_for_function("document.getElementById('done').textContent === '2/6'", timeout=TIMEOUT)
        cast[vote(pg, "T", 3, 6)] = "C"
        kill9(proc)  # right after an acknowledged vote
        ctx.close()  # and the browser goes away too
        proc = start_ui_process(ui_root, port, tmp_path / "fixes")
        db = sqlite3.connect(str(ui_root / "evals" / "after" / "review" / name / "votes.sqlite"))
        stored = dict(db.execute("SELECT item, value FROM votes WHERE annotator = 'dana'").fetchall())
        db.close()
        assert stored == cast
        ctx = browser.new_context()  # a new browser: asks the name again, resumes at the first item not voted
        pg = ctx.new_page()
        pg.goto(f"{url}/review/{sid}")
        pg.fill("#who", "dana")
        pg.click("#who-form button")
        pg.wait_for_function("document.getElementById('done').textContent === '3/6'", timeout=TIMEOUT)
        assert pg.get_attribute("#fix-form", "data-id") not in cast
        ctx.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
