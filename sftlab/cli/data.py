"""`sftlab data inspect | render | convert` (foundation data commands).

They only parse arguments, call sftlab.data.formats / sftlab.data.render / sftlab.curate.overview and print. A bad record is one line on stderr
naming file, line/index, field and reason (exit 2); with `--on-error skip` bad records go to a rejects file
and their counts per reason are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sftlab.cli.apps import data_app
from sftlab.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from sftlab.curate.overview import Overview

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
    from sftlab.data.formats import SPECIAL_TEXT as SPECIAL_TEXT_CHOICES  # lazy: start-up
    from sftlab.data.formats import read_many_detailed

    if special_text not in SPECIAL_TEXT_CHOICES:
        raise UserError(f"--special-text {special_text!r}: choose {', '.join(SPECIAL_TEXT_CHOICES)}")
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
    from sftlab.data.formats import format_reject_counts, write_rejects  # lazy: start-up

    write_rejects(rejects, path)
    typer.echo(f"{format_reject_counts(rejects)} -> {path}")
    total = n_kept + len(rejects)
    if rejects and not n_kept:
        raise UserError(f"every record was rejected ({len(rejects)} of {total}; see {path})")
    if total and len(rejects) / total > warn_share:
        typer.echo(f"warning: {len(rejects)} of {total} records ({len(rejects) / total:.0%}) were rejected, more than "
                   f"--warn-rejected-share {warn_share:g}; see {path}", err=True)


def _console() -> Console:
    from rich.console import Console  # lazy: start-up

    return Console(highlight=False, soft_wrap=True)


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
    from sftlab.curate.overview import overview  # lazy: start-up

    records, rejs, info = _read(paths, fmt, on_error, columns, extra_role, task_type, special_text)
    _print_overview(overview(records, rejs, info, tokenizer=tokenizer, chat_template=chat_template,
                             max_length=max_length), show_rejects=on_error == "skip")
    if on_error == "skip":
        _report_rejects(rejs, rejects, len(records), warn_share)


def _table(title: str | None, columns: list[str], rows: list[list[str]], right: set[str] = frozenset()) -> Table:
    from rich.table import Table  # lazy: start-up

    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold" if c == "file" else "ellipsis")
    for row in rows:
        t.add_row(*row)
    return t


def _print_overview(o: Overview, show_rejects: bool) -> None:
    con = _console()
    con.print(_table("inputs", ["file", "format", "records", "rejected"], o.files, {"records", "rejected"}))
    con.print(_table("roles", ["role", "messages", "records"], o.roles, {"messages", "records"}))
    con.print(_table("task types", ["task_type", "records"], o.tasks, {"records"}))
    numbers = ["records", "p50", "p90", "p99", "max"]
    con.print(_table("per record", ["", *numbers], o.per_record, set(numbers)))
    for line in o.notes:
        con.print(line)
    if show_rejects and o.rejects:
        con.print(_table("rejects by reason", ["code", "records", "first"], o.rejects, {"records"}))


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
    from rich.text import Text  # lazy: start-up

    from sftlab.curate.overview import records_at, supervised_runs  # lazy: start-up
    from sftlab.data.render import TRAIN_ON, load_tokenizer, prompt_text, render_records

    if train_on not in TRAIN_ON:
        raise UserError(f"--train-on {train_on!r}: choose {', '.join(TRAIN_ON)}")
    if count < 1 or index < 0:
        raise UserError("--index must be >= 0 and --count >= 1")
    records, rejects, _ = _read([path], fmt, "skip", columns, extra_role)
    chosen = records_at(path, records, rejects, index, count)
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
        segs = [(sup, tok.decode(ids, skip_special_tokens=False)) for sup, ids in supervised_runs(sample)]
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
    from sftlab.curate.files import write_record_chunks  # lazy: start-up
    from sftlab.data.formats import SPECIAL_TEXT as SPECIAL_TEXT_CHOICES
    from sftlab.data.formats import iter_records

    if special_text not in SPECIAL_TEXT_CHOICES:
        raise UserError(f"--special-text {special_text!r}: choose {', '.join(SPECIAL_TEXT_CHOICES)}")
    info: list[dict] = []
    rejs: list[dict] = []
    chunks = iter_records(inputs, fmt, chunk_size=chunk_size, info=info, task_type=task_type,
                          columns=parse_columns(columns), on_error=_check_on_error(on_error),
                          extra_roles=extra_role, special_text=special_text)

    def kept_chunks():  # Parquet as every curation command writes it: JSON text columns, one row group per chunk
        for chunk_records, chunk_rejects in chunks:
            rejs.extend(chunk_rejects)
            yield chunk_records

    n = write_record_chunks(kept_chunks(), out)
    for i in info:
        for w in i["warnings"]:
            typer.echo(f"warning: {w}", err=True)
    formats = ", ".join(f"{i['file']} ({i['format']})" for i in info)
    typer.echo(f"wrote {n} records to {out} from {formats}")
    if on_error == "skip":
        _report_rejects(rejs, rejects or Path(str(out) + ".rejects.jsonl"), n, warn_share)
