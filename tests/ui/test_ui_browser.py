"""`sftlab ui` in a real browser (headless Chromium through Playwright): per-task curves of a run trained here, a
curve growing while a run trains, two annotators reviewing A/B items by keyboard at once (summary = `eval
import-sheet`'s for the same votes), a fixed bad case landing in a dataset `sftlab data inspect` reads, and a chat
exchange reaching `sftlab serve`'s log with its feedback."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ui_workspace as w
from cli_helpers import run_cli
from conftest import free_port, start_cli, start_ui

from sftlab.ui.workspace import Workspace

TIMEOUT = 60_000  # ms: generous, the test machines are shared


def test_run_page_shows_per_task_curves(page, ui):
    url, ws = ui
    page.goto(f"{url}/runs")
    page.click("text=runs/tiny")
    page.wait_for_selector('.chart[data-group="train_tasks"] svg.plot', timeout=TIMEOUT)
    legend = page.inner_text('.chart[data-group="train_tasks"] .legend')
    for task in ("math/add", "text/repeat", "facts/capital", "math", "text", "facts"):
        assert task in legend.split("\n") or task in legend
    assert int(page.get_attribute('.chart[data-group="train_tasks"]', "data-points")) >= 6 * 8  # 6 channels x 8 steps
    assert "facts/capital" in page.inner_text('.chart[data-group="eval_tasks"] .legend')
    assert int(page.get_attribute('.chart[data-group="eval_tasks"]', "data-points")) >= 6 * 2  # evals at 4 and 8
    for group in ("lr", "grad_norm", "tokens_per_s", "padding_ratio"):
        assert int(page.get_attribute(f'.chart[data-group="{group}"]', "data-points")) == 8
    assert page.inner_text("#run-state") == "finished"
    assert "learning_rate: 0.003" in page.inner_text("#config")


def test_a_curve_grows_while_the_run_trains(page, ui_root, tiny_model_dir, tmp_path):
    out = tmp_path / "live"
    done: list[BaseException | None] = []

    def train() -> None:
        try:
            w.train_run(tiny_model_dir, ui_root / "data" / "train.jsonl", out, max_steps=60, eval_steps=20)
            done.append(None)
        except BaseException as e:  # noqa: BLE001 (reported by the test below)
            done.append(e)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    ws = Workspace(paths=[tmp_path], fixes_dir=tmp_path / "fixes")
    url, server = start_ui(ws)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert time.time() < deadline and not done, "the run wrote no metrics"
            time.sleep(0.05)
        ws.scan(force=True)
        page.goto(f"{url}/runs/{next(iter(ws.runs))}")
        chart = '.chart[data-group="total"]'
        page.wait_for_selector(f"{chart} svg.plot", timeout=TIMEOUT)
        first = int(page.get_attribute(chart, "data-points"))
        page.wait_for_function(f"document.querySelector('{chart}').dataset.points > {first}", timeout=TIMEOUT)
        assert int(page.get_attribute(chart, "data-points")) > first  # drawn again with the new steps
        thread.join(timeout=300)
        assert done == [None], done
        page.wait_for_function("document.getElementById('run-state').textContent === 'finished'", timeout=TIMEOUT)
        page.wait_for_function(f"document.querySelector('{chart}').dataset.points >= 60", timeout=TIMEOUT)
    finally:
        ws.close()
        server.should_exit = True


def _annotate(pg, key: str, last: str | None) -> str:
    """Wait for the next item (not `last`), vote on it with `key`; returns the item voted on."""
    pg.wait_for_function(f"document.getElementById('fix-form').dataset.id && "
                         f"document.getElementById('fix-form').dataset.id !== {json.dumps(last)} && "
                         "document.querySelector('#dims .dim.current')", timeout=TIMEOUT)
    item = pg.get_attribute("#fix-form", "data-id")
    pg.keyboard.press(key)
    return item


def _fill_sheets(review_dir: Path, votes: dict[str, dict[str, str]], out: Path) -> list[Path]:
    """Copies of the review's blank sheet filled with each annotator's votes, each next to a copy of the key."""
    with open(review_dir / "sheet.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    out.mkdir()
    paths = []
    for who, mine in votes.items():
        filled = [rows[0]] + [r[:4] + [mine[r[0]]] + r[5:] for r in rows[1:]]
        with open(out / f"{who}.csv", "w", encoding="utf-8-sig", newline="") as f:
            csv.writer(f).writerows(filled)
        (out / f"{who}.key.json").write_text((review_dir / "sheet.key.json").read_text())
        paths.append(out / f"{who}.csv")
    return paths


def test_two_annotators_review_by_keyboard_and_match_import_sheet(browser, ui, tmp_path, capsys):
    url, ws = ui
    after = next(eid for eid, p in ws.evals.items() if p.name == "after")
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    alice, bob = ctx_a.new_page(), ctx_b.new_page()
    alice.goto(f"{url}/review?eval={after}")
    name = f"kb-{time.time_ns()}"
    alice.fill("#new-review input[name=dimensions]", "overall")
    alice.fill("#new-review input[name=limit]", "10")
    alice.fill("#new-review input[name=name]", name)
    alice.click("#new-review button[type=submit]")
    alice.wait_for_url(f"{url}/review/*", timeout=TIMEOUT)
    bob.goto(alice.url)
    for pg, who in ((alice, "alice"), (bob, "bob")):  # the name is asked once
        pg.fill("#who", who)
        pg.click("#who-form button")
    keys = {"alice": "ABTABBATBA", "bob": "ABTBBAATTA"}
    votes: dict[str, dict[str, str]] = {"alice": {}, "bob": {}}
    last = {"alice": None, "bob": None}
    for i in range(10):  # interleaved: both vote at the same time
        for pg, who in ((alice, "alice"), (bob, "bob")):
            last[who] = _annotate(pg, keys[who][i], last[who])
            votes[who][last[who]] = {"T": "C"}.get(keys[who][i], keys[who][i])
    for pg in (alice, bob):
        pg.wait_for_selector("#finished", state="visible", timeout=TIMEOUT)
        assert pg.inner_text("#done") == "10/10"
    bob.reload()  # resume: a returning annotator lands on the finished state, not item 1
    bob.wait_for_selector("#finished", state="visible", timeout=TIMEOUT)
    alice.goto(alice.url + "/results")
    assert "alice" in alice.inner_text("#annotators") and "bob" in alice.inner_text("#annotators")
    assert alice.inner_text("#agreement")
    sid = alice.url.split("/review/")[1].split("/")[0]
    with urllib.request.urlopen(f"{url}/review/{sid}/summary.json") as r:
        ui_summary = json.loads(r.read())
    review_dir = ws.evals[after] / "review" / name
    sheets = _fill_sheets(review_dir, votes, tmp_path / "sheets")
    code, _, err = run_cli(["eval", "import-sheet", *sheets, "-o", tmp_path / "paper", "--pred",
                            ws.evals[after] / "predictions.jsonl"], capsys)
    assert code == 0, err
    assert ui_summary == json.loads((tmp_path / "paper" / "summary.json").read_text())
    assert ui_summary["agreement"]["overall"]["n"] == 10 and ui_summary["judge_vs_human"]["overall"]["n"] == 10
    ctx_a.close()
    ctx_b.close()


def test_fix_a_bad_case_into_a_dataset_that_data_inspect_reads(page, ui, capsys):
    url, ws = ui
    after = next(eid for eid, p in ws.evals.items() if p.name == "after")
    page.goto(f"{url}/evals/{after}")
    card = page.locator("#bad-cases .case", has_text="capital of Japan?")
    card.locator("summary").click()
    card.locator("textarea").fill("The capital of Japan is Tokyo.")
    card.locator("button[value=edit]").click()
    page.wait_for_selector("#bad-cases .fix-result.ok", timeout=TIMEOUT)
    other = page.locator("#bad-cases .case", has_text="what is 1 plus 6?")
    other.locator("summary").click()
    other.locator("button[value=B]").click()  # keep the better of two: the baseline's here
    page.wait_for_function("document.querySelectorAll('#bad-cases .fix-result.ok').length === 2", timeout=TIMEOUT)
    sft = [json.loads(x) for x in (ws.fixes_dir / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(x) for x in (ws.fixes_dir / "pairs.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in sft] == ["The capital of Japan is Tokyo.", "7"]
    assert sft[0]["messages"][0] == {"role": "user", "content": "capital of Japan?"}
    assert sft[0]["meta"]["fix"]["item_id"] == "demo:e8" and sft[0]["meta"]["fix"]["kind"] == "edited"
    assert pairs[0]["chosen"][0]["content"] == "The capital of Japan is Tokyo."
    assert pairs[0]["rejected"][0]["content"] == "Kyoto" and pairs[1]["meta"]["kind"] == "kept B of two"
    assert pairs[1]["rejected"][0]["content"] == "9"
    code, out, err = run_cli(["data", "inspect", ws.fixes_dir / "sft.jsonl"], capsys)
    assert code == 0, err
    assert "facts/capital" in out and "rejected 0" not in err
    page.goto(f"{url}/data")  # the fixes file is a dataset of the app now
    assert "fixes" in page.inner_text("main")


@pytest.fixture()
def served(tiny_model_dir, tmp_path):
    """`sftlab serve` of the tiny model as a subprocess: (base URL, log path)."""
    port, log = free_port(), tmp_path / "serve.db"
    proc = start_cli(["serve", "--model", str(tiny_model_dir), "--port", str(port), "--log", str(log),
                      "--served-model-name", "tiny"], f"http://127.0.0.1:{port}/health")
    yield f"http://127.0.0.1:{port}/v1", log
    proc.terminate()
    proc.wait(timeout=30)


def test_chat_exchange_reaches_the_serve_log_with_feedback(page, workspace, served):
    url_model, log = served
    workspace.endpoints = [url_model]
    url, server = start_ui(workspace)
    try:
        page.goto(f"{url}/chat")
        # both panes list the endpoint's models (each connects on its own): send asks every pane that has one
        page.wait_for_function("[...document.querySelectorAll('.pane .model')].every(s => s.value === 'tiny')",
                               timeout=TIMEOUT)
        page.fill("#max-tokens", "8")
        page.fill("#message", "what is 2 plus 3?")
        page.click("#send")
        left = "#pane-left .bubble.assistant"
        page.wait_for_selector(f"{left} .fb button", timeout=TIMEOUT)
        page.wait_for_selector("#pane-right .bubble.assistant .fb button", timeout=TIMEOUT)
        rid = page.get_attribute(left, "data-id")
        page.click(f"{left} .fb button[data-score='1']")
        page.wait_for_selector(f"{left} .fb-status.ok", timeout=TIMEOUT)
        assert 'feedback "good" sent' in page.inner_text(f"{left} .fb-status")
    finally:
        server.should_exit = True
    db = sqlite3.connect(str(log))
    rows = db.execute("SELECT id, messages FROM requests").fetchall()
    assert len(rows) == 2 and all(json.loads(m)[-1]["content"] == "what is 2 plus 3?" for _, m in rows)
    assert db.execute("SELECT response_id, score FROM feedback").fetchall() == [(rid, 1)]


def test_single_grade_review_by_number_keys(page, ui):
    url, ws = ui
    after = next(eid for eid, p in ws.evals.items() if p.name == "after")
    page.goto(f"{url}/review?eval={after}")
    page.select_option("#new-review select[name=grading]", "single")
    page.fill("#new-review input[name=dimensions]", "helpfulness,honesty")
    page.fill("#new-review input[name=limit]", "2")
    page.fill("#new-review input[name=name]", f"grades-{time.time_ns()}")
    page.click("#new-review button[type=submit]")
    page.wait_for_url(f"{url}/review/*", timeout=TIMEOUT)
    page.fill("#who", "frank")
    page.click("#who-form button")
    first = _annotate(page, "7", None)  # helpfulness 7
    page.wait_for_selector('.dim.current[data-dim="honesty"]', timeout=TIMEOUT)
    page.keyboard.press("0")  # honesty 10: the item is done, the next one comes
    second = _annotate(page, "3", first)
    assert second != first
    sid = page.url.split("/review/")[1]
    with urllib.request.urlopen(f"{url}/api/review/{sid}/state?annotator=frank&index=0") as r:
        state = json.loads(r.read())
    assert state["mode"] == "single" and state["item"]["votes"] == {"helpfulness": "7", "honesty": "10"}
    assert len(state["item"]["answers"]) == 1 and state["progress"]["done"] == 1
