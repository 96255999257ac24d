"""The chat playground's server side: any OpenAI-compatible endpoint (`sftlab serve`, vLLM, a hosted API) through
the official openai client, and thumbs up/down forwarded to the endpoint's POST /v1/feedback (where `sftlab serve`
logs it next to the request, so `sftlab flywheel` sees it).

The browser talks only to `sftlab ui`, never to the endpoints: no CORS, and an endpoint's API key (read from the
environment variable named by `--endpoint-key-env`, default OPENAI_API_KEY) never reaches the page.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

import openai

from sftlab.errors import UserError


def normalize_url(url: str) -> str:
    """http(s)://host:port[/path]; a bare host:port gets /v1 (where `sftlab serve` and vLLM answer)."""
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"endpoint {url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1")
    return url if parts.path else url + "/v1"


def _client(base_url: str, key_env: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=normalize_url(base_url), api_key=os.environ.get(key_env) or "none", max_retries=0,
                         timeout=300.0)


def _user_error(base_url: str, e: Exception, what: str) -> UserError:
    if isinstance(e, openai.APIStatusError):
        msg = e.message.splitlines()[0][:300] if e.message else ""
        if what == "feedback" and e.status_code in (404, 405):
            return UserError(f"{base_url} takes no feedback (HTTP {e.status_code}: only `sftlab serve` has "
                             "/v1/feedback)")
        return UserError(f"{base_url}: {what} failed with HTTP {e.status_code}: {msg}")
    if isinstance(e, openai.APIConnectionError | openai.APITimeoutError):
        return UserError(f"{base_url}: cannot reach the endpoint ({type(e).__name__}); is the server running?")
    return UserError(f"{base_url}: {what} failed: {type(e).__name__}: {e}")


def list_models(base_url: str, key_env: str = "OPENAI_API_KEY") -> list[str]:
    client = _client(base_url, key_env)
    try:
        return [m.id for m in client.models.list()]
    except openai.OpenAIError as e:
        raise _user_error(base_url, e, "listing models") from None


def complete(base_url: str, model: str, messages: list[dict[str, Any]], *, max_tokens: int = 256,
             temperature: float = 0.0, key_env: str = "OPENAI_API_KEY") -> dict[str, Any]:
    """One chat completion: {"id", "content", "finish_reason", "model", "latency_ms", "usage"}."""
    client = _client(base_url, key_env)
    t0 = time.time()
    try:
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                              temperature=temperature)
    except openai.OpenAIError as e:
        raise _user_error(base_url, e, "the chat request") from None
    choice = resp.choices[0]
    return {"id": resp.id, "content": choice.message.content or "", "finish_reason": choice.finish_reason,
            "model": resp.model, "latency_ms": round((time.time() - t0) * 1000, 1),
            "usage": resp.usage.model_dump() if resp.usage else None}


def send_feedback(base_url: str, response_id: str, score: int, comment: str | None = None,
                  key_env: str = "OPENAI_API_KEY") -> dict[str, Any]:
    """POST {id, score, comment} to the endpoint's /v1/feedback (the shape `sftlab serve` takes)."""
    client = _client(base_url, key_env)
    try:
        return client.post("/feedback", cast_to=dict, body={"id": response_id, "score": score, "comment": comment})
    except openai.OpenAIError as e:
        raise _user_error(base_url, e, "feedback") from None
