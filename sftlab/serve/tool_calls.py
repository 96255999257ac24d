"""Tool calls out of a local model's text, by parser name (as vLLM's --tool-call-parser): the chat template's
tool-call layout becomes OpenAI `tool_calls`.

`hermes`: Qwen2.5 / Hermes / sftlab's ChatML template, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
blocks (several allowed) with optional text around them. A parser here is a block layout (start and end markers
and how one block's text becomes a call); `ToolCallSplitter` does the rest for every parser, streamed or not, so
a streamed reply and a plain one split the same text identically:

- text outside blocks is content; whitespace touching a well-formed block is the layout's, not content;
- a well-formed block becomes {"id": "call_...", "type": "function", "function": {"name", "arguments": JSON text}};
- a block that is not well-formed (bad JSON, no name, not closed at the end) stays content, word for word, and is
  counted in `malformed`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftlab.serve.body import JSONProblem, loads_checked


@dataclass(frozen=True)
class ToolCallParser:
    name: str
    start: str
    end: str
    parse_block: Callable[[str], dict[str, Any] | None]  # a block's inner text -> {"name", "arguments"} or None


def _hermes_block(text: str) -> dict[str, Any] | None:
    try:
        call = loads_checked(text.strip())
    except JSONProblem:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        return None
    args = call.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as JSON text
        try:
            args = loads_checked(args)
        except JSONProblem:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": call["name"], "arguments": json.dumps(args, ensure_ascii=False)}


TOOL_CALL_PARSERS: dict[str, ToolCallParser] = {
    "hermes": ToolCallParser("hermes", "<tool_call>", "</tool_call>", _hermes_block),
}


def get_parser(name: str | None) -> ToolCallParser | None:
    """The parser registered under `name`; None for None / "none"; a ValueError listing the names otherwise."""
    if name is None or name == "none":
        return None
    if name not in TOOL_CALL_PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r}; known: {', '.join(TOOL_CALL_PARSERS)}, none")
    return TOOL_CALL_PARSERS[name]


def new_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


@dataclass
class Piece:
    """One output of the splitter: content text, or a parsed call."""

    text: str = ""
    call: dict[str, Any] | None = None


@dataclass
class ToolCallSplitter:
    """Feed a reply's text as it is generated; get content pieces and calls as soon as they are certain."""

    parser: ToolCallParser
    buffer: str = ""
    in_block: bool = False
    pending_ws: str = ""  # whitespace held back: dropped if a well-formed block follows
    after_block: bool = False  # just after a well-formed block: leading whitespace is dropped
    calls: list[dict[str, Any]] = field(default_factory=list)
    content: str = ""
    malformed: int = 0

    def feed(self, text: str) -> list[Piece]:
        self.buffer += text
        out: list[Piece] = []
        while True:
            if not self.in_block:
                i = self.buffer.find(self.parser.start)
                if i < 0:  # keep back what could be the start of a marker
                    keep = _marker_prefix(self.buffer, self.parser.start)
                    self._outside(self.buffer[:len(self.buffer) - keep], out)
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return out
                self._outside(self.buffer[:i], out)
                self.buffer, self.in_block = self.buffer[i + len(self.parser.start):], True
            j = self.buffer.find(self.parser.end)
            if j < 0:
                return out
            self._block(self.buffer[:j], out)
            self.buffer, self.in_block = self.buffer[j + len(self.parser.end):], False

    def end(self) -> list[Piece]:
        """The rest, once the reply is complete: an unclosed block is malformed and stays content."""
        out: list[Piece] = []
        if self.in_block:
            self.malformed += 1
            self._emit(self.pending_ws + self.parser.start + self.buffer, out)
            self.pending_ws = ""
        else:
            self._outside(self.buffer, out)
        if self.pending_ws and not self.after_block:
            self._emit(self.pending_ws, out)
        self.buffer, self.pending_ws, self.in_block = "", "", False
        return out

    def _block(self, inner: str, out: list[Piece]) -> None:
        call = self.parser.parse_block(inner)
        if call is None:
            self.malformed += 1
            self._emit(self.pending_ws + self.parser.start + inner + self.parser.end, out)
            self.pending_ws, self.after_block = "", False
            return
        self.pending_ws, self.after_block = "", True
        full = new_call(call["name"], call["arguments"])
        self.calls.append(full)
        out.append(Piece(call=full))

    def _outside(self, text: str, out: list[Piece]) -> None:
        if self.after_block:
            text = text.lstrip()
            if not text:
                return
            self.after_block = False
        body = text.rstrip()
        if body:
            self._emit(self.pending_ws + body, out)
            self.pending_ws = text[len(body):]
        else:
            self.pending_ws += text

    def _emit(self, text: str, out: list[Piece]) -> None:
        if text:
            self.content += text
            out.append(Piece(text=text))


def _marker_prefix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def split_reply(text: str, parser: ToolCallParser) -> ToolCallSplitter:
    """A whole reply split at once (the non-streamed path); read .content, .calls, .malformed."""
    splitter = ToolCallSplitter(parser)
    splitter.feed(text)
    splitter.end()
    return splitter
