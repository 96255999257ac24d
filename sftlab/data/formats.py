"""Readers: alpaca / sharegpt / openai-messages / eval-prompt data in JSON, JSONL, Parquet, CSV or a saved
HF `datasets` directory -> canonical records (see records.py).

    records, rejects = read_records("data.json")                 # format detected from the fields
    records, rejects = read_records("qa.csv", "alpaca", columns={"question": "instruction", "answer": "output"})

Record formats (`fmt`):
- alpaca:   instruction, input?, output, system?, history? [[q, a], ...]
- sharegpt: conversations [{from, value}] (from: human/user, gpt/assistant, system, function_call,
            observation), system?, tools? (a list or a JSON string; bare function schemas are wrapped in
            OpenAI's {"type": "function", "function": ...}, the shape requests carry)
- openai:   messages [{role, content (string or text parts), tool_calls?, tool_call_id?, name?, loss_weight?}],
            plus our id, task_type, source, meta, tools. This is the canonical layout `sftlab data convert` writes.
            OpenAI fine-tuning data's per-message `weight` (0: not trained on) is read as loss_weight; its
            `developer` role is the system turn, and the legacy function-calling layout (`functions`, an
            assistant `function_call`, a `function` role result) is read as tools, tool_calls and a tool turn.
- prompts:  eval prompts, mt_bench style {question_id, category, turns: [str, ...]} -> user turns only,
            meta.prompt_only = True (validated without the "ends on an assistant turn" rule).

Every record is validated; a bad one is a RecordError naming file, line (JSONL, 1-based) or index (0-based:
JSON arrays, CSV data rows, Parquet and HF rows),
the field in the user's own layout (e.g. `conversations[3].value`) and the reason. on_error="skip" collects
rejects {file, index, unit, ordinal, field, code, reason, raw} instead; nothing is dropped silently.

Refused with a one-line reason (not SFT data, or not text): preference pairs (chosen/rejected), KTO records
(a boolean `label`), multimodal records (images/videos/audios). Tool calls are checked at read time (a name,
arguments as a JSON object or JSON text of one). Non-finite numbers (NaN, Infinity), lone surrogates and
nesting too deep to write back are rejected, so what `convert` writes is always valid UTF-8 JSON. Chat-control
strings inside message text (e.g. `<|im_end|>`, tokenized as the real special token) are counted per file
(special_text="warn"), escaped with a zero-width space after their first character ("escape") or rejected.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sftlab.data.records import RecordError, make_record, openai_tools, validate_record, write_jsonl

FORMATS = ("alpaca", "sharegpt", "openai", "prompts")
FORMAT_ALIASES = {"messages": "openai", "canonical": "openai", "chatml": "openai", "mt_bench": "prompts",
                  "eval": "prompts", "eval_prompts": "prompts"}
ON_ERROR = ("raise", "skip")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Fields that hold lists/objects; tabular files (CSV, or Parquet written by other tools) may store them as JSON text.
NESTED_FIELDS = ("messages", "conversations", "history", "turns", "tools", "meta")
# Record-level fields every format understands.
COMMON_FIELDS = ("id", "task_type", "category", "source", "meta", "tools")

# Where each canonical message came from (to name the user's own field in errors): a field holding the content
# itself ("output", "turns[1]"), or a message object with its role and content keys ("conversations[3]", "from", "value").
Origin = list[Any]

# Chat-control strings of common templates; inside message text they tokenize as the real special token.
CONTROL_STRINGS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|end|>", "<|user|>",
                   "<|assistant|>", "<|system|>", "<start_of_turn>", "<end_of_turn>", "</s>")
_CONTROL_RE = re.compile("|".join(re.escape(t) for t in CONTROL_STRINGS))
SPECIAL_TEXT = ("warn", "escape", "reject")
MEDIA_FIELDS = ("images", "videos", "audios")

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "tool": "tool", "function": "tool"}


def normalize_format(fmt: str | None) -> str:
    """'auto' or one of FORMATS (aliases accepted); anything else is a RecordError naming the choices."""
    fmt = (fmt or "auto").strip().lower()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise RecordError(f"unknown format {fmt!r} (choose auto, {', '.join(FORMATS)})", field="format",
                          code="unknown_format")
    return fmt


def detect_format(row: Any) -> str | None:
    """The record format a row's fields indicate, or None."""
    if not isinstance(row, Mapping):
        return None
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        msgs = row["messages"]
        first = msgs[0] if isinstance(msgs, list) and msgs else None
        if isinstance(first, Mapping) and "from" in first and "role" not in first:
            return "sharegpt"
        return "openai"
    if "turns" in row:
        return "prompts"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


# ---------------------------------------------------------------------------------------------- file layer


def _decode(data: bytes, path: str, index: int | None = None, unit: str = "record") -> str:
    try:
        return data.decode("utf-8-sig" if index in (None, 1) else "utf-8")
    except UnicodeDecodeError as e:
        hint = "; it is UTF-16 (byte-order mark): save it as UTF-8" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else \
            "; save it as UTF-8"
        raise RecordError(f"not valid UTF-8 ({e.reason} at byte {e.start}){hint}", file=path, index=index, unit=unit,
                          code="bad_encoding") from None


class _Duplicates:
    """object_pairs_hook that keeps the last value of a repeated key (like json.loads) and remembers the key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            seen: set[str] = set()
            self.keys += [k for k, _ in pairs if k in seen or seen.add(k)]
        return d


def _loads(text: str, dup: _Duplicates) -> Any:
    """json.loads that reports repeated keys to `dup`; too deep nesting is a JSONDecodeError-like ValueError."""
    try:
        return json.loads(text, object_pairs_hook=dup)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _iter_jsonl(path: str, notes: list | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, object or RecordError) per non-blank line; a bad line does not stop the file."""
    dup = _Duplicates()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = _decode(raw, path, lineno, "line")
            except RecordError as e:
                yield lineno, e
                continue
            if not line.strip():
                continue
            try:
                obj = _loads(line, dup)
            except ValueError as e:
                reason = (f"malformed JSON ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError)
                          else f"malformed JSON ({e})")
                err = RecordError(reason, file=path, index=lineno, unit="line", code="malformed_json")
                err.raw = line.rstrip("\r\n")
                yield lineno, err
                continue
            if dup.keys and notes is not None:
                notes.append((lineno, dup.keys))
            dup.keys = []
            yield lineno, obj


def _json_rows(path: str, notes: list | None = None) -> tuple[str, Iterable[tuple[int, Any]]]:
    with open(path, "rb") as f:
        text = _decode(f.read(), path)
    if not text.strip():
        return "index", iter(())  # an empty file holds no records (like an empty JSONL file)
    dup = _Duplicates()
    try:
        data = _loads(text, dup)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return "line", _iter_jsonl(path, notes)  # JSON Lines under a .json name
        raise RecordError(f"malformed JSON ({e.msg} at line {e.lineno} column {e.colno})", file=path,
                          code="malformed_json") from None
    except ValueError as e:
        raise RecordError(f"malformed JSON ({e})", file=path, code="malformed_json") from None
    if dup.keys and notes is not None:
        notes.append((None, dup.keys))
    if isinstance(data, dict):
        if detect_format(data):
            data = [data]
        else:
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                what = f"several lists ({', '.join(lists)})" if lists else "no list of records"
                raise RecordError(f"JSON object holds {what}; expected a list of records or an object holding "
                                  "exactly one", file=path, code="bad_layout")
            data = data[lists[0]]
    if not isinstance(data, list):
        raise RecordError(f"top-level JSON is a {type(data).__name__}, expected a list of records", file=path,
                          code="bad_layout")
    return "index", enumerate(data)


def _csv_rows(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, strict=True)  # strict: an unterminated quote is an error, not one huge cell
        i = -1
        try:
            for i, row in enumerate(reader):
                extra = row.pop(None, None)
                if extra:
                    yield i, RecordError(f"row has {len(extra)} more cells than the header", file=path, index=i,
                                         code="bad_row")
                    continue
                # A short row leaves cells as None: treat them as absent.
                yield i, {k: v for k, v in row.items() if v is not None}
        except csv.Error as e:
            raise RecordError(f"malformed CSV ({e})", file=path, index=i + 1, unit="index",
                              code="malformed_csv") from None
        except UnicodeDecodeError as e:
            raise RecordError(f"not valid UTF-8 ({e.reason})", file=path, index=i + 1, unit="index",
                              code="bad_encoding") from None


def _parquet_rows(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa  # lazy: pyarrow loads only for Parquet inputs
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise RecordError(f"cannot read as Parquet ({str(e).splitlines()[0]})", file=path,
                          code="bad_parquet") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield i, row
            i += 1


def _hf_rows(path: str) -> Iterator[tuple[int, Any]]:
    import datasets  # lazy: datasets takes over a second to import; only for saved HF datasets directories

    try:
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise RecordError(f"not a saved HF datasets directory ({str(e).splitlines()[0]})", file=path,
                          code="bad_dataset_dir") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if len(splits) != 1:
            raise RecordError(f"dataset has splits {', '.join(splits)}; pass one of them as {path}/<split>",
                              file=path, code="several_splits")
        ds = ds[splits[0]]
    i = 0
    for batch in ds.iter(batch_size=1024):
        cols = list(batch)
        for values in zip(*(batch[c] for c in cols), strict=True):
            yield i, dict(zip(cols, values, strict=True))
            i += 1


def iter_rows(path: str | Path, notes: list | None = None) -> tuple[str, str, Iterable[tuple[int, Any]]]:
    """(file kind, position unit, iterator of (position, raw row or RecordError)) for one input.

    notes (optional) collects (position, [repeated JSON keys]) of JSON rows that repeat a key."""
    p = Path(path)
    path = str(path)
    if p.is_dir():
        return "hf_dataset", "index", _hf_rows(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", path)
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl", "line", _iter_jsonl(path, notes)
    if suffix == ".json":
        unit, rows = _json_rows(path, notes)
        return ("jsonl" if unit == "line" else "json"), unit, rows
    if suffix == ".parquet":
        return "parquet", "index", _parquet_rows(path)
    if suffix == ".csv":
        return "csv", "index", _csv_rows(path)
    with open(path, "rb") as f:  # unknown suffix: JSON or JSON Lines by content
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        unit, rows = _json_rows(path, notes)
        return "json", unit, rows
    if head.startswith(b"{"):
        return "jsonl", "line", _iter_jsonl(path, notes)
    raise RecordError(f"cannot tell the file type from the suffix {p.suffix!r} (use .json, .jsonl, .parquet, .csv "
                      "or a saved HF datasets directory)", file=path, code="unknown_file_type")


# ---------------------------------------------------------------------------------------------- record layer


def _missing(field: str) -> RecordError:
    return RecordError("missing field", field=field, code="missing_field")


def _bad(field: str, reason: str, code: str = "bad_field") -> RecordError:
    return RecordError(reason, field=field, code=code)


def _text(row: Mapping, key: str, *, required: bool, where: str | None = None) -> str | None:
    field = where or key
    v = row.get(key)
    if v is None:
        if required:
            raise _missing(field)
        return None
    if not isinstance(v, str):
        raise _bad(field, f"must be a string, got {type(v).__name__}")
    return v


def _parse_json_field(row: dict, key: str) -> None:
    """Nested fields stored as JSON text (CSV cells, Parquet string columns) -> objects."""
    v = row.get(key)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            row[key] = None
        elif s[0] in "[{":
            try:
                row[key] = json.loads(s)
            except json.JSONDecodeError as e:
                raise _bad(key, f"malformed JSON text ({e.msg} at column {e.colno})", "malformed_json") from None


def _tools(row: Mapping) -> list | None:
    """The row's tools in OpenAI's shape (what `sftlab serve` passes to the template): bare function schemas
    (glaive / sharegpt `tools`, OpenAI's legacy `functions`) are wrapped, OpenAI tools kept."""
    tools = row.get("tools")
    if tools in (None, "", []) and isinstance(row.get("functions"), list) and row["functions"]:
        tools = row["functions"]  # OpenAI's legacy function-calling fine-tuning layout: the schemas themselves
    if tools in (None, "", []):
        return None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise _bad("tools", f"must be a list (or its JSON text), got {type(tools).__name__}")
    return openai_tools(tools)


def _alpaca(row: Mapping) -> tuple[list[dict], Origin]:
    instruction = _text(row, "instruction", required=True)
    inp = _text(row, "input", required=False) or ""
    output = _text(row, "output", required=True)
    msgs, origin = _system_start(row)
    history = row.get("history") or []
    if not isinstance(history, list):
        raise _bad("history", "must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _bad(f"history[{i}]", "must be a [question, answer] pair of strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        origin += [f"history[{i}][0]", f"history[{i}][1]"]
    if not instruction and not inp:
        raise _bad("instruction", "empty prompt (instruction and input are both empty)", "empty_prompt")
    user = instruction + "\n" + inp if instruction and inp else instruction or inp
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    origin += ["instruction", "output"]
    return msgs, origin


def _system_start(row: Mapping) -> tuple[list[dict], Origin]:
    """Messages and origins so far: the optional top-level `system` field as the first message."""
    system = _text(row, "system", required=False)
    return ([{"role": "system", "content": system}], ["system"]) if system else ([], [])


def _check_arguments(args: Any, field: str) -> Any:
    """Tool-call arguments: a JSON object, or JSON text of one (kept as given); absent -> {}."""
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            raise _bad(field, f"arguments are not valid JSON text: {args[:60]!r}", "bad_tool_call") from None
        if not isinstance(parsed, dict):
            raise _bad(field, f"arguments must be a JSON object, got JSON {type(parsed).__name__}", "bad_tool_call")
        return args
    if not isinstance(args, dict):
        raise _bad(field, f"arguments must be a JSON object or its JSON text, got {type(args).__name__}",
                   "bad_tool_call")
    return args


def _check_tool_call(call: Any, field: str) -> dict:
    """One OpenAI-style tool call ({type, function: {name, arguments}} or flat {name, arguments}), checked."""
    if not isinstance(call, Mapping):
        raise _bad(field, f"tool call must be an object, got {type(call).__name__}", "bad_tool_call")
    fn = call.get("function", call)
    where = f"{field}.function" if "function" in call else field
    if not isinstance(fn, Mapping):
        raise _bad(where, f"must be an object with name and arguments, got {type(fn).__name__}", "bad_tool_call")
    if not (isinstance(fn.get("name"), str) and fn["name"].strip()):
        raise _bad(f"{where}.name", "tool call has no function name", "bad_tool_call")
    args = _check_arguments(fn.get("arguments"), f"{where}.arguments")
    out = {k: v for k, v in call.items() if k != "function" and k not in ("name", "arguments")}
    out.setdefault("type", "function")
    out["function"] = {**{k: v for k, v in fn.items() if k not in ("name", "arguments")}, "name": fn["name"],
                       "arguments": args}
    return out


def _tool_calls(value: str, field: str) -> list[dict]:
    try:
        calls = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise _bad(field, f"function_call value is not valid JSON: {value[:60]!r}", "bad_tool_call") from None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls:
        raise _bad(field, "function_call holds no call", "bad_tool_call")
    return [_check_tool_call(c, field) for c in calls]


def _sharegpt(row: Mapping, columns: Mapping[str, str]) -> tuple[list[dict], Origin]:
    key = "conversations" if "conversations" in row else "messages"
    conv = row.get(key)
    if conv is None:
        raise _missing("conversations")
    if not isinstance(conv, list):
        raise _bad(key, f"must be a list of {{from, value}} messages, got {type(conv).__name__}")
    msgs, origin = _system_start(row)
    for i, m in enumerate(conv):
        f = f"{key}[{i}]"
        if not isinstance(m, Mapping):
            raise _bad(f, "message is not an object", "bad_message")
        m = _rename(m, columns)
        tag = "from" if "from" in m or "role" not in m else "role"
        val = "value" if "value" in m or "content" not in m else "content"
        who = _text(m, tag, required=True, where=f"{f}.{tag}")
        content = _text(m, val, required=True, where=f"{f}.{val}")
        if who == "function_call":
            msg = {"role": "assistant", "content": "", "tool_calls": _tool_calls(content, f"{f}.{val}")}
        else:
            if who == "system" and origin[:1] == ["system"]:
                raise _bad(f"{f}.{tag}", "system prompt given twice (record field 'system' and a system turn)",
                           "conflicting_system")
            msg = {"role": SHAREGPT_ROLES.get(who, who), "content": content}
        msgs.append(msg)
        origin.append((f, tag, val))
    return msgs, origin


def _content_text(content: Any, field: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise _bad(f"{field}[{j}]", f"unsupported content part {kind!r} (only text parts are supported)",
                           "unsupported_content")
        return "".join(parts)
    raise _bad(field, f"content must be a string or a list of text parts, got {type(content).__name__}",
               "bad_content")


def _openai(row: Mapping, columns: Mapping[str, str]) -> tuple[list[dict], None]:
    msgs = row.get("messages")
    if msgs is None:
        raise _missing("messages")
    if not isinstance(msgs, list):
        raise _bad("messages", f"must be a list of {{role, content}} messages, got {type(msgs).__name__}")
    out = []
    for i, m in enumerate(msgs):
        f = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise _bad(f, "message is not an object", "bad_message")
        m = {k: v for k, v in _rename(m, columns).items() if v is not None}  # Arrow rows carry None for absent
        if "role" not in m:
            raise _missing(f"{f}.role")
        # OpenAI's newer and legacy names for what chat templates know as system / tool_calls / tool
        m["role"] = {"developer": "system", "function": "tool"}.get(m["role"], m["role"])
        if "function_call" in m:
            if "tool_calls" in m:
                raise _bad(f"{f}.function_call", "give function_call (legacy) or tool_calls, not both", "bad_tool_call")
            m["tool_calls"] = [m.pop("function_call")]
        if "tool_calls" in m:
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise _bad(f"{f}.tool_calls", f"must be a list of tool calls, got {type(calls).__name__}",
                           "bad_tool_call")
            m["tool_calls"] = [_check_tool_call(c, f"{f}.tool_calls[{j}]") for j, c in enumerate(calls)] or None
            if m["tool_calls"] is None:
                del m["tool_calls"]
        m["content"] = _content_text(m.get("content"), f"{f}.content")
        if m["content"] is None:
            if not m.get("tool_calls"):
                raise _missing(f"{f}.content")
            m["content"] = ""
        if "weight" in m:  # OpenAI fine-tuning data: weight 0 = do not train on this assistant message
            _openai_weight(m, f)
        out.append(m)
    return out, None


def _openai_weight(m: dict, f: str) -> None:
    """OpenAI's per-message `weight` (0 or 1) as our loss_weight, so `weight: 0` turns are not supervised."""
    w = m.pop("weight")
    if "loss_weight" in m:
        raise _bad(f"{f}.weight", "give weight (OpenAI) or loss_weight, not both")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        raise _bad(f"{f}.weight", f"must be a number >= 0 (OpenAI: 0 or 1), got {w!r}", "bad_loss_weight")
    m["loss_weight"] = w


def _prompts(row: Mapping) -> tuple[list[dict], Origin]:
    turns = row.get("turns")
    if turns is None:
        raise _missing("turns")
    if not isinstance(turns, list) or not turns:
        raise _bad("turns", "must be a non-empty list of strings")
    msgs, origin = _system_start(row)
    for i, t in enumerate(turns):
        if not isinstance(t, str) or not t.strip():
            raise _bad(f"turns[{i}]", "must be a non-empty string", "empty_prompt")
        msgs.append({"role": "user", "content": t})
        origin.append(f"turns[{i}]")
    return msgs, origin


FORMAT_FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "messages", "system"),
    "openai": ("messages", "functions"),
    "prompts": ("turns", "question_id", "system"),
}


def _rename(d: Mapping, columns: Mapping[str, str]) -> Mapping:
    if not columns or not any(k in d for k in columns):
        return d
    return {columns.get(k, k): v for k, v in d.items()}


_MSG_FIELD = re.compile(r"messages\[(\d+)\](?:\.(\w+))?(.*)$")


def _user_field(field: str | None, origin: Origin | None) -> str | None:
    """A canonical field name (messages[3].content) -> the same place in the user's layout."""
    m = _MSG_FIELD.match(field or "")
    if not m or origin is None or int(m[1]) >= len(origin):
        return field
    o = origin[int(m[1])]
    if isinstance(o, str):
        return o
    base, tag, val = o
    if m[2] is None:
        return base
    return f"{base}.{ {'role': tag, 'content': val}.get(m[2], m[2]) }{m[3]}"


def _refuse_non_sft(row: Mapping) -> None:
    """Preference pairs, KTO records and multimodal records are not text SFT data: say what they are."""
    if "chosen" in row and "rejected" in row:
        raise RecordError("preference (DPO) record with chosen/rejected answers, not SFT data: train it with a "
                          "preference trainer (e.g. TRL's DPOTrainer); `sftlab data` reads SFT records only",
                          field="chosen", code="preference_data")
    if isinstance(row.get("label"), bool) and any(k in row for k in ("messages", "conversations", "instruction")):
        raise RecordError("KTO record (a boolean 'label'; label false marks an undesirable answer), not SFT data: "
                          "keep only the label: true records before converting, or train it with a KTO trainer",
                          field="label", code="kto_data")
    for key in MEDIA_FIELDS:
        if row.get(key) not in (None, "", []):
            raise RecordError(f"multimodal record ({key}: {str(row[key])[:60]}): sftlab trains text-only models; "
                              f"remove the media and their placeholders (<image>, ...) first", field=key,
                              code="multimodal")


def _bad_value_path(obj: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, problem) of the first non-finite number or lone surrogate in obj (the error path only)."""
    stack = [(obj, path)]
    while stack:
        o, p = stack.pop()
        if isinstance(o, float) and not math.isfinite(o):
            return p or "record", f"non-finite number {o!r} (JSON has no NaN/Infinity)"
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                return p or "record", "lone surrogate in the text (not valid Unicode; the file is corrupt there)"
        elif isinstance(o, Mapping):
            stack += [(v, f"{p}.{k}" if p else str(k)) for k, v in reversed(list(o.items()))]
        elif isinstance(o, (list, tuple)):
            stack += [(v, f"{p}[{i}]") for i, v in reversed(list(enumerate(o)))]
        elif not isinstance(o, (int, float, bool, type(None))):
            return p or "record", f"a {type(o).__name__} value is not JSON (store it as text)"
    return None


def _check_writable(row: Any) -> None:
    """A row that could not be written back as valid UTF-8 JSON is rejected, naming the field."""
    try:
        json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise RecordError("nested too deeply to process", code="too_deep") from None
    except (ValueError, UnicodeEncodeError, TypeError):
        found = _bad_value_path(row)
        if found is None:
            raise RecordError("holds values that are not JSON (cannot be written back)", code="not_json") from None
        field, reason = found
        code = ("non_finite_number" if reason.startswith("non-finite") else "bad_unicode" if "surrogate" in reason
                else "not_json")
        raise RecordError(reason, field=field, code=code) from None


def _control_strings(rec: dict, special_text: str) -> int:
    """Messages whose text holds chat-control strings; 'escape' breaks them up, 'reject' refuses the record."""
    n = 0
    for i, m in enumerate(rec["messages"]):
        content = m.get("content")
        if not content or not _CONTROL_RE.search(content):
            continue
        n += 1
        if special_text == "reject":
            found = _CONTROL_RE.search(content).group(0)
            raise RecordError(f"text holds the chat-control string {found!r}, which tokenizes as the real special "
                              "token (ends the turn early); use --special-text escape to keep it as text",
                              field=f"messages[{i}].content", code="special_token_text")
        if special_text == "escape":
            m["content"] = _CONTROL_RE.sub(lambda x: x.group(0)[0] + "\u200b" + x.group(0)[1:], content)
    return n


def _to_record(row: Any, fmt: str, *, index: int, stem: str, task_type: str | None, source: str | None,
               columns: Mapping[str, str] | None, extra_roles: Iterable[str], special_text: str = "warn",
               allow_empty_answers: bool = False, counts: Counter | None = None) -> tuple[dict[str, Any], str]:
    """One raw row -> (validated canonical record, the format it was read as). A RecordError names the field
    in the row's own layout (e.g. conversations[3].value), without file and position (the caller adds them)."""
    if not isinstance(row, Mapping):
        raise RecordError(f"record is a JSON {type(row).__name__}, not an object", code="not_an_object")
    _check_writable(row)
    row = dict(_rename(row, columns or {}))
    for key in NESTED_FIELDS:
        _parse_json_field(row, key)
    _refuse_non_sft(row)
    if fmt == "auto":
        fmt = detect_format(row) or "auto"
        if fmt == "auto":
            raise RecordError(f"cannot detect the format from the fields {sorted(row)[:8]} (expected "
                              "instruction/output, conversations, messages or turns; pass --format / --columns)",
                              code="unknown_format")
    if fmt == "alpaca":
        msgs, origin = _alpaca(row)
    elif fmt == "sharegpt":
        msgs, origin = _sharegpt(row, columns or {})
    elif fmt == "openai":
        msgs, origin = _openai(row, columns or {})
    else:
        msgs, origin = _prompts(row)

    meta = row.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise _bad("meta", f"must be an object, got {type(meta).__name__}")
    known = set(COMMON_FIELDS) | set(FORMAT_FIELDS[fmt])
    if row.get("task_type"):
        known.discard("category")  # not used as the task_type: keep it in meta
    meta = {**{k: v for k, v in row.items() if k not in known}, **(meta or {})}  # nothing dropped silently
    if fmt == "prompts":
        meta["prompt_only"] = True

    rid = row.get("id", row.get("question_id") if fmt == "prompts" else None)
    if rid is None or rid == "":
        rid = f"{stem}-{index}"
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _bad("id", f"must be a string or an integer, got {type(rid).__name__}")
    tt = row.get("task_type") or row.get("category") or task_type or stem
    if not isinstance(tt, str):
        raise _bad("task_type", f"must be a string, got {type(tt).__name__}")
    src = row.get("source") or source or stem
    if not isinstance(src, str):
        raise _bad("source", f"must be a string, got {type(src).__name__}")
    rec = make_record(msgs, id=str(rid), task_type=tt, source=src, tools=_tools(row), meta=meta)
    try:
        validate_record(rec, extra_roles, require_answer=not meta.get("prompt_only"),
                        allow_empty_answers=allow_empty_answers)
        n_control = _control_strings(rec, special_text)  # messages, as the warning says
        if counts is not None:
            counts["control_text"] += n_control
    except RecordError as e:
        raise RecordError(e.reason, field=_user_field(e.field, origin), code=e.code) from None
    return rec, fmt


def _raw_for_reject(raw: Any) -> Any:
    """The rejected row as it was, or its repr where it cannot be written as valid JSON (NaN, surrogates)."""
    try:
        json.dumps(raw, ensure_ascii=False, allow_nan=False).encode("utf-8")
        return raw
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        try:
            return repr(raw)[:100_000]
        except RecursionError:
            return "<nested too deeply to show>"


def _read(path: str | Path, fmt: str, **kwargs: Any) -> tuple[list[dict], list[dict], dict]:
    """All records, rejects and the info of one input (the list form of _iter_read)."""
    records: list[dict] = []
    rejects: list[dict] = []
    info: dict = {}
    for is_record, item in _iter_read(path, fmt, info=info, **kwargs):
        (records if is_record else rejects).append(item)
    return records, rejects, info


def _iter_read(path: str | Path, fmt: str, *, task_type: str | None, columns: Mapping[str, str] | None,
               on_error: str, extra_roles: Iterable[str], source: str | None, seen: dict[str, str],
               info: dict, label: str | None = None, special_text: str = "warn",
               allow_empty_answers: bool = False) -> Iterator[tuple[bool, dict]]:
    """(True, record) or (False, reject) per row of one input, in file order; fills `info` once the
    input is exhausted. Holds one row at a time (plus `seen`, the ids read so far)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if special_text not in SPECIAL_TEXT:
        raise RecordError(f"special_text {special_text!r}: choose {', '.join(SPECIAL_TEXT)}", field="special_text",
                          code="bad_option")
    fmt = normalize_format(fmt)
    file = str(path)
    stem = label or (Path(path).stem if Path(path).suffix else Path(path).name)
    notes: list = []
    kind, unit, rows = iter_rows(path, notes)
    n_records = n_rejects = 0
    extra_roles = tuple(extra_roles)
    detected: Counter = Counter()
    counts: Counter = Counter()
    ordinal = -1
    for ordinal, (pos, row) in enumerate(rows):
        try:
            if isinstance(row, RecordError):
                raise row
            rec, found = _to_record(row, fmt, index=ordinal, stem=stem, task_type=task_type, source=source,
                                    columns=columns, extra_roles=extra_roles, special_text=special_text,
                                    allow_empty_answers=allow_empty_answers, counts=counts)
            detected[found] += 1
            first = seen.get(rec["id"])
            if first is not None:
                raise RecordError(f"duplicate id {rec['id']!r} (first at {first})", field="id",
                                  code="duplicate_id")
            seen[rec["id"]] = f"{file}, {unit} {pos}"
            n_records += 1
            yield True, rec
        except RecordError as e:
            err = RecordError(e.reason, file=e.file or file, index=pos, field=e.field, code=e.code, unit=unit)
            if on_error == "raise":
                raise err from None
            raw = getattr(row, "raw", None) if isinstance(row, RecordError) else _raw_for_reject(row)
            n_rejects += 1
            yield False, {"file": err.file, "index": pos, "unit": unit, "ordinal": ordinal, "field": err.field,
                          "code": err.code, "reason": err.reason, "error": err.describe(), "raw": raw}
    if ordinal < 0:
        raise RecordError("empty file (no records)", file=file, code="empty_file")
    found = ",".join(k for k, _ in detected.most_common()) or (fmt if fmt != "auto" else "unknown")
    warnings = []
    if notes:
        first_pos, keys = notes[0]
        at = f", first at {unit} {first_pos}" if first_pos is not None else ""
        warnings.append(f"{file}: {len(notes)} record(s) repeat a JSON key (the last value is used){at}: "
                        f"{', '.join(repr(k) for k in dict.fromkeys(keys))}")
    if counts["control_text"]:
        did = "escaped" if special_text == "escape" else "kept as is: they end the turn early in training"
        warnings.append(f"{file}: {counts['control_text']} message(s) hold chat-control strings such as "
                        f"<|im_end|> ({did}; --special-text escape|reject)")
    info.update({"file": file, "format": f"{kind}/{found}", "records": n_records, "rejects": n_rejects,
                 "warnings": warnings})


def file_labels(paths: Sequence[str | Path]) -> list[str]:
    """Per input, the shortest tail of its path (without suffix) that no other input shares: ids and default
    task types come from it, so en/train.json and zh/train.json give 'en/train' and 'zh/train', not 'train'
    (train.json and train.jsonl in one folder keep their suffixes)."""
    parts = []
    for p in map(Path, paths):
        parts.append(list(p.parent.resolve().parts[1:]) + [p.stem if p.suffix and not p.is_dir() else p.name])
    full = Counter(tuple(t) for t in parts)
    for p, t in zip(map(Path, paths), parts, strict=True):
        if full[tuple(t)] > 1:
            t[-1] = p.name
    labels = [t[-1] for t in parts]
    for k in range(2, max((len(t) for t in parts), default=1) + 1):
        counts = Counter(labels)
        if all(n == 1 for n in counts.values()):
            break
        labels = ["/".join(t[-k:]) if counts[lab] > 1 else lab for t, lab in zip(parts, labels, strict=True)]
    return labels


def read_records(path: str | Path, fmt: str = "auto", *, task_type: str | None = None,
                 columns: Mapping[str, str] | None = None, on_error: str = "raise",
                 extra_roles: Iterable[str] = (), source: str | None = None,
                 special_text: str = "warn", allow_empty_answers: bool = False) -> tuple[list[dict], list[dict]]:
    """Records and rejects of one input (file or saved HF datasets directory).

    fmt: "auto" (by fields, per record) or one of FORMATS. columns: {user column: format column}.
    task_type: the record's own task_type/category, else this argument, else the file stem.
    ids: the record's id, else "{stem}-{index}". Duplicate ids are errors. An empty file is an error.
    on_error: "raise" -> the first bad record raises RecordError; "skip" -> collected in rejects.
    special_text: chat-control strings in message text: "warn" (counted), "escape" or "reject".
    allow_empty_answers: accept empty assistant turns (for `data clean`, which drops them with a reason).
    """
    records, rejects, _ = _read(path, fmt, task_type=task_type, columns=columns, on_error=on_error,
                                extra_roles=extra_roles, source=source, seen={}, special_text=special_text,
                                allow_empty_answers=allow_empty_answers)
    return records, rejects


def read_many(paths: Sequence[str | Path], fmt: str = "auto", **kwargs: Any) -> tuple[list[dict], list[dict]]:
    """read_records over several inputs, in order; ids must be unique across all of them."""
    records, rejects, _ = read_many_detailed(paths, fmt, **kwargs)
    return records, rejects


def read_many_detailed(paths: Sequence[str | Path], fmt: str = "auto", *, task_type: str | None = None,
                       columns: Mapping[str, str] | None = None, on_error: str = "raise",
                       extra_roles: Iterable[str] = (), source: str | None = None, special_text: str = "warn",
                       allow_empty_answers: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """read_many plus per-input info [{file, format, records, rejects, warnings}] (for the CLI).

    Inputs that share a file name get ids and default task types from their distinct path tails."""
    seen: dict[str, str] = {}
    records: list[dict] = []
    rejects: list[dict] = []
    info = []
    for p, label in zip(paths, file_labels(paths), strict=True):
        recs, rejs, i = _read(p, fmt, task_type=task_type, columns=columns, on_error=on_error,
                              extra_roles=extra_roles, source=source, seen=seen, label=label,
                              special_text=special_text, allow_empty_answers=allow_empty_answers)
        records += recs
        rejects += rejs
        info.append(i)
    return records, rejects, info


def iter_records(paths: Sequence[str | Path], fmt: str = "auto", *, chunk_size: int = 10_000,
                 info: list[dict] | None = None, task_type: str | None = None,
                 columns: Mapping[str, str] | None = None, on_error: str = "raise", extra_roles: Iterable[str] = (),
                 source: str | None = None, special_text: str = "warn", allow_empty_answers: bool = False,
                 labels: Sequence[str] | None = None) -> Iterator[tuple[list[dict], list[dict]]]:
    """read_many_detailed as a stream: (records, rejects) chunks of at most chunk_size rows, in input order,
    with the same validation, ids and errors, so memory is bounded by the chunk (plus the ids seen, kept
    to refuse duplicates). Each input's info dict is appended to `info` as soon as that input is read.
    labels: the inputs' id / task_type labels (default file_labels(paths)); a command that reads two groups of
    inputs separately (mix and its --general files) passes file_labels of both, so their ids stay distinct."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    seen: dict[str, str] = {}
    records: list[dict] = []
    rejects: list[dict] = []
    for p, label in zip(paths, file_labels(paths) if labels is None else labels, strict=True):
        file_info: dict = {}
        for is_record, item in _iter_read(p, fmt, task_type=task_type, columns=columns, on_error=on_error,
                                          extra_roles=extra_roles, source=source, seen=seen, info=file_info,
                                          label=label, special_text=special_text,
                                          allow_empty_answers=allow_empty_answers):
            (records if is_record else rejects).append(item)
            if len(records) + len(rejects) >= chunk_size:
                yield records, rejects
                records, rejects = [], []
        if info is not None:
            info.append(file_info)
    if records or rejects:
        yield records, rejects


def write_rejects(rejects: Iterable[dict], path: str | Path) -> int:
    """Rejects as JSONL (one per line, UTF-8). Returns the count."""
    return write_jsonl(rejects, path)


def reject_counts(rejects: Iterable[dict]) -> Counter:
    """Counts per reason code."""
    return Counter(r["code"] for r in rejects)


def format_reject_counts(rejects: Sequence[dict]) -> str:
    """'rejected 3 records: malformed_json 2, missing_field 1' (one line)."""
    counts = reject_counts(rejects)
    if not counts:
        return "rejected 0 records"
    return f"rejected {len(rejects)} records: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
