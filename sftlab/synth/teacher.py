"""A teacher is any Generator: an OpenAI-compatible URL (openai backend) or a local model dir (hf backend)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from sftlab.data.records import openai_tools
from sftlab.errors import RecordError, UserError
from sftlab.infer import GenerationParams, Generator, Reply, load_generator
from sftlab.io import progress_bar


def load_teacher(teacher: str, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 8, backend: str = "auto") -> Generator:
    """`teacher` starting with http(s):// is an endpoint base_url; anything else is a local model directory."""
    if teacher.startswith(("http://", "https://")):
        cfg: dict[str, Any] = {"base_url": teacher, "model": model, "concurrency": concurrency}
        if api_key_env:
            cfg["api_key_env"] = api_key_env
        return load_generator(cfg, backend="openai" if backend == "auto" else backend)
    if model:
        raise UserError(f"--teacher-model {model!r} is only for an endpoint URL; {teacher} is a local directory")
    if not Path(teacher).is_dir():
        raise UserError(f"{teacher}: not a model directory; give a local model dir or an OpenAI-compatible endpoint "
                        "URL (http://host:port/v1)")
    return load_generator(teacher, backend=backend)


class CachedTeacher:
    """A Generator that keeps the teacher's replies in sqlite, keyed by (teacher, conversation, tools, params), so
    a synth run that stopped part-way (a teacher error, Ctrl-C) resumes when run again: only what was not answered
    is sent; a rerun with other filters (threshold, verifier) sends nothing. Unseeded sampling is never cached:
    it asks for new samples every time. Replies are committed after every generate() call (ask() sends chunks)."""

    def __init__(self, gen: Generator, path: str | Path) -> None:
        self.gen, self.path = gen, Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("CREATE TABLE IF NOT EXISTS reply (key TEXT PRIMARY KEY, replies TEXT)")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a teacher cache ({e}); remove it or pass --fresh") from None
        self.hits = self.sent = 0

    def __getattr__(self, name: str) -> Any:  # model_id, base_url, ...: the teacher's own
        if name == "gen":
            raise AttributeError(name)
        return getattr(self.gen, name)

    def _key(self, conversation: list[dict], params: GenerationParams, tools: list[dict] | None) -> str:
        blob = json.dumps([teacher_id(self.gen), conversation, tools, dataclasses.asdict(params)], sort_keys=True,
                          ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def generate(self, conversations: list[list[dict]], params: GenerationParams,
                 tools: list[dict] | None = None) -> list[list[Reply]]:
        if params.temperature > 0 and params.seed is None:
            self.sent += len(conversations)
            return self.gen.generate(conversations, params, tools)
        keys = [self._key(c, params, tools) for c in conversations]
        found: dict[str, list[Reply]] = {}
        for k in set(keys):
            row = self.db.execute("SELECT replies FROM reply WHERE key = ?", (k,)).fetchone()
            if row:
                found[k] = [Reply(**r) for r in json.loads(row[0])]
        out: list[list[Reply] | None] = [found.get(k) for k in keys]
        todo = [i for i, reps in enumerate(out) if reps is None]
        self.hits += len(conversations) - len(todo)
        self.sent += len(todo)
        if todo:
            new = self.gen.generate([conversations[i] for i in todo], params, tools)
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO reply VALUES (?, ?)",
                                    [(keys[i], json.dumps([dataclasses.asdict(r) for r in reps], ensure_ascii=False))
                                     for i, reps in zip(todo, new, strict=True)])
            for i, reps in zip(todo, new, strict=True):
                out[i] = reps
        return out  # type: ignore[return-value]  # every slot is filled


def teacher_id(gen: Generator) -> str:
    return f"{getattr(gen, 'base_url', '') or 'local'}:{gen.model_id}".removeprefix("local:")


def ask(gen: Generator, conversations: list[list[dict]], params: GenerationParams,
        batch_size: int = 64, label: str = "teacher", tools: list[list[dict] | None] | None = None
        ) -> list[list[Reply]]:
    """generate() in chunks with a progress bar (the backend batches / parallelises inside each chunk).
    `tools`: one list per conversation (OpenAI shape, see records.openai_tools) or None; conversations with the same
    tools go to the teacher together, since one generate() call takes one tools list (as eval runs do)."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tools or [None] * len(conversations)):
        groups.setdefault(json.dumps(t, sort_keys=True), []).append(i)
    out: list[list[Reply]] = [[] for _ in conversations]
    with progress_bar(disable=len(conversations) <= batch_size) as bar:
        task = bar.add_task(label, total=len(conversations))
        for members in groups.values():
            group_tools = tools[members[0]] if tools else None
            for a in range(0, len(members), batch_size):
                part = members[a:a + batch_size]
                for i, reps in zip(part, gen.generate([conversations[i] for i in part], params, group_tools),
                                   strict=True):
                    out[i] = reps
                bar.advance(task, len(part))
    return out


def record_tools(rec: dict[str, Any]) -> list[dict] | None:
    """A record's tools in the shape an OpenAI-compatible teacher takes (`records.openai_tools`: bare function
    schemas, as glaive / LLaMA-Factory files carry them, are wrapped); an error names the record."""
    try:
        return openai_tools(rec.get("tools"))
    except RecordError as e:
        raise UserError(f"record {rec.get('id')!r}: {e.describe()}") from None


def reply_message(reply: Reply) -> dict[str, Any]:
    """The assistant message of a teacher reply: its text, and its tool calls (OpenAI shape) when it made any."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [{"type": "function", **{k: v for k, v in c.items() if k != "index"}}
                                 for c in reply.tool_calls]
    return message


def invalid_tool_call(message: dict[str, Any], tools: list[dict] | None) -> str | None:
    """Why an assistant message's tool calls cannot be trained on (None when they can, or when there are none): a
    function the record does not declare, or arguments that are not a JSON object."""
    declared = {t["function"].get("name") for t in tools or []}
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        if fn.get("name") not in declared:
            names = ", ".join(sorted(map(str, declared))) or "none"
            return f"calls {fn.get('name')!r}, not one of the record's tools ({names})"
        args = fn.get("arguments")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            return f"{fn['name']}: arguments are not valid JSON: {str(args)[:60]!r}"
        if not isinstance(parsed, dict):
            return f"{fn['name']}: arguments are not a JSON object"
    return None


def message_text(message: dict[str, Any]) -> str:
    """A message as plain text for a prompt about it (a judge, a follow-up writer): content, then one line per
    tool call (`[tool call] name {arguments}`)."""
    lines = [message.get("content") or ""]
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or call
        args = fn.get("arguments")
        lines.append(f"[tool call] {fn.get('name')} {args if isinstance(args, str) else json.dumps(args)}")
    return "\n".join(x for x in lines if x)
