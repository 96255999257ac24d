"""Fixtures of the `sftlab ui` tests: a workspace (a tiny run trained here, judged eval dirs, a dataset with rejects,
damaged dirs), the app on a free loopback port, and a headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; browser tests skip cleanly without either)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ui_workspace as w

CHROMIUM = os.environ.get("SFTLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli(args: list[str], probe_url: str, timeout: float = 180.0) -> subprocess.Popen:
    """`python -m sftlab ARGS` as a subprocess, returned once probe_url answers."""
    proc = subprocess.Popen([sys.executable, "-m", "sftlab", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(probe_url, timeout=5)
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"sftlab {args[0]} did not start"
            time.sleep(0.1)


def start_ui(ws, **kwargs):
    """The app over `ws` with uvicorn in a daemon thread: (base URL, server)."""
    import uvicorn

    from sftlab.ui.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ws, **kwargs), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the ui server did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory) -> Path:
    """Data, eval dirs (pairwise judged: after / before; one from an older version) and damaged run dirs."""
    root = tmp_path_factory.mktemp("ui")
    w.write_data(root / "data" / "train.jsonl", w.records())
    w.eval_dir(root / "evals" / "after")
    w.eval_dir(root / "evals" / "before", flip=True, model="tiny-before")
    w.old_eval_dir(root / "evals" / "old")
    w.damaged_runs(root / "runs")
    return root


@pytest.fixture(scope="session")
def trained_run(ui_root, tiny_model_dir) -> Path:
    """A real training run (8 steps of the tiny model over three task types, eval every 4 steps)."""
    return w.train_run(tiny_model_dir, ui_root / "data" / "train.jsonl", ui_root / "runs" / "tiny", max_steps=8)


@pytest.fixture()
def workspace(ui_root, trained_run, tmp_path):
    from sftlab.ui.workspace import Workspace

    ws = Workspace(paths=[ui_root], fixes_dir=tmp_path / "fixes")
    ws.scan(force=True)
    yield ws
    ws.close()


@pytest.fixture()
def ui(workspace):
    """(base URL, workspace) of a running `sftlab ui`."""
    url, server = start_ui(workspace)
    yield url, workspace
    server.should_exit = True


@pytest.fixture(scope="module")
def browser():
    """Module-scoped: Playwright's sync API keeps an event loop marked running on this thread while it is open,
    which would break asyncio.run() in the other test modules."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (the browser tests need Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
