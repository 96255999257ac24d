"""The canonical record and its validation.

A record is a plain JSON-serialisable dict, so every stage can read and write it as JSONL:

    {"id": str, "messages": [{"role", "content", "loss_weight"?, "tool_calls"?, "tool_call_id"?, "name"?}],
     "tools": [{"type": "function", "function": {"name", "description"?, "parameters"?}}] | None,
     "task_type": str, "source": str, "meta": dict}

Tools are kept in OpenAI's shape, the list an OpenAI request carries and `sftlab serve` hands to the chat template,
so a model is trained on the tools block it will be served with (`openai_tools`).

`task_type` may be two-level ("reasoning/commonsense"); both levels are channels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sftlab.errors import RecordError
from sftlab.io import iter_jsonl, write_jsonl  # noqa: F401 - the record files' JSONL I/O, importable from here

BASE_ROLES = ("system", "user", "assistant", "tool")


def openai_tools(tools: Any) -> list[dict[str, Any]] | None:
    """A record's tools in OpenAI's shape: a bare function schema ({"name", "parameters", ...}, as glaive /
    sharegpt files carry it) is wrapped as {"type": "function", "function": schema}; an OpenAI tool is kept as is.
    None or [] -> None. A tool that is neither is a RecordError naming `tools[i]`."""
    if tools is None or (isinstance(tools, list) and not tools):
        return None
    if not isinstance(tools, list):
        raise RecordError(f"must be a list of tools, got {type(tools).__name__}", field="tools", code="bad_tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise RecordError(f"tool must be an object, got {type(tool).__name__}", field=f"tools[{i}]",
                              code="bad_tools")
        if "type" not in tool:  # a bare function schema, or a wrapped one without its type
            tool = {"type": "function", **tool} if "function" in tool else {"type": "function", "function": tool}
        fn = tool.get("function")
        named = isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"].strip()
        if tool["type"] == "function" and not named:
            raise RecordError('a function tool needs a name: {"type": "function", "function": {"name": ...}}, or a '
                              'bare {"name": ...} schema', field=f"tools[{i}]", code="bad_tools")
        out.append(tool)
    return out


def validate_record(rec: dict[str, Any], extra_roles: Iterable[str] = (), *,
                    require_answer: bool = True, allow_empty_answers: bool = False) -> dict[str, Any]:
    """Check a canonical record; raise RecordError naming the field. Returns the record.

    require_answer=False (prompt-only records, e.g. eval prompts) drops the "ends on an assistant turn" rule.
    allow_empty_answers=True accepts empty assistant turns (`data clean` drops them with its own reason).
    An assistant turn before any user/tool turn is refused: there is no prompt to answer, and chat
    templates cannot render it. Its tools are put in OpenAI's shape in place (`openai_tools`).
    """
    roles = set(BASE_ROLES) | set(extra_roles)
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise RecordError("missing or empty id", field="id", code="missing_id")
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("no messages", field="messages", code="no_messages")
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RecordError("message is not an object", field=f, code="bad_message")
        role = m.get("role")
        if role not in roles:
            raise RecordError(f"unknown role {role!r} (known: {', '.join(sorted(roles))}; declare custom "
                              "roles in data.extra_roles)", field=f"{f}.role", code="unknown_role")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise RecordError("message has no content", field=f"{f}.content", code="missing_content")
        if content is not None and not isinstance(content, str):
            raise RecordError("content must be a string", field=f"{f}.content", code="bad_content")
        if (role == "assistant" and not allow_empty_answers and not (content or "").strip()
                and not m.get("tool_calls")):
            raise RecordError("empty assistant message", field=f"{f}.content", code="empty_assistant")
        if role == "assistant" and all(x.get("role") == "system" for x in msgs[:i]):
            raise RecordError("conversation starts with an assistant turn (no user turn before it to answer)",
                              field=f"{f}.role", code="starts_with_assistant")
        lw = m.get("loss_weight")
        if lw is not None and (isinstance(lw, bool) or not isinstance(lw, (int, float)) or not lw >= 0
                               or not math.isfinite(lw)):
            raise RecordError(f"loss_weight must be a number >= 0, got {lw!r}", field=f"{f}.loss_weight",
                              code="bad_loss_weight")
    if require_answer and msgs[-1].get("role") != "assistant":
        raise RecordError(f"conversation ends on a {msgs[-1].get('role')!r} turn, not an assistant turn",
                          field=f"messages[{len(msgs) - 1}].role", code="not_ending_on_assistant")
    if not isinstance(rec.get("task_type"), str) or not rec["task_type"]:
        raise RecordError("missing task_type", field="task_type", code="missing_task_type")
    if "tools" in rec:
        rec["tools"] = openai_tools(rec["tools"])
    return rec


def make_record(messages: list[dict[str, Any]], *, id: str, task_type: str, source: str = "",
                tools: list | None = None, meta: dict | None = None) -> dict[str, Any]:
    """Build a canonical record dict (no validation)."""
    return {"id": id, "messages": messages, "tools": tools, "task_type": task_type, "source": source,
            "meta": dict(meta or {})}


def task_channels(task_type: str) -> list[str]:
    """Channels a task_type counts in: 'a/b' -> ['a', 'a/b']."""
    parts = task_type.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
