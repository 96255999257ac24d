"""Request bodies decoded so that no input can raise past the handler: a size limit, JSON only, and a walk that
refuses what Python's json module lets through but nothing downstream can hold (NaN/Infinity, numbers beyond
float range, lone surrogates, nesting deeper than MAX_DEPTH). Each refusal is an APIError naming the field.

`json_value_problem` is also how the tool-call parser checks JSON the model wrote (same rules, same reasons)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from sftlab.serve.protocol import APIError

MAX_DEPTH = 64


class _NonFinite:
    """What json.loads makes of NaN, Infinity and -Infinity here (parse_constant), so the walk can name the field."""

    def __init__(self, text: str) -> None:
        self.text = text


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_value_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """(path, reason) of the first part of a decoded JSON value that cannot be stored or re-encoded, else None.
    Iterative: a deep value cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, _NonFinite) or (isinstance(item, float) and not math.isfinite(item)):
            shown = item.text if isinstance(item, _NonFinite) else "a number beyond the float range"
            return path, f"is {shown}; JSON numbers must be finite"
        if isinstance(item, str) and _lone_surrogate(item):
            return path, "holds invalid UTF-8 or a lone UTF-16 surrogate (\\ud800-\\udfff unpaired), which is not text"
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                return path, f"is nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                for key, child in item.items():
                    if _lone_surrogate(key):
                        return path, f"has a key {key!r} holding a lone UTF-16 surrogate, which is not text"
                    stack.append((child, _path(path, key), depth + 1))
            else:
                stack.extend((child, _path(path, k), depth + 1) for k, child in enumerate(item))
    return None


class JSONProblem(ValueError):
    """Why a JSON text was refused, and where (path "" = the whole value)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}' {reason}" if path else reason)
        self.path, self.reason = path, reason


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _too_deep_at(text: str, max_depth: int) -> str:
    """Where a text that json.loads could not even recurse through first nests deeper than max_depth (a scan of
    its strings and brackets only, so the 400 can still name the field)."""
    stack: list[list[Any]] = []  # per open container: [kind, current key or index]
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            if len(stack) >= max_depth:
                break
            stack.append(["[", 0] if tok == "[" else ["{", None])
        elif tok in "]}" and stack:
            stack.pop()
        elif tok == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        elif tok.startswith('"') and stack and stack[-1][0] == "{" and text[m.end():].lstrip()[:1] == ":":
            stack[-1][1] = json.loads(tok)
    path = ""
    for _, key in stack:
        path = _path(path, key) if key is not None else path
    return path


def loads_checked(raw: bytes | str) -> Any:
    """json.loads that never returns NaN/Infinity/lone surrogates/over-deep values and raises nothing but
    JSONProblem. Bytes are read as UTF-8 (RFC 8259); an invalid byte becomes a lone surrogate, so the problem
    is reported at the field that holds it."""
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, parse_constant=_NonFinite)
    except RecursionError:
        raise JSONProblem(_too_deep_at(text, MAX_DEPTH), f"is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # JSONDecodeError, too many integer digits
        raise JSONProblem("", f"is not valid JSON: {e}") from None
    problem = json_value_problem(value)
    if problem:
        raise JSONProblem(*problem)
    return value


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """The request body as JSON, or the APIError (400) saying what is wrong and where."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise APIError(f"the request body must be JSON sent with 'Content-Type: application/json' (got "
                       f"{content_type!r})", None, "invalid_content_type")
    if not raw.strip():
        raise APIError("the request body is empty; send a JSON object", None, "invalid_json")
    try:
        return loads_checked(raw)
    except JSONProblem as e:
        param = e.path if e.path and not e.path.startswith("[") else None  # a field of the body object
        code = "invalid_value" if param and "nested" not in e.reason else "invalid_json"
        raise APIError(f"'{e.path}' {e.reason}" if e.path else f"the request body {e.reason}", param, code) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, read to the end even when too large (answering before the client finished sending breaks
    its pipe), keeping at most max_bytes in memory; 413 above the limit."""
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size <= max_bytes:
            chunks.append(chunk)
    if size > max_bytes:
        raise APIError(f"request body of {size} bytes is above the limit of {max_bytes}", None,
                       "request_too_large", status=413)
    return b"".join(chunks)


class DecodedRequest(Request):
    """A request whose JSON body was decoded by `decode_body`; FastAPI validates the route's model from it."""

    raw: bytes = b""
    decoded: Any = None

    async def body(self) -> bytes:
        return self.raw

    async def json(self) -> Any:
        return self.decoded


async def decoded_request(request: Request, max_bytes: int) -> DecodedRequest:
    out = DecodedRequest(request.scope, request.receive)
    out.raw = await read_body(request, max_bytes)
    out.decoded = decode_body(out.raw, request.headers.get("content-type"))
    return out
