"""What `sftlab data inspect` and `sftlab data render` show, computed here so the commands only print it.

inspect: per input file its format and counts, messages and records per role, records per task type, per-record
percentiles (messages, turns, and with a tokenizer the tokens rendered exactly as for training), and rejects by
reason. render: the records at given positions of a file, and a rendered sample cut into supervised and
unsupervised runs of tokens.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sftlab.data.render import load_tokenizer, prompt_text, render_records
from sftlab.errors import UserError


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return 0
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def stats_row(name: str, values: list[int]) -> list[str]:
    """[name, count, p50, p90, p99, max] as text."""
    v = sorted(values)
    return [name, str(len(v)), *(str(percentile(v, p)) for p in (50, 90, 99)), str(v[-1] if v else 0)]


@dataclass
class Overview:
    """The tables of `sftlab data inspect`, as rows of plain values."""

    files: list[list[str]]  # file, format, records, rejected
    roles: list[list[str]]  # role, messages, records
    tasks: list[list[str]]  # task_type, records
    per_record: list[list[str]] = field(default_factory=list)  # stats_row rows
    notes: list[str] = field(default_factory=list)
    rejects: list[list[str]] = field(default_factory=list)  # code, records, first error


def overview(records: list[dict[str, Any]], rejects: list[dict[str, Any]], info: list[dict[str, Any]], *,
             tokenizer: str | None = None, chat_template: str | None = None, max_length: int = 2048) -> Overview:
    """The inspect tables of records read by formats.read_many_detailed (with its rejects and per-file info)."""
    roles: Counter = Counter()
    roles_in: Counter = Counter()
    for r in records:
        rs = Counter(m["role"] for m in r["messages"])
        rs["assistant (tool calls)"] = sum(1 for m in r["messages"] if m.get("tool_calls"))
        roles.update(rs)
        roles_in.update(k for k, v in rs.items() if v)
    out = Overview(files=[[i["file"], i["format"], str(i["records"]), str(i["rejects"])] for i in info],
                   roles=[[role, str(n), str(roles_in[role])] for role, n in roles.most_common() if n],
                   tasks=[[k, str(n)] for k, n in Counter(r["task_type"] for r in records).most_common()])
    prompt_only = [r for r in records if r["meta"].get("prompt_only")]
    trainable = [r for r in records if not r["meta"].get("prompt_only")]
    out.per_record.append(stats_row("messages", [len(r["messages"]) for r in records]))
    if trainable:
        out.per_record.append(stats_row("assistant turns", [sum(m["role"] == "assistant" for m in r["messages"])
                                                            for r in trainable]))
    out.per_record.append(stats_row("user turns", [sum(m["role"] == "user" for m in r["messages"]) for r in records]))
    out.notes.append(f"{len(records)} records ({len(prompt_only)} prompt-only, "
                     f"{sum(1 for r in records if r.get('tools'))} with tools)")
    if tokenizer:
        out.notes += _token_stats(out.per_record, trainable, prompt_only, tokenizer, chat_template, max_length)
    first: dict[str, str] = {}
    for r in rejects:
        first.setdefault(r["code"], r["error"])
    out.rejects = [[code, str(n), first[code]] for code, n in sorted(Counter(r["code"] for r in rejects).items())]
    return out


def _token_stats(rows: list[list[str]], trainable: list[dict], prompt_only: list[dict], tokenizer: str,
                 chat_template: str | None, max_length: int) -> list[str]:
    """Token-length rows (rendered exactly as for training) added to `rows`; returns notes to print."""
    tok = load_tokenizer(tokenizer, chat_template)
    notes = []
    if trainable:
        samples, report = render_records(trainable, tok, max_length=1 << 62, on_error="skip")
        lengths = [s["num_tokens"] for s in samples]
        rows.append(stats_row("tokens", lengths))
        rows.append(stats_row("supervised tokens", [sum(x != -100 for x in s["labels"]) for s in samples]))
        over = sum(n > max_length for n in lengths)
        notes.append(f"rendered {report.rendered} of {len(trainable)} trainable records with {tokenizer}; "
                     f"{over} longer than --max-length {max_length}")
        notes += [f"not renderable: {code} {n}" for code, n in sorted(report.dropped.items())]
    if prompt_only:
        ids = tok([prompt_text(r, tok) for r in prompt_only], add_special_tokens=False,
                  return_attention_mask=False)["input_ids"]
        rows.append(stats_row("prompt tokens", [len(x) for x in ids]))
    return notes


def records_at(path: Any, records: list[dict[str, Any]], rejects: list[dict[str, Any]], index: int,
               count: int) -> list[dict[str, Any]]:
    """Records index..index+count-1 of a file read with on_error=skip (counting every record, good or bad): a bad
    record elsewhere in the file does not stop these; a bad record among them is its one-line error."""
    bad = {r["ordinal"]: r for r in rejects}
    total = len(records) + len(rejects)
    if index >= total:
        raise UserError(f"{path}: --index {index} out of range ({total} records)")
    chosen, k = [], 0
    for ordinal in range(min(total, index + count)):
        if ordinal in bad:
            if ordinal >= index:
                raise UserError(bad[ordinal]["error"])
            continue
        if ordinal >= index:
            chosen.append(records[k])
        k += 1
    return chosen


def supervised_runs(sample: dict[str, Any]) -> list[tuple[bool, list[int]]]:
    """A rendered sample's tokens as runs of (supervised?, token ids)."""
    pairs = zip(sample["input_ids"], sample["labels"], strict=True)
    return [(sup, [i for i, _ in grp]) for sup, grp in itertools.groupby(pairs, key=lambda p: p[1] != -100)]
