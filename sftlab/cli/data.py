"""`sftlab data inspect | render | convert` (foundation data commands).

They only parse arguments and call sftlab.data.formats / sftlab.data.render. A bad record is one line on stderr
naming file, line/index, field and reason (exit 2); with `--on-error skip` bad records go to a rejects file
and their counts per reason are printed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from sftlab.cli.apps import data_app
from sftlab.errors import UserError

FORMAT = typer.Option("auto", "--format", "-f", help="auto | alpaca | sharegpt | openai | prompts")
ON_ERROR = typer.Option("raise", "--on-error", help="raise: stop at the first bad record; skip: write rejects")
COLUMNS = typer.Option(None, "--columns", help="rename columns to the format's: 'question=instruction,answer=output'")
EXTRA_ROLE = typer.Option([], "--extra-role", help="a custom message role to accept (repeatable)")
TASK_TYPE = typer.Option(None, "--task-type", help="task_type for records without one (default: the file name)")
CHAT_TEMPLATE = typer.Option(None, "--chat-template", help="builtin name, file or Jinja text (default: the tokenizer's)")
SPECIAL_TEXT = typer.Option("warn", "--special-text",
                            help="chat-control strings like <|im_end|> inside message text: warn | escape | reject")
WARN_SHARE = typer.Option(0.1, "--warn-rejected-share", help="warn when more than this share of records is rejected")
OPEN, CLOSE = "⟦", "⟧"  # --plain markers around supervised spans


def parse_columns(spec: str | None) -> dict[str, str]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UserError(f"--columns {spec!r}: expected user_column=format_column pairs separated by commas")
        k, v = (x.strip() for x in part.split("=", 1))
        if not k or not v:
            raise UserError(f"--columns {spec!r}: empty column name in {part!r}")
        out[k] = v
    return out


def _check_on_error(on_error: str) -> str:
    if on_error not in ("raise", "skip"):
        raise UserError(f"--on-error {on_error!r}: choose raise or skip")
    return on_error


def _read(paths: list[Path], fmt: str, on_error: str, columns: str | None, extra_role: list[str],
          task_type: str | None = None, special_text: str = "warn") -> tuple[list[dict], list[dict], list[dict]]:
    from sftlab.data.formats import SPECIAL_TEXT, read_many_detailed

    if special_text not in SPECIAL_TEXT:
        raise UserError(f"--special-text {special_text!r}: choose {', '.join(SPECIAL_TEXT)}")
    records, rejects, info = read_many_detailed(paths, fmt, task_type=task_type, columns=parse_columns(columns),
                                                on_error=_check_on_error(on_error), extra_roles=extra_role,
                                                special_text=special_text)
    for i in info:
        for w in i["warnings"]:
            typer.echo(f"warning: {w}", err=True)
    return records, rejects, info


def _report_rejects(rejects: list[dict], path: Path, n_kept: int, warn_share: float) -> None:
    """Write rejects (even none, so an old file never lingers) and print one line of counts per reason.
    Nothing kept is an error (exit 2); more than `warn_share` rejected is a warning."""
    from sftlab.data.formats import format_reject_counts, write_rejects

    write_rejects(rejects, path)
    typer.echo(f"{format_reject_counts(rejects)} -> {path}")
    total = n_kept + len(rejects)
    if rejects and not n_kept:
        raise UserError(f"every record was rejected ({len(rejects)} of {total}; see {path})")
    if total and len(rejects) / total > warn_share:
        typer.echo(f"warning: {len(rejects)} of {total} records ({len(rejects) / total:.0%}) were rejected, more than "
                   f"--warn-rejected-share {warn_share:g}; see {path}", err=True)


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return 0
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


def _stats_row(name: str, values: list[int]) -> list[str]:
    v = sorted(values)
    return [name, str(len(v)), *(str(percentile(v, p)) for p in (50, 90, 99)), str(v[-1] if v else 0)]


@data_app.command("inspect")
def inspect_cmd(paths: list[Path] = typer.Argument(..., help="data files or saved HF datasets directories"),
                tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer dir for token lengths"),
                fmt: str = FORMAT, on_error: str = ON_ERROR,
                rejects: Path = typer.Option(Path("rejects.jsonl"), "--rejects", help="rejects file (--on-error skip)"),
                columns: str | None = COLUMNS, extra_role: list[str] = EXTRA_ROLE, task_type: str | None = TASK_TYPE,
                chat_template: str | None = CHAT_TEMPLATE,
                max_length: int = typer.Option(2048, "--max-length", help="count samples longer than this"),
                special_text: str = SPECIAL_TEXT, warn_share: float = WARN_SHARE) -> None:
    """Formats, counts, roles, task types, turns, token lengths (with --tokenizer) and rejects by reason."""
    from rich.table import Table

    records, rejs, info = _read(paths, fmt, on_error, columns, extra_role, task_type, special_text)
    con = _console()

    t = Table(title="inputs")
    t.add_column("file", overflow="fold")
    t.add_column("format")
    t.add_column("records", justify="right")
    t.add_column("rejected", justify="right")
    for i in info:
        t.add_row(i["file"], i["format"], str(i["records"]), str(i["rejects"]))
    con.print(t)

    roles: Counter = Counter()
    roles_in: Counter = Counter()
    for r in records:
        rs = Counter(m["role"] for m in r["messages"])
        rs["assistant (tool calls)"] = sum(1 for m in r["messages"] if m.get("tool_calls"))
        roles.update(rs)
        roles_in.update(k for k, v in rs.items() if v)
    t = Table(title="roles")
    for c in ("role", "messages", "records"):
        t.add_column(c, justify="left" if c == "role" else "right")
    for role, n in roles.most_common():
        if n:
            t.add_row(role, str(n), str(roles_in[role]))
    con.print(t)

    tasks = Counter(r["task_type"] for r in records)
    t = Table(title="task types")
    t.add_column("task_type")
    t.add_column("records", justify="right")
    for k, n in tasks.most_common():
        t.add_row(k, str(n))
    con.print(t)

    prompt_only = [r for r in records if r["meta"].get("prompt_only")]
    trainable = [r for r in records if not r["meta"].get("prompt_only")]
    t = Table(title="per record")
    for c in ("", "records", "p50", "p90", "p99", "max"):
        t.add_column(c, justify="left" if not c else "right")
    t.add_row(*_stats_row("messages", [len(r["messages"]) for r in records]))
    if trainable:
        t.add_row(*_stats_row("assistant turns", [sum(m["role"] == "assistant" for m in r["messages"])
                                                  for r in trainable]))
    t.add_row(*_stats_row("user turns", [sum(m["role"] == "user" for m in r["messages"]) for r in records]))
    notes = [f"{len(records)} records ({len(prompt_only)} prompt-only, "
             f"{sum(1 for r in records if r.get('tools'))} with tools)"]
    if tokenizer:
        notes += _token_stats(t, trainable, prompt_only, tokenizer, chat_template, max_length)
    con.print(t)
    for line in notes:
        con.print(line)

    if on_error == "skip":
        if rejs:
            t = Table(title="rejects by reason")
            t.add_column("code")
            t.add_column("records", justify="right")
            t.add_column("first")
            first = {}
            for r in rejs:
                first.setdefault(r["code"], r["error"])
            for code, n in sorted(Counter(r["code"] for r in rejs).items()):
                t.add_row(code, str(n), first[code])
            con.print(t)
        _report_rejects(rejs, rejects, len(records), warn_share)


def _token_stats(table: Any, trainable: list[dict], prompt_only: list[dict], tokenizer: str,
                 chat_template: str | None, max_length: int) -> list[str]:
    """Token-length rows (rendered exactly as for training) added to `table`; returns notes to print."""
    from sftlab.data.render import load_tokenizer, prompt_text, render_records

    tok = load_tokenizer(tokenizer, chat_template)
    notes = []
    if trainable:
        samples, report = render_records(trainable, tok, max_length=1 << 62, on_error="skip")
        lengths = [s["num_tokens"] for s in samples]
        table.add_row(*_stats_row("tokens", lengths))
        table.add_row(*_stats_row("supervised tokens", [sum(x != -100 for x in s["labels"]) for s in samples]))
        over = sum(n > max_length for n in lengths)
        notes.append(f"rendered {report.rendered} of {len(trainable)} trainable records with {tokenizer}; "
                     f"{over} longer than --max-length {max_length}")
        notes += [f"not renderable: {code} {n}" for code, n in sorted(report.dropped.items())]
    if prompt_only:
        ids = tok([prompt_text(r, tok) for r in prompt_only], add_special_tokens=False,
                  return_attention_mask=False)["input_ids"]
        table.add_row(*_stats_row("prompt tokens", [len(x) for x in ids]))
    return notes


def _segments(sample: dict) -> list[tuple[bool, list[int]]]:
    """Runs of (supervised?, token ids)."""
    pairs = zip(sample["input_ids"], sample["labels"], strict=True)
    return [(sup, [i for i, _ in grp]) for sup, grp in itertools.groupby(pairs, key=lambda p: p[1] != -100)]


def _records_at(path: Path, index: int, count: int, fmt: str, columns: str | None,
                extra_role: list[str]) -> list[dict]:
    """Records index..index+count-1 of the file (counting every record, good or bad): a bad record elsewhere
    in the file does not stop these; a bad record among them is its one-line error."""
    records, rejects, _ = _read([path], fmt, "skip", columns, extra_role)
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


@data_app.command("render")
def render_cmd(path: Path = typer.Argument(..., help="data file or saved HF datasets directory"),
               tokenizer: str = typer.Option(..., "--tokenizer", help="tokenizer directory (HF layout)"),
               index: int = typer.Option(0, "--index", help="first record to show"),
               count: int = typer.Option(1, "--count", help="how many records to show"),
               train_on: str = typer.Option("all_assistant", "--train-on", help="all_assistant | last_assistant | all"),
               max_length: int = typer.Option(2048, "--max-length", help="truncate samples to this many tokens"),
               plain: bool = typer.Option(False, "--plain", help=f"mark supervised spans with {OPEN} {CLOSE}, no colour"),
               fmt: str = FORMAT, columns: str | None = COLUMNS, extra_role: list[str] = EXTRA_ROLE,
               chat_template: str | None = CHAT_TEMPLATE) -> None:
    """Show records as the model sees them, supervised tokens highlighted, with token counts."""
    from rich.text import Text

    from sftlab.data.render import TRAIN_ON, load_tokenizer, prompt_text, render_records

    if train_on not in TRAIN_ON:
        raise UserError(f"--train-on {train_on!r}: choose {', '.join(TRAIN_ON)}")
    if count < 1 or index < 0:
        raise UserError("--index must be >= 0 and --count >= 1")
    chosen = _records_at(path, index, count, fmt, columns, extra_role)
    tok = load_tokenizer(tokenizer, chat_template)
    con = _console()
    for i, rec in enumerate(chosen, start=index):
        head = f"── record {i} id={rec['id']} task_type={rec['task_type']}"
        if rec["meta"].get("prompt_only"):
            text = prompt_text(rec, tok)
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            typer.echo(f"{head}: {n} tokens, prompt only (nothing supervised)")
            typer.echo(text)
            continue
        samples, report = render_records([rec], tok, train_on=train_on, max_length=max_length, on_error="skip")
        if not samples:
            rej = report.rejects[0]
            hint = " (raise --max-length?)" if rej["code"] == "no_supervised_tokens_after_truncation" else ""
            raise UserError(f"{path}: record {i} (id {rec['id']}): nothing to show: {rej['reason']}{hint}")
        sample = samples[0]
        n_sup = sum(x != -100 for x in sample["labels"])
        trunc = f", truncated to --max-length {max_length}" if report.truncated else ""
        if report.history_truncated:
            trunc += f", its {report.exchanges_dropped} oldest exchanges dropped to fit --max-length {max_length}"
        typer.echo(f"{head}: {sample['num_tokens']} tokens, {n_sup} supervised in "
                   f"{len(sample['turn_weights'])} turns{trunc}")
        segs = [(sup, tok.decode(ids, skip_special_tokens=False)) for sup, ids in _segments(sample)]
        if plain:
            typer.echo("".join(f"{OPEN}{s}{CLOSE}" if sup else s for sup, s in segs))
        else:
            out = Text()
            for sup, s in segs:
                out.append(s, style="bold green" if sup else "dim")
            con.print(out)


@data_app.command("convert")
def convert_cmd(inputs: list[Path] = typer.Argument(..., help="data files or saved HF datasets directories"),
                out: Path = typer.Option(..., "-o", "--out", help="output JSONL (canonical OpenAI-messages records), "
                                         "or Parquet when it ends in .parquet"),
                fmt: str = FORMAT, task_type: str | None = TASK_TYPE, on_error: str = ON_ERROR,
                rejects: Path | None = typer.Option(None, "--rejects", help="rejects file (default OUT.rejects.jsonl)"),
                columns: str | None = COLUMNS, extra_role: list[str] = EXTRA_ROLE,
                special_text: str = SPECIAL_TEXT, warn_share: float = WARN_SHARE,
                chunk_size: int = typer.Option(10_000, "--chunk-size", min=1,
                                               help="records read per chunk (memory is bounded by one chunk)")) -> None:
    """Convert alpaca / sharegpt / openai / eval-prompt data to canonical records (JSONL).

    Streams: input is read in chunks and appended to OUT.tmp, renamed to OUT at the end, so memory stays
    bounded by one chunk (plus the ids seen and the rejects) and a failed run leaves no OUT behind."""
    from sftlab.data.formats import SPECIAL_TEXT, iter_records
    from sftlab.data.records import write_jsonl

    if special_text not in SPECIAL_TEXT:
        raise UserError(f"--special-text {special_text!r}: choose {', '.join(SPECIAL_TEXT)}")
    info: list[dict] = []
    rejs: list[dict] = []
    chunks = iter_records(inputs, fmt, chunk_size=chunk_size, info=info, task_type=task_type,
                          columns=parse_columns(columns), on_error=_check_on_error(on_error),
                          extra_roles=extra_role, special_text=special_text)

    def kept_records():
        for chunk_records, chunk_rejects in chunks:
            rejs.extend(chunk_rejects)
            yield from chunk_records

    if out.suffix == ".parquet":  # as every curation command: JSON text columns, one row group per chunk
        from sftlab.data.curate.io import all_or_none, atomic_writer

        writer = atomic_writer(out)
        with all_or_none([writer]):
            for chunk_records, chunk_rejects in chunks:
                rejs.extend(chunk_rejects)
                writer.write(chunk_records)
        n = writer.count
    else:
        n = write_jsonl(kept_records(), out)
    for i in info:
        for w in i["warnings"]:
            typer.echo(f"warning: {w}", err=True)
    formats = ", ".join(f"{i['file']} ({i['format']})" for i in info)
    typer.echo(f"wrote {n} records to {out} from {formats}")
    if on_error == "skip":
        _report_rejects(rejs, rejects or Path(str(out) + ".rejects.jsonl"), n, warn_share)
