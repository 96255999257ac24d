"""A scripted OpenAI-compatible teacher (`POST /v1/chat/completions`) for the synth tests and benchmark.

`ScriptedTeacher(script)` answers choice i of a request with `script(body, i)`; the tests pass scripts that are
right only sometimes (arithmetic), plant near-copies (self-instruct), etc. Real HTTP, real `openai` client.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Script = Callable[[dict, int], "str | dict"]  # reply text, or an assistant message {content, tool_calls}


class ScriptedTeacher:
    """`with ScriptedTeacher(script) as t:` → t.base_url, t.requests, t.bodies; optional per-request delay."""

    def __init__(self, script: Script, model: str = "teacher", delay: float = 0.0) -> None:
        self.script, self.model, self.delay = script, model, delay
        self.requests = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # noqa: ANN002
                pass

            def _send(self, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer._lock:
                    outer.requests += 1
                    outer.bodies.append(body)
                if outer.delay:
                    time.sleep(outer.delay)
                texts = [outer.script(body, i) for i in range(int(body.get("n") or 1))]  # a dict: a message
                words = sum(len((t if isinstance(t, str) else t.get("content") or "").split()) for t in texts)
                self._send({"id": f"cmpl-{outer.requests}", "object": "chat.completion", "created": int(time.time()),
                            "model": body.get("model", outer.model),
                            "choices": [{"index": i, "message": {"role": "assistant", "content": t}
                                         if isinstance(t, str) else {"role": "assistant", **t},
                                         "finish_reason": "stop" if isinstance(t, str) else "tool_calls",
                                         "logprobs": None} for i, t in enumerate(texts)],
                            "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words}})

            def do_GET(self):  # noqa: N802
                self._send({"object": "list", "data": [{"id": outer.model, "object": "model"}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_SUM = re.compile(r"What is (\d+) \+ (\d+)\?")


def sometimes_right(body: dict, choice: int) -> str:
    """Arithmetic teacher: question k is always wrong when k % 4 == 0, always right when k % 4 == 1, and otherwise
    right for about half of its samples (a hash of question, seed and choice index)."""
    q = body["messages"][-1]["content"]
    m = _SUM.search(q)
    if not m:
        return "I cannot tell."
    a, b = int(m.group(1)), int(m.group(2))
    k = a  # the tests number questions by their first operand
    if k % 4 == 0:
        right = False
    elif k % 4 == 1:
        right = True
    else:
        right = hashlib.sha256(f"{q}|{body.get('seed')}|{choice}".encode()).digest()[0] % 2 == 0
    return f"{a} plus {b} makes {a + b if right else a + b + 1 + choice}."


_CITY = re.compile(r"(weather|forecast) in ([A-Z][a-z]+)")


def calls_tools(body: dict, choice: int) -> str | dict:
    """A teacher that calls tools, and only those the request declares in OpenAI shape ({"type": "function",
    "function": {name, ...}}). Asked for "the weather in CITY" with get_weather declared, choice 0 calls it for the
    wrong city (Atlantis) and other choices for CITY; asked for a "forecast" it calls get_forecast, declared or not;
    without the tool it can only answer in text. Asked to write a follow-up (synth multi-turn), it asks about Oslo."""
    last = body["messages"][-1].get("content") or ""
    if last.startswith("Here is a conversation"):
        return "And what is the weather in Oslo?"
    declared = {t["function"]["name"] for t in body.get("tools") or []
                if t.get("type") == "function" and isinstance(t.get("function"), dict)}
    m = _CITY.search(last)
    if not m or (m.group(1) == "weather" and "get_weather" not in declared):
        return "I cannot look that up."
    name = "get_weather" if m.group(1) == "weather" else "get_forecast"
    city = m.group(2) if choice or name != "get_weather" else "Atlantis"
    return {"content": None, "tool_calls": [{"id": f"call_{choice}", "type": "function",
                                             "function": {"name": name, "arguments": json.dumps({"city": city})}}]}
