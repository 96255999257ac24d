"""The app over HTTP without a browser: access control, bad requests named by field, damaged inputs shown as notes
while the server keeps serving, and the command line."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import urllib.error
import urllib.request

import pytest
from cli_helpers import run_cli
from conftest import start_ui


def call(url: str, path: str, body: dict | bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    req = urllib.request.Request(url + path, data=data, headers={**hdrs, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_auth_token_host_check_and_json_only_posts(workspace):
    url, server = start_ui(workspace, auth_token="s3cret")
    try:
        code, text = call(url, "/runs")
        assert code == 401 and "needs its token" in text
        assert call(url, "/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(url, "/runs", headers={"Authorization": "Bearer s3cret"})[0] == 200
        with urllib.request.urlopen(url + "/runs?token=s3cret") as r:  # once in the URL, then a cookie
            cookie = r.headers["set-cookie"].split(";")[0]
        assert call(url, "/evals", headers={"Cookie": cookie})[0] == 200
        code, text = call(url, "/api/fix", b"id=x", {"Cookie": cookie, "Content-Type": "text/plain"})
        assert code == 415 and "JSON" in text  # a form on another site cannot post here
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port))
        conn.request("GET", "/runs", headers={"Host": f"evil.example:{port}", "Cookie": cookie})
        assert conn.getresponse().status == 403  # DNS rebinding
    finally:
        server.should_exit = True


def test_bad_requests_name_the_field(ui):
    url, ws = ui
    code, text = call(url, "/api/review", {"eval": next(iter(ws.evals)), "limit": 0})
    assert code == 400 and json.loads(text)["error"].startswith("field 'limit'")
    code, text = call(url, "/api/fix", {"eval": next(iter(ws.evals)), "id": "demo:e0", "keep": "Z"})
    assert code == 400 and "field 'keep'" in json.loads(text)["error"]
    code, text = call(url, "/api/fix", {"eval": "nope", "id": "x", "reply": "y"})
    assert code == 404 and "no eval dir" in json.loads(text)["error"]
    code, text = call(url, "/api/chat", {"endpoint": "ftp://x", "model": "m", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    assert code == 400 and "http(s) URL" in json.loads(text)["error"]


def test_damaged_inputs_are_notes_and_the_server_keeps_serving(ui):
    url, ws = ui
    by_name = {p.name: rid for rid, p in ws.runs.items()}
    code, text = call(url, f"/runs/{by_name['half-written']}")
    assert code == 200 and "config.yaml is not valid YAML" in text
    code, text = call(url, f"/runs/{by_name['corrupt-metrics']}")
    assert code == 200 and "2 unreadable line(s) in metrics.jsonl skipped (line 5, 7)" in text
    old = next(eid for eid, p in ws.evals.items() if p.name == "old")
    code, text = call(url, f"/evals/{old}")
    assert code == 200 and "has no &#39;version&#39;" in text and "score table could not be read" in text
    code, text = call(url, "/runs/0123456789")
    assert code == 404 and "no run with id" in text
    gone = ws.paths[0] / "runs" / f"vanishing-{time.time_ns()}"
    gone.mkdir()
    (gone / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    ws.scan(force=True)
    rid = next(rid for rid, p in ws.runs.items() if p == gone)
    shutil.rmtree(gone)  # removed while the server runs
    code, text = call(url, f"/runs/{rid}")
    assert code in (200, 404) and ("directory is gone" in text or "no run with id" in text)
    assert call(url, "/runs")[0] == 200 and call(url, "/evals")[0] == 200


def test_cli_refuses_a_public_address_without_a_token(capsys, tmp_path):
    code, _, err = run_cli(["ui", str(tmp_path), "--host", "0.0.0.0", "--port", "7999"], capsys)
    assert code == 2 and "--auth-token" in err


@pytest.mark.parametrize("path", ["/static/plot.js", "/static/review.js", "/static/style.css"])
def test_assets_are_served_from_the_package(ui, path):
    code, text = call(ui[0], path)
    assert code == 200 and "http" not in text.replace("http://www.w3.org", "")  # no CDN, nothing fetched elsewhere


def test_review_over_the_api_shows_progress_on_the_list(ui):
    url, ws = ui
    after = next(eid for eid, p in ws.evals.items() if p.name == "after")
    code, text = call(url, "/api/review", {"eval": after, "limit": 3, "name": f"api-{time.time_ns()}"})
    assert code == 200, text
    sid = json.loads(text)["id"]
    state = json.loads(call(url, f"/api/review/{sid}/state?annotator=erin")[1])
    assert state["progress"] == {"done": 0, "total": 3, "next": 0} and len(state["item"]["answers"]) == 2
    code, text = call(url, f"/api/review/{sid}/vote", {"annotator": "erin", "item": state["item"]["item"],
                                                       "dimension": "overall", "value": "7"})
    assert code == 400 and "is not A, B or C" in json.loads(text)["error"]
    code, text = call(url, f"/api/review/{sid}/vote", {"annotator": "erin", "item": state["item"]["item"],
                                                       "dimension": "overall", "value": "b"})
    assert code == 200 and json.loads(text)["progress"]["done"] == 1
    code, text = call(url, "/review")
    assert code == 200 and "erin 1/3" in text


def test_10k_predictions_are_served_a_page_at_a_time(tmp_path):
    from sftlab.ui.workspace import Workspace

    ev = tmp_path / "big-eval"
    ev.mkdir()
    (ev / "predictions.jsonl").write_text("".join(
        json.dumps({"id": f"s:{i}", "task_type": f"t{i % 3}", "prompt": [{"role": "user", "content": f"q{i}"}],
                    "reply": f"r{i}", "scores": {"exact_match": (i % 7) / 7}}) + "\n" for i in range(10_000)))
    (ev / "summary.json").write_text(json.dumps({"version": 1, "n": 10_000, "metrics": {}}))
    (ev / "bad_cases.jsonl").write_text("")
    ws = Workspace(paths=[tmp_path], fixes_dir=tmp_path / "fixes")
    ws.scan(force=True)
    url, server = start_ui(ws)
    try:
        eid = next(iter(ws.evals))
        t0 = time.perf_counter()
        code, text = call(url, f"/evals/{eid}?p=200")
        assert code == 200 and "page 200 of 200" in text and "s:9999" in text and "s:9949" not in text
        code, text = call(url, f"/evals/{eid}?pt=t1&order=score")  # filtered, lowest score first
        assert code == 200 and "page 1 of 67" in text and text.count('class="card case"') == 50
        assert time.perf_counter() - t0 < 10  # generous: the point is that a page is a slice, not 10k cards
    finally:
        ws.close()
        server.should_exit = True
