"""The OpenAI chat-completions request and response shapes. Every rejected field becomes an APIError that the app
turns into HTTP 400 with OpenAI's error object ({"error": {"message", "type", "param", "code"}})."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sftlab.infer import GenerationParams, Reply

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16
MAX_STOP = 4


class APIError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    params: GenerationParams
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(f"'{name}' must be a number, got {value!r}", name, "invalid_type")
    if value < low or value > high or (low_open and value == low):
        lo = "(" if low_open else "["
        raise APIError(f"'{name}' must be in {lo}{low}, {high}], got {value}", name, "invalid_value")
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise APIError(f"'{name}' must be an integer, got {value!r}", name, "invalid_type")
    return value


def _content(value: Any, where: str) -> str | None:
    """A message content: a string, a list of text parts (joined), or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise APIError(f"'{where}' must be a string or a list of text parts, got {type(value).__name__}", where,
                   "invalid_type")


def parse_messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise APIError("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise APIError("'messages' must be a non-empty list of messages", "messages", "invalid_value")
    messages = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(f"'{where}' must be an object", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise APIError(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role",
                           "invalid_value")
        content = _content(m.get("content"), f"{where}.content")
        if content is None and not (role == "assistant" and m.get("tool_calls")):
            raise APIError(f"'{where}.content' is required", f"{where}.content", "missing_required_parameter")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]
        messages.append(msg)
    if messages[-1]["role"] not in ("user", "tool"):
        raise APIError(f"the last message must be a user or tool message, got {messages[-1]['role']!r}",
                       f"messages[{len(messages) - 1}].role", "invalid_value")
    return messages


def parse_chat_request(body: Any, model_id: str, max_context: int | None) -> ChatRequest:
    """Validate an OpenAI chat-completions body (unknown fields are ignored, as OpenAI-compatible servers do)."""
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object", None, "invalid_json")
    model = body.get("model")
    if model is None:  # required by the OpenAI API too; "model None is not served here" read like a lookup
        raise APIError(f"'model' is required; this server serves {model_id!r}", "model", "missing_required_parameter")
    if model != model_id:
        raise APIError(f"model {model!r} is not served here; this server serves {model_id!r}", "model",
                       "model_not_found")
    messages = parse_messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise APIError("'tools' must be a list of tool objects", "tools", "invalid_type")
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_name)
    if max_tokens is not None and max_tokens < 1:
        raise APIError(f"'{max_name}' must be >= 1, got {max_tokens}", max_name, "invalid_value")
    if max_tokens is not None and max_context and max_tokens > max_context:
        raise APIError(f"'{max_name}' is {max_tokens}, above the model's context of {max_context} tokens",
                       max_name, "invalid_value")
    n = _integer(body, "n")
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise APIError(f"'n' must be between 1 and {MAX_N}, got {n}", "n", "invalid_value")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP
                                 and all(isinstance(s, str) and s for s in stop)):
        raise APIError(f"'stop' must be a string or a list of up to {MAX_STOP} non-empty strings", "stop",
                       "invalid_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(f"'stream' must be a boolean, got {stream!r}", "stream", "invalid_type")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise APIError(f"'logprobs' must be a boolean, got {logprobs!r}", "logprobs", "invalid_type")
    if _integer(body, "top_logprobs"):
        raise APIError("'top_logprobs' is not supported by this server (logprobs of the chosen tokens only)",
                       "top_logprobs", "unsupported_parameter")
    seed = _integer(body, "seed")
    if seed is not None and not -(2**63) <= seed < 2**64:  # torch.manual_seed's range; beyond it a 500 at generate
        raise APIError(f"'seed' must be a 64-bit integer, got {seed}", "seed", "invalid_value")
    stream_options = body.get("stream_options") or {}
    params = GenerationParams(
        max_new_tokens=max_tokens or min(256, max_context or 256),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),  # OpenAI's default temperature is 1
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        n=n, seed=seed, stop=stop or None, logprobs=logprobs)
    return ChatRequest(messages, tools or None, params, stream,
                       bool(isinstance(stream_options, dict) and stream_options.get("include_usage")))


def new_response_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(replies: list[Reply]) -> dict[str, int]:
    prompt = replies[0].prompt_tokens if replies else 0
    completion = sum(r.completion_tokens for r in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprobs(reply: Reply) -> dict[str, Any] | None:
    if reply.logprobs is None:
        return None
    return {"content": [{"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in reply.logprobs]}


def completion_body(response_id: str, created: int, model_id: str, replies: list[Reply]) -> dict[str, Any]:
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{"index": k, "message": assistant_message(r), "finish_reason": r.finish_reason,
                         "logprobs": _logprobs(r)} for k, r in enumerate(replies)],
            "usage": usage(replies)}


def assistant_message(r: Reply) -> dict[str, Any]:
    """The reply as an OpenAI assistant message: with tool calls (an upstream's) content may be null."""
    if r.tool_calls:
        return {"role": "assistant", "content": r.text or None, "tool_calls": r.tool_calls}
    return {"role": "assistant", "content": r.text}


def chunk_body(response_id: str, created: int, model_id: str, choices: list[dict[str, Any]],
               usage_counts: dict[str, int] | None = None) -> dict[str, Any]:
    body = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "choices": choices}
    if usage_counts is not None:
        body["usage"] = usage_counts
    return body


def now() -> int:
    return int(time.time())
