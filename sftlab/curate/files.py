"""Record files in and out of the curation steps: any input layout read in chunks, JSONL or Parquet written.

Every input (canonical JSONL / Parquet or any layout `sftlab data convert` reads) goes through
`sftlab.data.formats`, so all commands accept and refuse the same files. Outputs are JSONL, or Parquet when the
name ends in .parquet (nested columns stored as JSON text), written atomically through sftlab.io.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sftlab.data.formats import iter_records, read_many_detailed
from sftlab.errors import UserError
from sftlab.io import AtomicFile, JsonlWriter, all_or_none, read_progress, write_jsonl

PARQUET_TAG = b"sftlab.canonical"  # schema metadata key of Parquet files written by save_records
JSON_COLUMNS = ("messages", "tools", "meta")


def _print_warnings(info: Iterable[dict[str, Any]]) -> None:
    for i in info:
        for w in i["warnings"]:
            print(f"warning: {w}", file=sys.stderr)


def load_records(paths: str | Path | Sequence[str | Path], *, allow_empty_answers: bool = False) -> list[dict[str, Any]]:
    """Records of one or more files, in order, through the same reader as `sftlab data convert`
    (sftlab.data.formats: any layout, BOM, encodings and bad lines handled the same way). Empty inputs,
    bad records and duplicate ids are errors (ids key all outputs); reader warnings go to stderr."""
    records, _, info = read_many_detailed(_check_inputs(paths), allow_empty_answers=allow_empty_answers)
    _print_warnings(info)
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
    info: list[dict] = []
    printed = 0
    with read_progress(label, total) as advance:
        for records, _ in iter_records(_check_inputs(paths), chunk_size=chunk_size, info=info,
                                       allow_empty_answers=allow_empty_answers, labels=labels):
            if warn:
                _print_warnings(info[printed:])
            printed = len(info)
            if records:
                advance(len(records))
                yield records
    if warn:
        _print_warnings(info[printed:])


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
    if Path(path).suffix != ".parquet":
        return write_jsonl(records, path)
    writer = ParquetWriter(path)
    with all_or_none([writer]):
        writer.write(records)
    return writer.count


def _parquet_table(rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa  # lazy: pyarrow loads only for Parquet outputs

    cols: dict[str, list] = {"id": [r["id"] for r in rows], "task_type": [r["task_type"] for r in rows],
                             "source": [r.get("source") or "" for r in rows]}
    for col in JSON_COLUMNS:
        cols[col] = [None if r.get(col) is None else json.dumps(r[col], ensure_ascii=False) for r in rows]
    schema = pa.schema([(c, pa.string()) for c in cols], metadata={PARQUET_TAG: b"1"})
    return pa.table(cols, schema=schema)


class ParquetWriter(AtomicFile):
    """Appends chunks to PATH.tmp as row groups of one Parquet file (same schema as save_records)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.writer: Any = None

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq  # lazy: pyarrow loads only for Parquet outputs

        table = _parquet_table(list(rows))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)
        self.count += table.num_rows

    def commit(self) -> None:
        if self.writer is None:
            self.write([])
        super().commit()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def atomic_writer(path: str | Path) -> JsonlWriter | ParquetWriter:
    """A writer that appends records to PATH.tmp (JSONL, or Parquet when PATH ends in .parquet) and renames it to
    PATH on commit()."""
    return ParquetWriter(path) if Path(path).suffix == ".parquet" else JsonlWriter(path)


def write_record_chunks(chunks: Iterable[Sequence[dict[str, Any]]], path: str | Path) -> int:
    """Records arriving chunk by chunk written to PATH (JSONL, or Parquet with one row group per chunk) as they
    come; PATH appears whole at the end, or not at all. Returns the count."""
    writer = atomic_writer(path)
    with all_or_none([writer]):
        for chunk in chunks:
            writer.write(chunk)
    return writer.count
