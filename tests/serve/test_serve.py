"""`sftlab serve` on a free loopback port with the tiny model, driven by the official openai client: replies equal
the hf backend's, streaming, n, batching across 16 concurrent clients, the SQLite log, feedback → export-log →
`sftlab data inspect`, bad inputs → 400 with OpenAI's error object, the API key, the gateway mode."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from sftlab.infer import GenerationParams, load_generator
from sftlab.serve.app import create_app, start_in_thread
from sftlab.serve.log import RequestLog

ASK = [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "what is 2 plus 3?"}]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return load_generator(tiny_model_dir, model_id="tiny")


@pytest.fixture(scope="module")
def server(hf, tmp_path_factory):
    """(base_url, app) of a server over the tiny model, logging to a fresh SQLite file."""
    log = RequestLog(tmp_path_factory.mktemp("serve") / "serve.db")
    app = create_app(hf, log, max_batch_size=16)
    url, srv = start_in_thread(app)
    yield url, app
    srv.should_exit = True


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=kwargs.pop("api_key", "none"), max_retries=0, **kwargs)


def post(url: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_replies_equal_hf_backend_streaming_too(server, hf):
    url, _ = server
    expected = hf.generate([ASK], GenerationParams(max_new_tokens=10))[0][0]
    c = client(url)
    assert [m.id for m in c.models.list()] == ["tiny"]
    resp = c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=10)
    choice = resp.choices[0]
    assert choice.message.content == expected.text and choice.finish_reason == expected.finish_reason == "length"
    prompt_ids = hf.tokenizer.apply_chat_template(ASK, tokenize=True, add_generation_prompt=True,
                                                  return_dict=True)["input_ids"]
    assert resp.usage.prompt_tokens == len(prompt_ids) == expected.prompt_tokens
    assert resp.usage.completion_tokens == expected.completion_tokens == 10
    assert resp.usage.total_tokens == len(prompt_ids) + 10

    chunks = list(c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert "".join(pieces) == expected.text
    assert len(pieces) > 3  # the text arrives as it is generated, not in one piece
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids) and chunks[-1].usage.completion_tokens == 10
    assert len({ch.id for ch in chunks}) == 1


def test_sampling_n3_seed_stop(server, hf):
    url, _ = server
    c = client(url)
    resp = c.chat.completions.create(model="tiny", messages=ASK, temperature=1.0, top_p=0.9, n=3, seed=5,
                                     max_tokens=8)
    assert [ch.index for ch in resp.choices] == [0, 1, 2]
    assert len({ch.message.content for ch in resp.choices}) > 1
    assert resp.usage.completion_tokens == sum(r.completion_tokens for r in hf.generate(
        [ASK], GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=5))[0])
    greedy = hf.generate([ASK], GenerationParams(max_new_tokens=10))[0][0].text
    stop = greedy.strip()[2:4]
    cut = c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=10, stop=stop)
    assert cut.choices[0].finish_reason == "stop" and greedy.startswith(cut.choices[0].message.content)
    chunks = list(c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=10, stop=stop,
                                            stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == cut.choices[0].message.content
    streamed_n = list(c.chat.completions.create(model="tiny", messages=ASK, temperature=1.0, n=3, seed=5,
                                                max_tokens=8, stream=True))
    texts = ["".join(ch.choices[0].delta.content or "" for ch in streamed_n if ch.choices and ch.choices[0].index == k)
             for k in range(3)]
    assert all(texts) and len(set(texts)) == 3  # three streamed samples
    assert [ch.finish_reason for ch in streamed_n[-1].choices] == ["length"] * 3


def test_16_clients_x_4_requests_batched_and_logged(hf, tmp_path):
    db = tmp_path / "serve.db"
    app = create_app(hf, RequestLog(db), max_batch_size=16)
    url, srv = start_in_thread(app)
    try:
        c = client(url)

        def four(i: int) -> list[str]:
            msgs = [{"role": "user", "content": f"what is {i} plus {k}?"} for k in range(4)]
            return [c.chat.completions.create(model="tiny", messages=[m], temperature=0, max_tokens=6)
                    .choices[0].message.content for m in msgs]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(four, range(16)))
        assert sum(len(r) for r in results) == 64
        expected = hf.generate([[{"role": "user", "content": "what is 3 plus 2?"}]], GenerationParams(max_new_tokens=6))
        assert results[3][2] == expected[0][0].text  # batched answers equal the one-at-a-time answer
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests").fetchone() == (64, 64)
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            row = conn.execute("SELECT model, params, prompt_tokens, completion_tokens, latency_ms FROM requests "
                               "LIMIT 1").fetchone()
        assert row[0] == "tiny" and json.loads(row[1])["max_new_tokens"] == 6 and row[3] == 6 and row[4] > 0
        batcher = app.state.serve.batcher
        assert batcher.rows == 64 and batcher.batches < 64  # requests shared generate calls
    finally:
        srv.should_exit = True


BAD = [  # (body, param named in the error)
    (b"{not json", None),
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 2**70}, "seed"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_gives_400_and_server_keeps_serving(server, body, param):
    url, _ = server
    status, err = post(f"{url}/chat/completions", body)
    assert status == 400, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["param"] == param
    assert err["error"]["message"]
    good = client(url).chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=2)
    assert good.choices[0].message.content is not None


def test_unknown_path_gives_openai_error_object(server):
    url, _ = server
    status, err = post(f"{url}/completions", {"model": "tiny", "prompt": "hi"})  # not served
    assert status == 404 and err["error"]["code"] == "not_found" and "/v1/completions" in err["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client(url).completions.create(model="tiny", prompt="hi")


def test_feedback_export_log_and_data_inspect(server, tmp_path, capsys):
    from sftlab.cli import main
    from sftlab.data.formats import read_records

    url, app = server
    c = client(url)
    liked = c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=5)
    disliked = c.chat.completions.create(model="tiny", messages=[ASK[1]], temperature=0, max_tokens=5)
    assert post(f"{url}/feedback", {"id": liked.id, "score": 1, "comment": "good"})[0] == 200
    assert post(f"{url}/feedback", {"id": disliked.id, "score": -1})[0] == 200
    status, err = post(f"{url}/feedback", {"id": "chatcmpl-nope", "score": 1})
    assert status == 400 and err["error"]["param"] == "id"
    assert post(f"{url}/feedback", {"id": liked.id, "score": 5})[1]["error"]["param"] == "score"

    out = tmp_path / "records.jsonl"
    main(["serve", "export-log", str(app.state.serve.log.path), "-o", str(out), "--min-score", "1"])
    records, _ = read_records(out)
    assert [r["id"] for r in records] == [liked.id]
    rec = records[0]
    assert rec["messages"] == [*ASK, {"role": "assistant", "content": liked.choices[0].message.content}]
    assert rec["meta"]["feedback"] == {"score": 1, "comment": "good"} and rec["meta"]["model"] == "tiny"
    assert rec["meta"]["params"]["max_new_tokens"] == 5 and rec["meta"]["usage"]["completion_tokens"] == 5
    capsys.readouterr()
    main(["data", "inspect", str(out)])
    shown = capsys.readouterr().out
    assert "1 records (0 prompt-only" in shown and "serve" in shown  # the record count and its task_type

    everything = tmp_path / "all.jsonl"
    main(["serve", "export-log", str(app.state.serve.log.path), "-o", str(everything)])
    ids = {r["id"] for r in read_records(everything)[0]}
    assert {liked.id, disliked.id} <= ids


def test_api_key(hf, tmp_path):
    url, srv = start_in_thread(create_app(hf, RequestLog(tmp_path / "k.db"), api_key="s3cret"))
    try:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
        ok = client(url, api_key="s3cret").chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
        assert ok.choices
    finally:
        srv.should_exit = True


def test_gateway_cli_logs_the_same_rows(server, tmp_path):
    """`sftlab serve --upstream` (a real subprocess) in front of the test server logs what the server logs."""
    url, app = server
    port = _free_port()
    db = tmp_path / "gateway.db"
    proc = subprocess.Popen([sys.executable, "-m", "sftlab", "serve", "--upstream", url, "--port", str(port),
                             "--log", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        gw = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError as e:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"gateway did not start: {proc.stdout.read() if proc.poll() else ''}") from e
                time.sleep(0.2)
        before = app.state.serve.log.count()
        c = client(gw)
        assert [m.id for m in c.models.list()] == ["tiny"]
        direct = client(url).chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=7)
        via = c.chat.completions.create(model="tiny", messages=ASK, temperature=0, max_tokens=7)
        assert via.choices[0].message.content == direct.choices[0].message.content
        assert via.usage.prompt_tokens == direct.usage.prompt_tokens
        status, err = post(f"{gw}/chat/completions", {"model": "tiny", "messages": ASK, "max_tokens": 10**6})
        assert status == 400 and "max_tokens" in err["error"]["message"]
        assert app.state.serve.log.count() == before + 2
        cols = "messages, params, choices, prompt_tokens, completion_tokens"
        with sqlite3.connect(db) as g, sqlite3.connect(app.state.serve.log.path) as u:
            assert g.execute(f"SELECT {cols} FROM requests").fetchall() == \
                u.execute(f"SELECT {cols} FROM requests ORDER BY created DESC LIMIT 1").fetchall()
            assert g.execute("SELECT upstream FROM requests").fetchone()[0] == url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_backend_against_the_real_server(server, hf):
    url, _ = server
    remote = load_generator({"base_url": url, "concurrency": 4})
    assert remote.model_id == "tiny"
    convs = [ASK, [{"role": "user", "content": "hi"}], [{"role": "user", "content": "what is 4 plus 1?"}]]
    params = GenerationParams(max_new_tokens=9, logprobs=True)
    local, via = hf.generate(convs, params), remote.generate(convs, params)
    for (a,), (b,) in zip(local, via, strict=True):
        assert (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens) == \
            (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


class SlowGenerator:
    """The hf generator, first call delayed, recording every conversation it is asked to answer."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.max_context = inner, inner.model_id, inner.max_context
        self.prompt_ids = inner.prompt_ids
        self.seen: list[str] = []

    def generate(self, conversations, params, tools=None):
        if not self.seen:
            time.sleep(1.5)
        self.seen += [c[-1]["content"] for c in conversations]
        return self.inner.generate(conversations, params, tools)


@pytest.mark.parametrize("stream", [True, False])
def test_client_that_disconnects_frees_its_slot(hf, tmp_path, stream, capfd):
    import http.client

    gen = SlowGenerator(hf)
    app = create_app(gen, RequestLog(tmp_path / "d.db"), max_batch_size=1)
    url, srv = start_in_thread(app)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        c = client(url)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(c.chat.completions.create, model="tiny", max_tokens=3,
                               messages=[{"role": "user", "content": "first"}])
            while app.state.serve.batcher.waiting() or not busy.running():
                time.sleep(0.01)
            time.sleep(0.2)  # "first" is being generated; the next request has to queue
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/chat/completions", json.dumps(
                {"model": "tiny", "max_tokens": 3, "stream": stream,
                 "messages": [{"role": "user", "content": "leaver"}]}), {"Content-Type": "application/json"})
            deadline = time.time() + 10
            while app.state.serve.batcher.waiting() == 0 and time.time() < deadline:
                time.sleep(0.01)
            assert app.state.serve.batcher.waiting() == 1
            conn.close()  # the client goes away while its request waits
            assert busy.result().choices
        after = c.chat.completions.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "next"}])
        assert after.choices and gen.seen == ["first", "next"]  # "leaver" was never generated
        assert app.state.serve.log.count() == 2
        assert "Exception in ASGI application" not in capfd.readouterr().err  # was InvalidStateError (non-stream)
    finally:
        srv.should_exit = True


TOOLS = [{"type": "function", "function": {"name": "add", "description": "add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                           "b": {"type": "number"}}}}}]
TOOL_TURNS = [
    {"role": "user", "content": "what is 2 plus 3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
]


def test_tools_and_tool_turns_reach_the_template(server, hf):
    url, app = server
    resp = client(url).chat.completions.create(model="tiny", messages=TOOL_TURNS, tools=TOOLS, temperature=0,
                                               max_tokens=4)
    with_tools = len(hf.prompt_ids(TOOL_TURNS, TOOLS))
    assert resp.usage.prompt_tokens == with_tools > len(hf.prompt_ids(TOOL_TURNS))
    assert resp.choices[0].message.content == hf.generate([TOOL_TURNS], GenerationParams(max_new_tokens=4),
                                                          tools=TOOLS)[0][0].text
    with sqlite3.connect(app.state.serve.log.path) as conn:
        logged = conn.execute("SELECT tools, messages FROM requests WHERE id = ?", (resp.id,)).fetchone()
    assert json.loads(logged[0]) == TOOLS and json.loads(logged[1])[1]["tool_calls"][0]["id"] == "call_1"


def test_serve_cli_argument_errors(capsys, tmp_path):
    from sftlab.cli import main
    from sftlab.cli.serve import default_log_path

    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2 and "exactly one of --model DIR or --upstream URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # options of a local model are not silently ignored in gateway mode
        main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--served-model-name", "m"])
    assert exit_info.value.code == 2 and "apply to --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "export-log", "/nonexistent/serve.db", "-o", "/tmp/x.jsonl"])
    assert "request log not found: /nonexistent/serve.db" in capsys.readouterr().err
    not_db = tmp_path / "notes.db"
    not_db.write_text("not a database\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "export-log", str(not_db), "-o", str(tmp_path / "x.jsonl")])
    assert exit_info.value.code == 2 and "notes.db: not an sftlab request log" in capsys.readouterr().err
    from sftlab.errors import UserError
    from sftlab.serve.log import RequestLog

    for bad in (not_db, tmp_path):  # serve --log at a file that is no database, or at a directory
        with pytest.raises(UserError, match="cannot use it as a SQLite database"):
            RequestLog(bad)
    assert str(default_log_path(Path("runs/x/final"))) == "runs/x/serve.db"
    assert str(default_log_path(Path("some/model"))) == "serve.db"
    assert str(default_log_path(Path("runs/x/checkpoints/step-10"))) == "runs/x/serve.db"  # sftlab's layout


def test_client_leaving_mid_stream_stops_its_generation(hf, tmp_path):
    import http.client

    long_ask = [{"role": "user", "content": "tell me a long story"}]
    full = hf.generate([long_ask], GenerationParams(max_new_tokens=200))[0][0].completion_tokens
    assert full > 60  # a long reply, so leaving after a few chunks is mid-generation

    class Recording(SlowGenerator):
        def generate(self, conversations, params, tools=None, on_text=None):
            out = self.inner.generate(conversations, params, tools, on_text=on_text)
            self.seen.append(out[0][0].completion_tokens)
            return out

    gen = Recording(hf)
    gen.streams = True
    app = create_app(gen, RequestLog(tmp_path / "m.db"), max_batch_size=4)
    url, srv = start_in_thread(app)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "tiny", "max_tokens": 200, "temperature": 0, "stream": True, "messages": long_ask}),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        content = [line for line in (resp.readline() for _ in range(12)) if b'"content": "' in line]
        assert len(content) >= 2  # text is arriving
        conn.close()
        deadline = time.time() + 30
        while not gen.seen and time.time() < deadline:
            time.sleep(0.05)
        assert gen.seen and gen.seen[0] < full  # the row stopped when its client left
        assert app.state.serve.log.count() == 0
        ok = client(url).chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
        assert ok.choices
    finally:
        srv.should_exit = True


def test_generation_failure_is_an_error_object_not_a_dead_server(hf, tmp_path):
    class Failing(SlowGenerator):
        def generate(self, conversations, params, tools=None, on_text=None):
            if any(c[-1]["content"] == "boom" for c in conversations):
                raise RuntimeError("kaboom")
            return self.inner.generate(conversations, params, tools)

    gen = Failing(hf)
    url, srv = start_in_thread(create_app(gen, RequestLog(tmp_path / "f.db")))
    try:
        boom = [{"role": "user", "content": "boom"}]
        status, err = post(f"{url}/chat/completions", {"model": "tiny", "messages": boom})
        assert status == 500 and err["error"]["type"] == "server_error" and "kaboom" in err["error"]["message"]
        with pytest.raises(openai.APIError, match="kaboom"):
            list(client(url).chat.completions.create(model="tiny", messages=boom, stream=True))
        assert client(url).chat.completions.create(model="tiny", messages=ASK, max_tokens=2).choices
    finally:
        srv.should_exit = True


def test_gateway_passes_upstream_tool_calls_through_and_logs_them(tmp_path):
    """An upstream's tool calls reach the client (plain and streamed) and the log, and export as an assistant turn
    with tool_calls: the gateway returned content "" and dropped them."""
    from synth_server import ScriptedTeacher

    from sftlab.serve.log import export_records

    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
    with ScriptedTeacher(lambda body, i: {"content": None, "tool_calls": [call]} if body.get("tools") else "hi") as up:
        db = tmp_path / "gw.db"
        gen = load_generator({"base_url": up.base_url, "model": "teacher"})
        url, srv = start_in_thread(create_app(gen, RequestLog(db), upstream=up.base_url))
        try:
            c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
            ask = [{"role": "user", "content": "2+3?"}]
            r = c.chat.completions.create(model="teacher", messages=ask, tools=tools)
            assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
            assert [t.model_dump(exclude_none=True) for t in r.choices[0].message.tool_calls] == [call]
            chunks = list(c.chat.completions.create(model="teacher", messages=ask, tools=tools, stream=True))
            deltas = [tc for ch in chunks for d in ch.choices for tc in (d.delta.tool_calls or [])]
            assert [(d.index, d.id, d.function.name, d.function.arguments) for d in deltas] == \
                [(0, "call_1", "add", '{"a": 2, "b": 3}')]
            assert [d.finish_reason for ch in chunks for d in ch.choices if d.finish_reason] == ["tool_calls"]
            assert c.chat.completions.create(model="teacher", messages=ask).choices[0].message.content == "hi"
        finally:
            srv.should_exit = True
    export = export_records(db)
    records, skipped = export.records, export.skipped
    assert len(records) == 3 and skipped["empty_reply"] == 0
    assert records[0]["messages"][-1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert records[0]["tools"] == tools and records[0]["meta"]["finish_reason"] == "tool_calls"


def test_a_request_without_model_names_the_missing_field(server):
    url, _ = server
    status, err = post(f"{url}/chat/completions", {"messages": ASK})
    assert status == 400 and err["error"]["param"] == "model"
    assert "'model' is required; this server serves 'tiny'" in err["error"]["message"]


def test_body_above_the_limit_is_413_in_the_error_object(server):
    url, _ = server
    status, err = post(f"{url}/chat/completions", {"model": "tiny", "messages": [{"role": "user",
                                                                                   "content": "x" * (2 << 20)}]})
    assert status == 413 and err["error"]["code"] == "request_too_large" and "above the limit" in err["error"]["message"]
