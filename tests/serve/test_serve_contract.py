"""The server as a contract outside tools can hold it to: the published OpenAPI schema, schemathesis against a
live `sftlab serve` (zero failures), over 80 malformed bodies that all get a 400 naming the field, a request log
no request can poison and an export that one poisoned row cannot stop, the stream's usage/fingerprint, access."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest
import uvicorn
from serve_bad_bodies import CHAT, FEEDBACK

from sftlab.cli import main
from sftlab.infer import load_generator
from sftlab.serve.app import create_app, start_in_thread
from sftlab.serve.log import RequestLog
from sftlab.serve.protocol import ChatCompletionChunk

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = RequestLog(tmp_path_factory.mktemp("contract") / "serve.db")
    url, srv = start_in_thread(create_app(load_generator(tiny_model_dir, model_id="tiny"), log, max_batch_size=8))
    yield url, log
    srv.should_exit = True


def send(conn: http.client.HTTPConnection, path: str, body: bytes | dict,
         content_type: str | None = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8", "surrogatepass")
    conn.request("POST", path, data, {"Content-Type": content_type} if content_type else {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def test_malformed_bodies_are_400s_naming_the_field_and_poison_nothing(server, tmp_path):
    url, log = server
    conn = connect(url)
    status, first = send(conn, "/v1/chat/completions", GOOD)
    assert status == 200
    good_feedback = {"id": first["id"], "score": 1}
    wrong = []
    for path, cases, good in (("/v1/chat/completions", CHAT, GOOD), ("/v1/feedback", FEEDBACK, good_feedback)):
        for body, param in cases:
            status, answer = send(conn, path, body)
            error = answer.get("error") or {}
            if status != 400 or set(error) != {"message", "type", "param", "code"} or error["param"] != param \
                    or not error["message"] or error["type"] != "invalid_request_error":
                wrong.append((path, body[:120] if isinstance(body, bytes) else body, param, status, answer))
            assert send(conn, path, good)[0] == 200  # the server answers the next good request
    assert not wrong, "\n".join(map(repr, wrong))
    assert len(CHAT) + len(FEEDBACK) >= 80
    print(f"\nfuzz: {len(CHAT)} chat + {len(FEEDBACK)} feedback malformed bodies -> 400 naming the field")

    for no_json in (None, "text/plain", "application/x-www-form-urlencoded"):  # JSON is required, said so
        status, answer = send(conn, "/v1/chat/completions", GOOD, content_type=no_json)
        assert status == 400 and answer["error"]["code"] == "invalid_content_type"
    with sqlite3.connect(log.path) as db:  # every logged value is strict JSON
        for row in db.execute("SELECT messages, tools, params, choices FROM requests"):
            for column in filter(None, row):
                json.loads(column, parse_constant=lambda c: pytest.fail(f"{c} in the log"))
    out = tmp_path / "all.jsonl"
    main(["serve", "export-log", str(log.path), "-o", str(out)])
    assert len(out.read_text().splitlines()) == log.count() and not Path(f"{out}.rejects.jsonl").read_text()


def poison(db: Path, kind: str) -> None:
    """One row written straight into the SQLite file, bypassing the server's checks."""
    good = ["chatcmpl-poison", 1.0, 1.0, "tiny", '[{"role": "user", "content": "hi"}]', None,
            '{"temperature": 0}', '[{"text": "hello", "finish_reason": "stop", "completion_tokens": 1}]', 3, 1, 0,
            None]
    if kind == "nan":
        good[6] = '{"temperature": NaN}'
    elif kind == "invalid_utf8":
        good[4] = b'[{"role": "user", "content": "\xff\xfe"}]'
    elif kind == "not_json":
        good[7] = "[{not json"
    elif kind == "not_a_record":
        good[4] = '[{"role": "wizard", "content": "hi"}]'
    elif kind == "bad_time":
        good[1] = "yesterday"
    with sqlite3.connect(db) as conn:
        if kind == "invalid_utf8":
            conn.execute("INSERT INTO requests VALUES (?,?,?,?,CAST(? AS TEXT),?,?,?,?,?,?,?)", good)
        else:
            conn.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", good)


@pytest.mark.parametrize("kind", ["nan", "invalid_utf8", "not_json", "not_a_record", "bad_time"])
def test_one_poisoned_row_exports_every_other_row_plus_one_reject(tmp_path, capsys, kind):
    db = tmp_path / "serve.db"
    log = RequestLog(db)
    for i in range(3):
        log.add_request(response_id=f"chatcmpl-{i}", created=float(i), latency_ms=1.0, model="tiny",
                        messages=[{"role": "user", "content": f"q{i}"}], tools=None, params={"temperature": 0.0},
                        choices=[{"text": f"a{i}", "finish_reason": "stop", "completion_tokens": 1}],
                        prompt_tokens=2, completion_tokens=1, stream=False)
    with pytest.raises(ValueError):  # the server's own writes refuse what would poison the log
        log.add_request(response_id="chatcmpl-nan", created=9.0, latency_ms=1.0, model="tiny", messages=[],
                        tools=None, params={"temperature": float("nan")}, choices=[], prompt_tokens=0,
                        completion_tokens=0, stream=False)
    log.close()
    poison(db, kind)
    out = tmp_path / "x.jsonl"
    main(["serve", "export-log", str(db), "-o", str(out)])  # exit 0
    assert "wrote 3 records" in capsys.readouterr().out
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"chatcmpl-{i}" for i in range(3)]
    (reject,) = [json.loads(line) for line in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert reject["row_id"] == "chatcmpl-poison" and reject["reason"]

    strict = tmp_path / "strict.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "export-log", str(db), "-o", str(strict), "--strict"])
    assert exit_info.value.code == 2 and not strict.exists()
    assert "1 rows cannot be exported (--strict; nothing written); first: row chatcmpl-poison" in \
        capsys.readouterr().err


def test_stream_usage_is_null_until_the_last_chunk_and_fingerprint_is_stable(server):
    url, _ = server
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    plain = c.chat.completions.create(model="tiny", messages=GOOD["messages"], max_tokens=3, temperature=0)
    assert plain.system_fingerprint and plain.system_fingerprint.startswith("fp_")
    body = json.dumps({**GOOD, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}})
    req = urllib.request.Request(f"{url}/chat/completions", body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # every event is the published chunk schema
        assert "usage" in chunk and chunk["system_fingerprint"] == plain.system_fingerprint
    assert all(ch["usage"] is None for ch in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_integral_floats_are_integers_and_the_schema_is_published(server):
    url, _ = server
    conn = connect(url)
    status, answer = send(conn, "/v1/chat/completions", {**GOOD, "max_tokens": 3.0, "n": 2.0})
    assert status == 200 and answer["usage"]["completion_tokens"] == 6 and len(answer["choices"]) == 2
    conn.request("GET", "/openapi.json")
    schema = json.loads(conn.getresponse().read())
    chat_op = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert {"200", "400", "401", "413", "500"} <= set(chat_op["responses"]) and "422" not in chat_op["responses"]
    assert "text/event-stream" in chat_op["responses"]["200"]["content"]
    feedback_op = schema["paths"]["/v1/feedback"]["post"]
    assert feedback_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/FeedbackRequest")
    components = schema["components"]["schemas"]
    for name in ("ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", "ErrorResponse", "ToolMessage"):
        assert name in components
    assert components["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["tiny"]


def test_a_bug_is_a_logged_500_with_no_internals_in_the_body(hf_like_broken, caplog):
    url, srv = start_in_thread(create_app(hf_like_broken))
    try:
        status, answer = send(connect(url), "/v1/chat/completions", GOOD)
    finally:
        srv.should_exit = True
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert answer["error"]["message"] == "internal server error (logged on the server)"
    assert any("KeyError" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.fixture()
def hf_like_broken():
    class Broken:  # a generator whose prompt counting has a bug (not a user error)
        model_id, max_context = "tiny", 2048

        def prompt_ids(self, conversation, tools=None):
            raise KeyError("secret internals")

        def generate(self, conversations, params, tools=None):
            raise AssertionError("never reached")

    return Broken()


def test_access_warning_key_and_private_log(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # the CLI up to serving, without serving
    db = tmp_path / "exposed.db"
    main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--log", str(db)])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "anyone who can reach port 8000" in warnings[0] and str(db) in warnings[0]
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600  # it holds users' prompts
    main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--log", str(db), "--api-key", "k"])
    assert "warning" not in capsys.readouterr().err

    url, srv = start_in_thread(create_app(load_generator(tiny_model_dir, model_id="tiny"), api_key="s3cret"))
    try:
        for key in ("s3creT", "", "s3cret s3cret"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key=key or "x", max_retries=0).models.list()
        assert [m.id for m in openai.OpenAI(base_url=url, api_key="s3cret").models.list()] == ["tiny"]
    finally:
        srv.should_exit = True


# ---- schemathesis against a live `sftlab serve` ----

SCHEMATHESIS_CONFIG = """
seed = 1
[generation]
max-examples = 90
[phases.coverage.generation]
mode = "positive"
"""
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schemathesis_finds_no_failure_against_a_live_server(tiny_model_dir, tmp_path):
    """All four checks, bounded: the coverage phase's positive boundary cases plus up to 90 fuzzed cases per
    operation (negative ones included), <= 300 cases in all."""
    pytest.importorskip("schemathesis")
    port, db = free_port(), tmp_path / "serve.db"
    server = subprocess.Popen([sys.executable, "-m", "sftlab", "serve", "--model", str(tiny_model_dir),
                               "--served-model-name", "tiny", "--port", str(port), "--log", str(db),
                               "--max-model-len", "48"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
        run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file",
                              str(tmp_path / "schemathesis.toml"), "run", f"http://127.0.0.1:{port}/openapi.json",
                              "--checks", CHECKS, "--workers", "1", "--wait-for-schema", "120", "--no-color"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    counts = re.search(r"(\d+) generated, (.*)", run.stdout)
    assert run.returncode == 0 and counts, run.stdout[-3000:] + run.stderr[-2000:]
    generated = int(counts.group(1))
    assert counts.group(2).strip() == f"{generated} passed" and 50 <= generated <= 300, counts.group(0)
    print(f"\nschemathesis: {counts.group(0)}")
    main(["serve", "export-log", str(db), "-o", str(tmp_path / "fuzzed.jsonl")])  # what it logged exports
    assert not Path(f"{tmp_path / 'fuzzed.jsonl'}.rejects.jsonl").read_text()
