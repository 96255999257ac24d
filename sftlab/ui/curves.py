"""A run's training curves for the browser: RUN/metrics.jsonl read incrementally and thinned on the server.

Each poll reads only the bytes appended since the last one (a partial last line waits for its newline), so a run
that is still training costs little per refresh. The charted keys are kept as numeric columns and thinned to the
minimum and maximum of each bucket, so a spike stays visible however long the run is.

A long file is indexed in a background thread: 200k metric lines are ~200 MB of JSON, more than a second to parse.
Until that pass ends, the curves of the part not yet read come from lines sampled at evenly spaced byte offsets, so
a page opens at once (the response says it is partial and the page refreshes until it is not).
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import re
import threading
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

# The keys the run page draws: losses (total, per channel, per eval set), lr, gradient norm, throughput, padding.
CHART_KEY = re.compile(r"^(loss|loss_unweighted|eval_loss|eval_.+_loss)(/.+)?$|^(lr|grad_norm|tokens_per_s|padding_ratio)$")
SYNC_BYTES = 8 << 20  # a backlog above this is indexed in the background (the request answers from samples)
SAMPLE_LINES = 2000  # lines sampled from the part not indexed yet
MAX_POINTS = 1000  # points per series sent to the browser


@functools.lru_cache(maxsize=4096)
def charted(key: str) -> bool:
    return CHART_KEY.match(key) is not None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class MetricsIndex:
    """The charted columns of one metrics.jsonl, the alarms, the last train / eval record and the unreadable lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset(None)

    def _reset(self, file_id: tuple[int, int] | None) -> None:
        self.file_id = file_id  # (device, inode): a resumed or overwritten run rewrites the file
        self.offset = 0  # bytes indexed (always at a line start)
        self.line_no = 0
        self.columns: dict[str, tuple[array, array]] = {}
        self.alarms: list[dict[str, Any]] = []
        self.bad_lines: list[int] = []
        self.last_train: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.recent_speed: deque[tuple[float, float]] = deque(maxlen=20)  # (tokens, tokens_per_s) of recent logs
        self.version = 0
        self._snapshot: tuple[int, dict[str, Any]] | None = None

    # -- reading -------------------------------------------------------------------------------------------------
    def _add(self, rec: Any) -> None:
        self.line_no += 1
        if not isinstance(rec, dict):
            self.bad_lines.append(self.line_no)
            return
        if "alarm" in rec:
            self.alarms.append(rec)
            return
        step = rec.get("step")
        if not is_number(step):
            self.bad_lines.append(self.line_no)
            return
        if "loss" in rec:
            self.last_train = rec
            if is_number(rec.get("tokens")) and is_number(rec.get("tokens_per_s")) and rec["tokens_per_s"] > 0:
                self.recent_speed.append((float(rec["tokens"]), float(rec["tokens_per_s"])))
        elif any(k.startswith("eval_") for k in rec):
            self.last_eval = rec
        for k, v in rec.items():
            if is_number(v) and charted(k):
                col = self.columns.get(k)
                if col is None:
                    col = self.columns[k] = (array("d"), array("d"))
                col[0].append(step)
                col[1].append(v)

    def _read_new(self, limit: int | None = None) -> tuple[bool, int]:
        """Index the complete lines appended since the last call, reading at most `limit` bytes. Returns (complete:
        every line up to the file's last newline is indexed, bytes indexed now)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.file_id is not None:
                self._reset(None)
                self.version += 1
            return True, 0
        file_id = (st.st_dev, st.st_ino)
        if file_id != self.file_id or st.st_size < self.offset:
            self._reset(file_id)
        remaining = st.st_size - self.offset
        n = remaining if limit is None else min(limit, remaining)
        if n == 0:
            return True, 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(n)
        end = data.rfind(b"\n") + 1  # a partial last line (a run writing it now) waits for its newline
        for line in data[:end].split(b"\n")[:-1]:
            if not line.strip():
                self.line_no += 1
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.line_no += 1
                self.bad_lines.append(self.line_no)
                continue
            self._add(rec)
        self.offset += end
        if end:
            self.version += 1
        return len(data) == remaining, end

    def refresh(self) -> bool:
        """Bring the index up to date; True when it is complete. A large backlog goes to a background thread."""
        with self.lock:
            if self._worker is not None and self._worker.is_alive():
                return False
            try:
                backlog = os.path.getsize(self.path) - self.offset
            except FileNotFoundError:
                backlog = 0
            if backlog <= SYNC_BYTES:
                self._read_new()
                return True
            self._worker = threading.Thread(target=self._catch_up, name=f"index {self.path}", daemon=True)
            self._worker.start()
            return False

    def close(self) -> None:
        """Stop a background indexing pass (the server is shutting down)."""
        self._stop.set()

    def _catch_up(self) -> None:
        chunk = 256 << 10
        while not self._stop.is_set():
            with self.lock:  # released between chunks, so a poll is never blocked for long
                complete, done = self._read_new(limit=chunk)
            if complete:
                return
            if not done:  # one line longer than the chunk
                chunk *= 2
            time.sleep(0.002)  # let the request threads run: parsing holds the GIL

    # -- what the page gets ------------------------------------------------------------------------------------
    def curves(self, max_points: int = MAX_POINTS) -> dict[str, Any]:
        """{"version", "partial", "indexed", "size", "series": {key: [[step, value], ...]}} thinned to max_points."""
        complete = self.refresh()
        with self.lock:
            if complete and self._snapshot and self._snapshot[0] == self.version:
                return self._snapshot[1]
            cols = {k: (np.frombuffer(x, dtype=np.float64).copy(), np.frombuffer(y, dtype=np.float64).copy())
                    for k, (x, y) in self.columns.items()}
            offset, version = self.offset, self.version
        size = os.path.getsize(self.path) if self.path.exists() else 0
        if not complete:
            for k, (x, y) in sample_lines(self.path, offset, size).items():
                old = cols.get(k, (np.empty(0), np.empty(0)))
                cols[k] = (np.concatenate([old[0], x]), np.concatenate([old[1], y]))
        series = {k: thin(x, y, max_points) for k, (x, y) in sorted(cols.items())}
        out = {"version": version, "partial": not complete, "indexed": offset, "size": size, "series": series}
        if complete:
            with self.lock:
                self._snapshot = (version, out)
        return out

    def problems(self) -> list[str]:
        with self.lock:
            bad = list(self.bad_lines)
        if not bad:
            return []
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        return [f"{len(bad)} unreadable line(s) in {self.path.name} skipped (line {shown}): not a JSON object with "
                "a numeric 'step'"]


def sample_lines(path: Path, start: int, end: int, n: int = SAMPLE_LINES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Charted columns of about n lines taken at evenly spaced byte offsets of path[start:end] (unreadable lines are
    skipped): a faithful overview of a long file in O(n) reads."""
    if end <= start:
        return {}
    try:  # mmap, not seek + readline: no system call per sample, so no waiting for the GIL the indexer holds
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            end = min(end, len(mm))
            lines = dict(_line_at(mm, start + (end - start) * i // n, start, end) for i in range(n))
    except (OSError, ValueError):  # gone, or emptied since its size was read
        return {}
    cols: dict[str, tuple[list[float], list[float]]] = {}
    for at in sorted(lines):  # keyed by line offset: two samples in one line count once
        rec = lines[at]
        if not isinstance(rec, dict) or "alarm" in rec or not is_number(rec.get("step")):
            continue
        for k, v in rec.items():
            if is_number(v) and charted(k):
                xs, ys = cols.setdefault(k, ([], []))
                xs.append(rec["step"])
                ys.append(v)
    return {k: (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for k, (x, y) in cols.items()}


def _line_at(mm: mmap.mmap, pos: int, start: int, end: int) -> tuple[int, Any]:
    """(offset, record) of the first complete line that starts at or after pos (record None when unreadable)."""
    at = pos if pos == start else mm.find(b"\n", pos, end) + 1
    stop = mm.find(b"\n", at, end) if at > 0 or pos == start else -1
    if stop < 0:
        return -1, None
    try:
        return at, json.loads(mm[at:stop])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return at, None


def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> list[list[float]]:
    """[[x, y], ...] with at most ~max_points points: the minimum and maximum of each bucket of consecutive points
    (in x order), so spikes survive; values rounded to 6 significant digits."""
    if len(x) > 1 and np.any(np.diff(x) < 0):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    n = len(x)
    if n > max_points:
        size = math.ceil(2 * n / max_points)
        pad = (-n) % size
        yb = np.concatenate([y, np.full(pad, np.nan)]).reshape(-1, size)
        base = np.arange(yb.shape[0]) * size
        lo = base + np.nanargmin(yb, axis=1)
        hi = base + np.nanargmax(yb, axis=1)
        keep = np.unique(np.concatenate([lo, hi]))
        x, y = x[keep], y[keep]
    return np.stack([x, significant(y)], axis=1).tolist()


def significant(y: np.ndarray, digits: int = 6) -> np.ndarray:
    """y rounded to `digits` significant digits (shorter JSON; the page draws pixels)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(y == 0, 0.0, np.floor(np.log10(np.abs(y))))
        scale = 10.0 ** (digits - 1 - mag)
        out = np.round(y * scale) / scale
    return np.where(np.isfinite(out), out, y)
