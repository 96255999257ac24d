"""Malformed and edge request bodies for both POST endpoints, each with the field the 400 must name (None: the
body as a whole is at fault). Raw bytes where json.dumps could not write them (invalid UTF-8, deep nesting)."""

from __future__ import annotations

import json
from typing import Any

USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [USER], "max_tokens": 1, **fields}


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]  # 1e999: Python's json reads it as inf

CHAT: list[tuple[bytes | dict, str | None]] = [
    # NaN / Infinity anywhere: a sampling field, a nested field, a field the server ignores
    *[(raw(f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "{f}": {v}}}'), f)
      for f in ("temperature", "top_p", "max_tokens", "n", "seed", "top_logprobs") for v in NON_FINITE],
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": NaN}]}'), "messages[0].content"),
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": NaN}'),
     "frequency_penalty"),
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": true, '
         '"stream_options": {"include_usage": Infinity}}'), "stream_options.include_usage"),
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
         '"function": {"name": "f", "parameters": {"type": "object", "maximum": -Infinity}}}]}'),
     "tools[0].function.parameters.maximum"),
    # nesting deeper than the server reads, at the top and inside fields
    (raw(nested(3000)), None),
    (raw('{"model": "tiny", "messages": ' + nested(3000) + "}"), "messages" + "[0]" * 63),
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "metadata": '
         + nested(100, '{"a": 1}') + "}"), "metadata" + "[0]" * 63),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": json.loads(
        '{"p": ' * 70 + "1" + "}" * 70)}}]), "tools[0].function.parameters" + ".p" * 60),
    # lone surrogates (escaped in JSON) and invalid UTF-8 (raw bytes)
    (chat(messages=[{"role": "user", "content": "hi \ud800"}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
     "messages[0].content[0].text"),
    (chat(messages=[{"role": "user", "content": "hi", "name": "\ud83d"}]), "messages[0].name"),
    (chat(model="ti\udc00ny"), "model"),
    (chat(stop=["ok", "\ud800"]), "stop[1]"),
    (chat(user="\ud800"), "user"),
    (raw('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'), None),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\xe9"}]}', "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', "messages[0].content"),
    (b'{"model": "\xff\xfe", "messages": []}', "model"),
    # not JSON, not an object
    (b"{not json", None), (b"", None), (b"null", None), (b"[]", None), (b'"hi"', None), (b"5", None),
    (b'{"model": "tiny", "messages": [' + b"1" * 5000 + b"]}", None),  # an integer of 5000 digits
    # wrong types: strict booleans, integral floats only, strings are strings
    (chat(stream=0), "stream"), (chat(stream="true"), "stream"), (chat(logprobs={}), "logprobs"),
    (chat(logprobs=1), "logprobs"), (chat(max_tokens=3.5), "max_tokens"), (chat(max_tokens="5"), "max_tokens"),
    (chat(n=True), "n"), (chat(temperature="hot"), "temperature"), (chat(top_p=[]), "top_p"),
    (chat(top_p=0), "top_p"), (chat(temperature=2.5), "temperature"), (chat(stop=5), "stop"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"), (chat(stop=""), "stop"), (chat(seed=1.5), "seed"),
    (chat(seed=2 ** 64), "seed"), (chat(model=5), "model"), (chat(user=5), "user"),
    (chat(parallel_tool_calls=1), "parallel_tool_calls"), (chat(top_logprobs=3), "top_logprobs"),
    (chat(max_completion_tokens=0), "max_completion_tokens"), (chat(n=17), "n"),
    ({"messages": [USER]}, "model"), ({"model": "tiny"}, "messages"),
    # messages and content parts
    (chat(messages={}), "messages"), (chat(messages="hi"), "messages"), (chat(messages=[5]), "messages[0]"),
    (chat(messages=[{"content": "hi"}]), "messages[0].role"), (chat(messages=[{"role": 5, "content": "hi"}]),
                                                                "messages[0].role"),
    (chat(messages=[{"role": "user", "content": []}]), "messages[0].content"),
    (chat(messages=[{"role": "user"}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0].type"),
    (chat(messages=[{"role": "user", "content": "hi", "name": 5}]), "messages[0].name"),
    (chat(messages=[{"role": "system", "content": None}, USER]), "messages[0].content"),
    (chat(messages=[USER, {"role": "assistant", "content": "ok"}]), "messages[1].role"),
    # OpenAI's tool-message rules
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "5"}]),
     "messages[2].tool_call_id"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": 1, "content": "5"}]), "messages[2].tool_call_id"),
    (chat(messages=[USER, {"role": "tool", "tool_call_id": "call_1", "content": "5"}]), "messages[1].role"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": "call_9", "content": "5"}]), "messages[2].tool_call_id"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [CALL]}, USER]), "messages[2].role"),
    (chat(messages=[USER, {"role": "assistant"}, USER]), "messages[1].content"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": []}, USER]), "messages[1].tool_calls"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "add", "arguments": {}}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "5"}]),
     "messages[1].tool_calls[0].function.arguments"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [{"id": "call_1", "function": CALL["function"]}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "5"}]), "messages[1].tool_calls[0].type"),
    (chat(messages=[USER, {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": []}]), "messages[2].content"),
    # tools, tool_choice, stream_options
    (chat(tools="x"), "tools"), (chat(tools=[{"type": "function"}]), "tools[0].function"),
    (chat(tools=[{"function": TOOL["function"]}]), "tools[0].type"),
    (chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "tools[0].function.parameters"),
    (chat(tools=[TOOL], tool_choice="required"), "tool_choice"), (chat(tools=[TOOL], tool_choice="sometimes"),
                                                                  "tool_choice"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "add"}}), "tool_choice"),
    (chat(tool_choice="auto"), "tool_choice"),
    (chat(stream=True, stream_options="x"), "stream_options"), (chat(stream_options={"include_usage": True}),
                                                                 "stream_options"),
    (chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    # the served model and its context
    (chat(model="gpt-9"), "model"), (chat(max_tokens=10 ** 6), "max_tokens"),
    (chat(messages=[{"role": "user", "content": "word " * 3000}]), "messages"),
]

FEEDBACK: list[tuple[bytes | dict, str | None]] = [
    *[(raw(f'{{"id": "chatcmpl-x", "score": {v}}}'), "score") for v in NON_FINITE],
    (raw('{"id": NaN, "score": 1}'), "id"),
    (raw('{"id": "chatcmpl-x", "score": 1, "comment": "ok", "extra": [Infinity]}'), "extra[0]"),
    ({"id": "chatcmpl-\ud800", "score": 1}, "id"), ({"id": "chatcmpl-x", "score": 1, "comment": "\udc80"}, "comment"),
    (b'{"id": "chatcmpl-x", "score": 1, "comment": "\xc3\x28"}', "comment"),
    (b'{"id": "\xff", "score": 1}', "id"),
    ({"id": "chatcmpl-x", "score": 2}, "score"), ({"id": "chatcmpl-x", "score": 0.5}, "score"),
    ({"id": "chatcmpl-x", "score": True}, "score"), ({"id": "chatcmpl-x", "score": "1"}, "score"),
    ({"id": 5, "score": 1}, "id"), ({"id": "", "score": 1}, "id"), ({"id": "chatcmpl-x", "score": 1, "comment": 5},
                                                                    "comment"),
    ({"score": 1}, "id"), ({"id": "chatcmpl-x"}, "score"), ({"id": "chatcmpl-unknown", "score": 1}, "id"),
    (raw('{"id": "chatcmpl-x", "score": 1, "comment": ' + nested(2000, '"x"') + "}"), "comment" + "[0]" * 63),
    (raw(nested(5000)), None), (b"[1, 2]", None), (b'{"id": "chatcmpl-x", "score": 1', None),
]
