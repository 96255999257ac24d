"""The embedding cache: float32 vectors keyed by the SHA-1 of their text, in a few memory-mapped shards.

One directory per model. Each call that embeds new texts appends one shard, two .npy files:
`<name>.vecs.npy` (rows × dim float32) and `<name>.keys.npy` (rows SHA-1 digests, S20, sorted). Both are
written to a temporary name and renamed, vectors first, so a shard whose keys file exists is complete; a crash
leaves at most an orphan that is never read. Opening the cache maps every shard and sorts all keys once; a
lookup is one `searchsorted` over that index, so millions of texts cost 20 bytes of index each and no files of
their own. Each mapped shard holds a file descriptor, so shards are merged (written before the old ones are
removed, so a concurrent reader never misses an entry; duplicates are harmless): all of them when a directory
with more than MAX_SHARDS is opened, the smaller half when a run's appends pass MAX_SHARDS.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import numpy as np

from sftlab.io import atomic_path

MAX_SHARDS = 64
_KEYS, _VECS = ".keys.npy", ".vecs.npy"


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, unique=True) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append .npy
        np.save(f, array)


class EmbeddingCache:
    """Every shard of one model's directory, indexed by key. Only `add` writes; readers see what was complete
    when they last looked (`refresh`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.names: list[str] = []
        self.vecs: list[np.ndarray] = []  # memory maps, one per shard
        self.keys = np.zeros(0, dtype="S20")  # sorted over all shards
        self.where = np.zeros((0, 2), dtype=np.int64)  # (shard, row) of each key
        self.refresh()
        if len(self.names) > MAX_SHARDS:
            self.compact()

    def _listing(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name[:-len(_KEYS)] for p in self.root.iterdir()
                      if p.name.endswith(_KEYS) and not p.name.startswith("."))

    def _open(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            keys = np.load(self.root / f"{name}{_KEYS}")  # read whole: the index copies it anyway
            vecs = np.load(self.root / f"{name}{_VECS}", mmap_mode="r")
        except (OSError, ValueError):  # removed by a concurrent compaction, or damaged: a miss, not an error
            return None
        if keys.dtype != np.dtype("S20") or vecs.ndim != 2 or len(vecs) != len(keys):
            return None
        return keys, vecs

    def refresh(self) -> None:
        """Index the shards written since the last look (by this or another process)."""
        names = self._listing()
        if not set(self.names) <= set(names):  # shards were merged away: start over
            self.names, self.vecs = [], []
            self.keys, self.where = np.zeros(0, dtype="S20"), np.zeros((0, 2), dtype=np.int64)
        known = set(self.names)
        new = [n for n in names if n not in known]
        parts_k, parts_w = [], []
        for name in new:
            opened = self._open(name)
            if opened is None:
                continue
            keys, vecs = opened
            parts_k.append(keys)
            parts_w.append(np.stack([np.full(len(keys), len(self.vecs)), np.arange(len(keys))], axis=1))
            self.names.append(name)
            self.vecs.append(vecs)
        if parts_k:
            self._merge(np.concatenate(parts_k), np.concatenate(parts_w))

    def _merge(self, keys: np.ndarray, where: np.ndarray) -> None:
        """Insert keys (any order) into the sorted index: O(index) copy, not a re-sort."""
        order = np.argsort(keys, kind="stable")
        keys, where = keys[order], where[order]
        at = np.searchsorted(self.keys, keys)
        self.keys = np.insert(self.keys, at, keys)
        self.where = np.insert(self.where, at, where, axis=0)

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, float32 rows of the found keys in order) for S20 digests."""
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool), None
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        where = self.where[at[found]]
        out = np.empty((len(where), self.vecs[0].shape[1]), dtype=np.float32)
        for shard in np.unique(where[:, 0]):
            sel = where[:, 0] == shard
            out[sel] = self.vecs[shard][where[sel, 1]]
        return found, out

    def add(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        """One new shard of unique keys (its keys file written last: its presence marks the shard complete)."""
        order = np.argsort(keys, kind="stable")
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        _write_npy(self.root / f"{name}{_VECS}", np.ascontiguousarray(vecs[order], dtype=np.float32))
        _write_npy(self.root / f"{name}{_KEYS}", keys[order])
        self.refresh()
        if len(self.names) > MAX_SHARDS:
            sizes = np.bincount(self.where[:, 0], minlength=len(self.names))
            self.compact([self.names[i] for i in np.argsort(sizes, kind="stable")[:len(self.names) // 2]])

    def compact(self, names: list[str] | None = None) -> None:
        """Merge the named shards (default: all) into one, streaming rows through a memory map."""
        names = self.names if names is None else names
        if len(names) < 2:
            return
        shards = [self.names.index(n) for n in names]
        rows = np.flatnonzero(np.isin(self.where[:, 0], shards))
        uniq, first = np.unique(self.keys[rows], return_index=True)
        where = self.where[rows[first]]
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        with atomic_path(self.root / f"{name}{_VECS}", unique=True) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                            shape=(len(uniq), self.vecs[0].shape[1]))
            for shard in shards:
                sel = np.flatnonzero(where[:, 0] == shard)
                out[sel] = self.vecs[shard][where[sel, 1]]
            out.flush()
            del out
        _write_npy(self.root / f"{name}{_KEYS}", uniq)
        for old in names:
            for suffix in (_KEYS, _VECS):  # keys first: a shard without its keys file is never read
                with contextlib.suppress(OSError):  # already removed by a concurrent compaction
                    (self.root / f"{old}{suffix}").unlink()
        self.refresh()


_OPEN: dict[Path, EmbeddingCache] = {}


def open_cache(root: Path) -> EmbeddingCache:
    """The process's view of one cache directory, refreshed on each call (other processes may have added)."""
    root = Path(root).resolve()
    if root not in _OPEN:
        _OPEN[root] = EmbeddingCache(root)
    else:
        _OPEN[root].refresh()
    return _OPEN[root]
