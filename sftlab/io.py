"""Files written whole or not at all, JSON Lines with line numbers, and the one progress bar.

The bottom layer of sftlab (it imports nothing of sftlab but its errors). Every file sftlab writes goes through
here: under a temporary name next to it, renamed onto the final name when complete, so a killed command leaves
the old file or the whole new one, never half of one, and nothing it writes is invalid JSON. Every long loop
draws the same progress bar: on stderr, and only on a terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sftlab.errors import RecordError, UserError

# ---- where a file may go --------------------------------------------------------------------------------------


def check_output_file(path: Path) -> None:
    """An output file that is an existing directory is refused before anything is written (the final rename
    would fail after the whole run, naming PATH.tmp)."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give an output file name")
    check_output_dir(path.parent)


def check_output_dir(path: Path) -> None:
    """An output directory that is, or lies under, an existing file is refused (mkdir would fail with
    FileExistsError / NotADirectoryError, after the work)."""
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{path}: is a file; give an output directory" if p == path else
                                f"{path}: {p} is a file; give an output directory")
            return


# ---- whole files -----------------------------------------------------------------------------------------------


def temp_name(path: Path, unique: bool = False) -> Path:
    """PATH.tmp beside PATH; unique: a hidden name no concurrent writer of the same directory picks."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp" if unique else f"{path.name}.tmp")


@contextmanager
def atomic_path(path: str | Path, *, unique: bool = False) -> Iterator[Path]:
    """A temporary name to write PATH's content to: renamed onto PATH when the block ends, removed when it
    raises. For writers that need a path (numpy, matplotlib, a memory map); text and JSON have their own."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, unique)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_bytes(data: bytes, path: str | Path) -> None:
    """PATH holds `data`, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path: str | Path) -> None:
    """PATH holds `text` (UTF-8), written atomically: a browser refreshing a live report never sees half a page."""
    write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | Path, *, allow_nan: bool = False) -> None:
    """PATH holds `obj` as indented UTF-8 JSON, written atomically. allow_nan: NaN / Infinity are written as
    Python's json writes them (not valid JSON; eval summaries keep their historical NaN confidence bounds)."""
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=allow_nan) + "\n"
    except ValueError as e:
        raise UserError(f"{path}: cannot write as valid JSON: {e}") from None
    write_text(text, path)


# ---- JSON Lines ------------------------------------------------------------------------------------------------


def json_line(row: Any, path: Path, n: int, *, allow_nan: bool = False) -> str:
    """One JSONL line (UTF-8 text, non-ASCII kept, the row's key order); never invalid JSON: a NaN / Infinity or
    a lone surrogate is a UserError naming row n of path and its id."""
    try:
        line = json.dumps(row, ensure_ascii=False, allow_nan=allow_nan) + "\n"
        line.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        rid = row.get("id") if isinstance(row, dict) else None
        raise UserError(f"{path}: cannot write record {n} (id {rid!r}) as valid JSON: {e}") from None
    return line


class AtomicFile:
    """A file written under PATH.tmp as it goes and renamed to PATH by commit() (abort() removes it): for
    writers that append chunk by chunk and must leave either the whole file or none. Subclasses open self.tmp
    and close it in close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_output_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path)
        self.count = 0

    def close(self) -> None:
        """Flush and close what writes self.tmp."""

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.close()
        self.tmp.unlink(missing_ok=True)


class JsonlWriter(AtomicFile):
    """Rows appended to PATH.tmp as JSON lines (json_line); `commit` renames it to PATH."""

    def __init__(self, path: str | Path, *, allow_nan: bool = False) -> None:
        super().__init__(path)
        self.allow_nan = allow_nan
        self.file = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in commit/abort

    def write(self, rows: Iterable[Any]) -> None:
        for row in rows:
            self.file.write(json_line(row, self.path, self.count, allow_nan=self.allow_nan))
            self.count += 1

    def close(self) -> None:
        self.file.close()


@contextmanager
def all_or_none(writers: Iterable[AtomicFile]) -> Iterator[None]:
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


def write_jsonl(rows: Iterable[Any], path: str | Path, *, allow_nan: bool = False) -> int:
    """Write rows as JSONL (UTF-8, non-ASCII kept, stable key order), atomically. Returns the count.

    `rows` may be a stream that raises (a bad input record): then neither PATH nor PATH.tmp is left. Never
    writes invalid JSON: a NaN/Infinity or a lone surrogate is a UserError naming the record."""
    writer = JsonlWriter(path, allow_nan=allow_nan)
    with all_or_none([writer]):
        writer.write(rows)
    return writer.count


class JsonlAppender:
    """Rows added to the end of PATH as they are made (resumable outputs): each line is written whole with one
    write and flushed per call, so a kill loses at most the rows of the call it interrupts."""

    def __init__(self, path: str | Path, *, allow_nan: bool = False) -> None:
        self.path = Path(path)
        self.allow_nan = allow_nan
        self.count = 0
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close / __exit__

    def append(self, rows: Iterable[Any]) -> None:
        for row in rows:
            self.file.write(json_line(row, self.path, self.count, allow_nan=self.allow_nan))
            self.count += 1
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_append_lock = threading.Lock()


def append_json_line(path: str | Path, obj: Any) -> None:
    """Append one JSON line durably, for files several writers share and a kill must never tear (reviewed
    fixes): one write of the whole line, then fsync, under a thread lock and flock (processes); a line a crash
    cut short is removed before the next append, so the file always reads cleanly."""
    path = Path(path)
    line = (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _append_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.lseek(fd, 0, os.SEEK_END)
            if size and os.pread(fd, 1, size - 1) != b"\n":  # the tail of a write a crash interrupted
                os.ftruncate(fd, _after_last_newline(fd, size))
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _after_last_newline(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, value) from a JSONL file (blank lines skipped); a bad line raises RecordError
    naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"malformed JSON ({e.msg} at column {e.colno})", file=str(path),
                                  index=lineno, code="malformed_json", unit="line") from None
            yield lineno, obj


def read_jsonl(path: str | Path) -> list[Any]:
    """Every value of a JSONL file, in order (iter_jsonl)."""
    return [obj for _, obj in iter_jsonl(path)]


# ---- progress --------------------------------------------------------------------------------------------------


def progress_console() -> Console:
    """Where progress bars go: stderr (rich draws them only on a terminal)."""
    return Console(stderr=True)


def progress_bar(disable: bool = False) -> Progress:
    """A transient rich Progress on stderr, drawn only on a terminal: off one, a stopped rich display still printed
    a blank line on stdout, where a command's summary line (or JSON) goes."""
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
    _LIVE.append(True)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
    finally:
        _LIVE.pop()
