"""Regenerate the screenshots of `sftlab ui` in docs/ (docs/ui-*.png): builds a small workspace (tiny model, two
training runs, judged eval dirs, a review with two annotators, a fix, a served model), opens each page in headless
Chromium and saves it.

    PYTHONPATH=. python tests/ui/make_screenshots.py [--out docs] [--keep DIR]

Needs playwright (the dev extra) and /usr/bin/chromium; takes a few minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ui_workspace as w  # noqa: E402
from conftest import CHROMIUM, CHROMIUM_FLAGS, start_ui  # noqa: E402

from sftlab.ui.review import Review, create_review  # noqa: E402
from sftlab.ui.workspace import Workspace  # noqa: E402


def build(root: Path) -> None:
    """The workspace on disk: a tiny model, two runs of it, two judged evals, a review with votes, a fix."""
    from sftlab.tiny import build_tiny_model
    from sftlab.ui.evals import load_eval
    from sftlab.ui.fixes import append_fix

    model = build_tiny_model(root / "model")
    data = w.write_data(root / "data" / "train.jsonl", w.records(60))
    w.train_run(model, data, root / "runs" / "lr-3e-3", max_steps=60, eval_steps=10)
    w.train_run(model, data, root / "runs" / "lr-1e-3", max_steps=60, eval_steps=10, learning_rate=1e-3)
    after = w.eval_dir(root / "evals" / "after")
    w.eval_dir(root / "evals" / "before", flip=True, model="tiny-before")
    review = Review(create_review(load_eval(after), dimensions=["overall"], limit=10, seed=1, name="ab-review"))
    for i, it in enumerate(review.items):
        review.vote("alice", it["item"], "overall", "ABC"[i % 3])
        if i < 7:
            review.vote("bob", it["item"], "overall", "ABB"[i % 3])
    review.close()
    append_fix(root / "fixes", prompt=[{"role": "user", "content": "capital of Japan?"}], original="Kyoto",
               fixed="Tokyo", task_type="facts/capital", provenance={"source": "eval", "item_id": "demo:e8"})


def serve(model: Path, name: str, log: Path) -> str:
    """`sftlab serve`'s app over a model, in this process; its base URL."""
    from sftlab.infer import load_generator
    from sftlab.serve.app import create_app, start_in_thread
    from sftlab.serve.log import RequestLog

    return start_in_thread(create_app(load_generator(model, model_id=name), RequestLog(log)))[0]


def shoot(root: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    endpoints = [serve(root / "runs" / "lr-3e-3" / "final", "tiny-trained", root / "serve.db"),
                 serve(root / "model", "tiny-base", root / "serve-base.db")]
    ws = Workspace(paths=[root / "runs", root / "evals", root / "data" / "train.jsonl"], fixes_dir=root / "fixes",
                   endpoints=endpoints)
    ws.scan(force=True)
    url, _ = start_ui(ws)
    run = {p.name: rid for rid, p in ws.runs.items()}
    evals = {p.name: eid for eid, p in ws.evals.items()}
    data = next(did for did, d in ws.datasets.items() if d.path.name == "train.jsonl" and "run" in d.origin)
    sid = next(i for i, r, _ in ws.reviews())
    pages = [("runs", "/runs", 520), ("run", f"/runs/{run['lr-3e-3']}", 1250),
             ("compare", f"/compare?ids={run['lr-3e-3']}&ids={run['lr-1e-3']}", 900),
             ("data", f"/data/{data}", 900), ("render", f"/data/{data}/sample/0", 780),
             ("eval", f"/evals/{evals['after']}", 1300), ("side-by-side", f"/evals/{evals['after']}/vs/{evals['before']}", 900),
             ("review-list", "/review", 700), ("review", f"/review/{sid}", 560),
             ("review-results", f"/review/{sid}/results", 900), ("chat", "/chat", 640)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(180_000)
        page.goto(url + "/runs")
        page.evaluate("localStorage.setItem('sftlab.annotator', 'carol')")
        for name, path, height in pages:
            page.set_viewport_size({"width": 1280, "height": height})
            page.goto(url + path)
            if name == "chat":
                page.wait_for_function("document.querySelector('#pane-right .model').value === 'tiny-base'")
                page.fill("#max-tokens", "12")
                page.fill("#message", "what is 2 plus 3?")
                page.click("#send")
                page.wait_for_selector("#pane-right .bubble.assistant .fb button")
                page.click("#pane-left .fb button[data-score='1']")
                page.wait_for_selector("#pane-left .fb-status.ok")
            if name == "render":
                page.hover("#tokens .tok.sup0")
            if name == "review":  # one vote in: a chosen answer, the progress bar moving
                page.wait_for_selector("#dims .dim.current")
                before = page.inner_text("#done")
                page.keyboard.press("B")
                page.wait_for_function(f"document.getElementById('done').textContent !== '{before}'")
            time.sleep(1.5)  # charts are drawn after their data arrives
            page.screenshot(path=str(out / f"ui-{name}.png"))
            print(out / f"ui-{name}.png")
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--keep", type=Path, help="build the workspace here (kept) instead of a temp dir; an existing one "
                    "is reused")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="sftlab-ui-shots-"))
    if not (root / "runs").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        build(root)
    shoot(root, args.out)


if __name__ == "__main__":
    main()
