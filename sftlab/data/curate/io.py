"""Reading and writing record files for the curation steps, and the shared step result.

Every input (canonical JSONL / Parquet or any layout `sftlab data convert` reads) goes through
`sftlab.data.formats`, so all commands accept and refuse the same files. Every step writes the kept
records to OUT and one line per removed record to OUT's name with its suffix replaced by `.dropped.jsonl`
(clean.jsonl -> clean.dropped.jsonl), so nothing disappears silently.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.records import check_output_file, write_jsonl
from sftlab.errors import UserError

PARQUET_TAG = b"sftlab.canonical"  # schema metadata key of Parquet files written by save_records
JSON_COLUMNS = ("messages", "tools", "meta")


@dataclass
class StepResult:
    """What a curation step kept and removed; `dropped` rows are {id, step, reason, ...}."""

    step: str
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> Counter:
        return Counter(d["reason"] for d in self.dropped)

    def summary(self) -> str:
        """'step: kept K of N; reason: n ...'; steps that add records (mix --upsample) set info['inputs'] and
        info['copies'] so the line counts inputs, not outputs."""
        copies = self.info.get("copies", 0)
        n_in = self.info.get("inputs", len(self.kept) - copies + len(self.dropped))
        return summary_line(self.step, len(self.kept), n_in, self.counts(), copies)


def summary_line(step: str, n_kept: int, n_in: int, counts: Counter, copies: int = 0) -> str:
    """The one-line summary of a step from its counts (shared by list and streaming steps)."""
    kept = f"kept {n_kept - copies} of {n_in}"
    if copies:
        kept += f" + {copies} upsampled copies = {n_kept} records"
    parts = [f"{step}: {kept}"]
    parts += [f"{reason}: {n}" for reason, n in sorted(counts.items())]
    return "; ".join(parts)


def drop(rec: dict[str, Any], step: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One row of OUT.dropped.jsonl."""
    return {"id": rec["id"], "step": step, "reason": reason, **extra}


def load_records(paths: str | Path | Sequence[str | Path], *, allow_empty_answers: bool = False) -> list[dict[str, Any]]:
    """Records of one or more files, in order, through the same reader as `sftlab data convert`
    (sftlab.data.formats: any layout, BOM, encodings and bad lines handled the same way). Empty inputs,
    bad records and duplicate ids are errors (ids key all outputs); reader warnings go to stderr."""
    from sftlab.data.formats import read_many_detailed

    records, _, info = read_many_detailed(_check_inputs(paths), allow_empty_answers=allow_empty_answers)
    for i in info:
        for w in i["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
    return records


def _check_inputs(paths: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no input files given")
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
    return [str(p) for p in paths]


def iter_record_chunks(paths: str | Path | Sequence[str | Path], *, chunk_size: int = 10_000,
                       allow_empty_answers: bool = False, warn: bool = True, label: str | None = None,
                       total: int | None = None, labels: Sequence[str] | None = None
                       ) -> Iterator[list[dict[str, Any]]]:
    """load_records as a stream of chunks of at most chunk_size records: same reader, same errors, same
    warnings (printed as each input ends, unless warn=False), memory bounded by the chunk plus the ids seen.
    With a label, a progress bar on a terminal counts the records read (of `total`, when known). labels: the
    inputs' id labels (formats.iter_records)."""
    from sftlab.data.formats import iter_records

    info: list[dict] = []
    printed = 0
    with read_progress(label, total) as advance:
        for records, _ in iter_records(_check_inputs(paths), chunk_size=chunk_size, info=info,
                                       allow_empty_answers=allow_empty_answers, labels=labels):
            for i in info[printed:] if warn else ():
                for w in i["warnings"]:
                    print(f"warning: {w}", file=sys.stderr)
            printed = len(info)
            if records:
                advance(len(records))
                yield records
    for i in info[printed:] if warn else ():
        for w in i["warnings"]:
            print(f"warning: {w}", file=sys.stderr)


def progress_console() -> Any:
    """Where progress bars go: stderr (rich draws them only on a terminal)."""
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(disable: bool = False) -> Any:
    """A transient rich Progress on stderr, drawn only on a terminal: off one, a stopped rich display still printed
    a blank line on stdout, where a command's summary line (or JSON) goes."""
    from rich.progress import Progress

    console = progress_console()
    return Progress(console=console, transient=True, disable=disable or not console.is_terminal)


_LIVE: list[bool] = []  # a bar is being drawn: rich allows one live display at a time, an inner read shows none


@contextmanager
def read_progress(label: str | None, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """advance(n) for a transient 'label: n / total records' bar (a no-op without a label or inside another)."""
    console = progress_console() if label is not None and not _LIVE else None
    if console is None or not console.is_terminal:  # off a terminal rich would still print a blank line
        yield lambda _n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _LIVE.append(True)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
    finally:
        _LIVE.pop()


def windows(chunks: Iterable[Sequence[dict[str, Any]]], size: int) -> Iterator[list[dict[str, Any]]]:
    """The records of `chunks` regrouped into lists of exactly `size` (the last may be shorter): model scoring
    batches by window, so its results do not depend on how the input happened to be chunked (or not)."""
    window: list[dict[str, Any]] = []
    for chunk in chunks:
        for rec in chunk:
            window.append(rec)
            if len(window) == size:
                yield window
                window = []
    if window:
        yield window


def chunks_with_rows(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], n_rows: int, *,
                     step: str = "select", rows: str = "embeddings") -> Iterator[tuple[Sequence[dict[str, Any]], int]]:
    """(chunk, its first row) over an input read again, which must give exactly the n_rows records an earlier
    pass computed one row each for (embeddings, scores): the passes match records by position."""
    start = 0
    for chunk in read_chunks():
        if start + len(chunk) > n_rows:
            raise UserError(f"{step}: {n_rows} {rows} for more records than that")
        yield chunk, start
        start += len(chunk)
    if start != n_rows:
        raise UserError(f"{step}: {n_rows} {rows} for {start} records")


def reread_record_chunks(paths: str | Path | Sequence[str | Path], *, chunk_size: int = 10_000,
                         allow_empty_answers: bool = False, warn: bool = True, label: str | None = None,
                         labels: Sequence[str] | None = None) -> Callable[[], Iterator[list[dict[str, Any]]]]:
    """`read_chunks` for the steps that stream in passes: each call reads the inputs again in the same
    chunks; the reader's warnings are printed on the first pass only (never with warn=False). A pass refuses
    inputs whose size or modification time changed since the first one: the passes match records by position.
    With a label, each pass shows a progress bar ('label, pass 2: 1,024 / 200,000 records' on a terminal).
    `read_chunks.pass_sizes` lists the records of each finished pass."""
    first: list[tuple[str, int, int]] = []
    passes: list[int] = []  # records of each finished pass: the total of the next one

    def read_chunks() -> Iterator[list[dict[str, Any]]]:
        now = [(str(p), (st := Path(p).stat()).st_size, st.st_mtime_ns) for p in _check_inputs(paths)]
        if first and now != first:
            changed = next(a[0] for a, b in zip(now, first, strict=True) if a != b)
            raise UserError(f"{changed}: changed while it was being read (this step reads its input more than "
                            "once and matches records by position); run it again on a file nothing writes to")
        first_pass = not first
        first[:] = now
        name = None if label is None else f"{label}, pass {len(passes) + 1}"
        return counted(iter_record_chunks(paths, chunk_size=chunk_size, allow_empty_answers=allow_empty_answers,
                                          warn=warn and first_pass, label=name, total=passes[0] if passes else None,
                                          labels=labels))

    def counted(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
        n = 0
        for chunk in chunks:
            n += len(chunk)
            yield chunk
        passes.append(n)

    read_chunks.pass_sizes = passes  # type: ignore[attr-defined]
    return read_chunks


def save_records(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write records as JSONL, or Parquet (nested columns stored as JSON text) when path ends in .parquet."""
    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(records, path)
    import pyarrow.parquet as pq

    rows = [dict(r) for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_parquet_table(rows), path)
    return len(rows)


def _parquet_table(rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa

    cols: dict[str, list] = {"id": [r["id"] for r in rows], "task_type": [r["task_type"] for r in rows],
                             "source": [r.get("source") or "" for r in rows]}
    for col in JSON_COLUMNS:
        cols[col] = [None if r.get(col) is None else json.dumps(r[col], ensure_ascii=False) for r in rows]
    schema = pa.schema([(c, pa.string()) for c in cols], metadata={PARQUET_TAG: b"1"})
    return pa.table(cols, schema=schema)


class AtomicJsonl:
    """Appends rows to PATH.tmp as JSON lines (same bytes as write_jsonl); `commit` renames it to PATH."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        check_output_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in commit/abort
        self.count = 0

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self.file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            except (ValueError, UnicodeEncodeError) as e:
                rid = row.get("id") if isinstance(row, dict) else None
                raise UserError(f"{self.path}: cannot write record {self.count} (id {rid!r}) as valid JSON: {e}"
                                ) from None
            self.count += 1

    def commit(self) -> None:
        self.file.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class _AtomicParquet:
    """Appends chunks to PATH.tmp as row groups of one Parquet file (same schema as save_records)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        check_output_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer: Any = None
        self.count = 0

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        table = _parquet_table(list(rows))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)
        self.count += table.num_rows

    def commit(self) -> None:
        if self.writer is None:
            self.write([])
        self.writer.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def atomic_writer(path: str | Path) -> AtomicJsonl | _AtomicParquet:
    """A writer that appends rows to PATH.tmp (JSONL, or Parquet when PATH ends in .parquet) and renames it to
    PATH on commit()."""
    path = Path(path)
    return _AtomicParquet(path) if path.suffix == ".parquet" else AtomicJsonl(path)


@contextmanager
def all_or_none(writers: Iterable[AtomicJsonl | _AtomicParquet]) -> Iterator[None]:
    """Commit every writer when the block ends normally, abort all of them on an error: files appear together."""
    writers = list(writers)
    try:
        yield
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.commit()


@dataclass
class StreamTally:
    """What write_result_stream wrote: counts, the step's info (from its results, later keys win) and the
    rows a step added (info['copies'], mix --upsample)."""

    step: str
    kept: int = 0
    dropped: int = 0
    counts: Counter = field(default_factory=Counter)
    copies: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return summary_line(self.step, self.kept, self.kept - self.copies + self.dropped, self.counts, self.copies)


def write_result_stream(results: Iterable[StepResult], out: str | Path, step: str) -> StreamTally:
    """Write a stream of per-chunk StepResults to OUT and OUT.dropped.jsonl as they come (both files
    appear atomically at the end; on an error neither is written)."""
    out = Path(out)
    kept_file = atomic_writer(out)
    dropped_file = AtomicJsonl(dropped_path(out))
    tally = StreamTally(step)
    with all_or_none([kept_file, dropped_file]):
        for result in results:
            kept_file.write(result.kept)
            dropped_file.write(result.dropped)
            tally.counts.update(result.counts())
            tally.copies += result.info.get("copies", 0)
            tally.info.update(result.info)
    tally.kept, tally.dropped = kept_file.count, dropped_file.count
    return tally


def dropped_path(out: str | Path) -> Path:
    """OUT.dropped.jsonl next to OUT (out.jsonl -> out.dropped.jsonl)."""
    out = Path(out)
    return out.with_name(out.stem + ".dropped.jsonl") if out.suffix else out.with_name(out.name + ".dropped.jsonl")


def write_result(result: StepResult, out: str | Path) -> None:
    """Write kept records to OUT and removed ones to OUT.dropped.jsonl."""
    save_records(result.kept, out)
    write_jsonl(result.dropped, dropped_path(out))
