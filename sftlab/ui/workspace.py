"""What `sftlab ui DIR ...` serves: the run dirs, eval dirs, datasets and reviews found under the given paths, with
the caches that keep pages fast (one metrics index per run, parsed datasets and evals until their files change).

Paths are rescanned at most every few seconds, so a run started after the server shows up on the next refresh.
Everything is addressed by a short id (a hash of the absolute path) so URLs never carry file paths.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.ui.curves import MetricsIndex
from sftlab.ui.datasets import DatasetView, RenderSettings, load_dataset
from sftlab.ui.evals import EvalView, is_eval_dir, load_eval
from sftlab.ui.fixes import SFT_FILE
from sftlab.ui.review import Review, find_reviews
from sftlab.ui.runs import data_files, is_run_dir, locate, mtime, read_config, walk_dirs

RESCAN_S = 3.0
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class NotFound(UserError):
    """An id or page that does not exist (HTTP 404)."""


def path_id(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]


@dataclass
class Dataset:
    path: Path
    settings: RenderSettings
    origin: str  # "argument", "run <dir> (train)", "fixes"


@dataclass
class Workspace:
    paths: list[Path]
    fixes_dir: Path
    tokenizer: str | None = None
    endpoints: list[str] = field(default_factory=list)
    endpoint_key_env: str = "OPENAI_API_KEY"
    notes: list[str] = field(default_factory=list)
    runs: dict[str, Path] = field(default_factory=dict)
    evals: dict[str, Path] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    _scanned: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _indexes: dict[Path, MetricsIndex] = field(default_factory=dict)
    _cache: dict[Any, tuple[Any, Any]] = field(default_factory=dict)
    _reviews: dict[Path, Review] = field(default_factory=dict)

    def scan(self, force: bool = False) -> None:
        """Find runs, eval dirs and datasets under the paths (at most every RESCAN_S seconds)."""
        with self._lock:
            if not force and time.time() - self._scanned < RESCAN_S:
                return
            notes, runs, evals, datasets = [], {}, {}, {}
            for p in self.paths:
                if not p.exists():
                    notes.append(f"{p}: not found (given on the command line)")
                elif p.is_file():
                    datasets[path_id(p)] = Dataset(p, RenderSettings(tokenizer=self.tokenizer), "argument")
                else:
                    for d in walk_dirs(p):
                        if is_eval_dir(d):
                            evals[path_id(d)] = d
                        elif is_run_dir(d):
                            runs[path_id(d)] = d
            for rd in runs.values():
                datasets.update(self._run_datasets(rd))
            fixes = self.fixes_dir / SFT_FILE
            if fixes.exists():
                datasets[path_id(fixes)] = Dataset(fixes, RenderSettings(tokenizer=self.tokenizer), "fixes")
            self.notes, self.runs, self.evals, self.datasets = notes, runs, evals, datasets
            self._scanned = time.time()

    def _run_datasets(self, run_dir: Path) -> dict[str, Dataset]:
        cfg, _, _ = read_config(run_dir)
        if cfg is None:
            return {}
        final = run_dir / "final"
        settings = RenderSettings.from_run_config(cfg, str(final) if (final / "tokenizer.json").exists() else None)
        splits: dict[Path, list[str]] = {}
        for split, path in data_files(cfg):
            found = locate(path, run_dir)
            if found is not None and found.suffix in DATA_SUFFIXES + ("",):
                splits.setdefault(found, []).append(split)
        return {path_id(p): Dataset(p, settings, f"{' and '.join(dict.fromkeys(s))} data of run {run_dir}")
                for p, s in splits.items()}

    # -- lookups ----------------------------------------------------------------------------------------------
    def _find(self, table: str, key: str, what: str) -> Any:
        self.scan()
        found = getattr(self, table).get(key)
        if found is None:
            raise NotFound(f"no {what} with id {key!r} (it may have been moved or deleted)")
        return found

    def run_dir(self, rid: str) -> Path:
        return self._find("runs", rid, "run")

    def index(self, run_dir: Path) -> MetricsIndex:
        with self._lock:
            if run_dir not in self._indexes:
                self._indexes[run_dir] = MetricsIndex(run_dir / "metrics.jsonl")
            return self._indexes[run_dir]

    def eval_dir(self, eid: str) -> Path:
        return self._find("evals", eid, "eval dir")

    def eval_view(self, eid: str) -> EvalView:
        path = self.eval_dir(eid)
        sig = tuple(mtime(path / f) for f in ("summary.json", "predictions.jsonl", "bad_cases.jsonl"))
        return self._cached(("eval", path), sig, lambda: load_eval(path))

    def dataset(self, did: str) -> tuple[Dataset, DatasetView]:
        ds = self._find("datasets", did, "dataset")
        return ds, self._cached(("data", ds.path, ds.settings), mtime(ds.path),
                                lambda: load_dataset(ds.path, ds.settings))

    def _cached(self, key: Any, sig: Any, build: Any) -> Any:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        value = build()
        with self._lock:
            self._cache[key] = (sig, value)
        return value

    def reviews(self) -> list[tuple[str, Path, Path]]:
        """(id, review folder, eval dir) of every review of every eval dir."""
        self.scan()
        return [(path_id(r), r, e) for e in self.evals.values() for r in find_reviews(e)]

    def review(self, sid: str) -> Review:
        found = {i: r for i, r, _ in self.reviews()}
        if sid not in found:
            raise NotFound(f"no review with id {sid!r}")
        path = found[sid]
        with self._lock:
            if path not in self._reviews:
                self._reviews[path] = Review(path)
            return self._reviews[path]

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        for r in self._reviews.values():
            r.close()
