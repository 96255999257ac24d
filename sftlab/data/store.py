"""Rendered training data as a memory-mapped columnar store, cached by fingerprint and built in parallel.

Why: holding every rendered sample as Python dicts of arrays costs ~150-210 bytes per token in every
process, and every run, resume and torchrun rank rendered again. A store is rendered once per input (one
data source + tokenizer + render settings), written as flat NumPy arrays, and memory-mapped by every
process that trains on it: the token columns stay in the page cache, shared by all ranks of a node.

One store = one directory `<cache_dir>/<fingerprint>/` (written to a temp dir, then renamed: atomic):

    manifest.json       what it was built from (fingerprint inputs), counts, dtypes, task names, render report
    input_ids.bin       every sample's token ids, concatenated (uint16 when the vocabulary fits, else int32)
    turn_index.bin      per token: its supervised turn within the sample, -1 = not supervised (int16)
    turn_coef.bin       per supervised turn: the loss coefficient c_i of its tokens (float64, data/coefficients.py)
    samples.npz         per sample: token_offsets, turn_offsets, lengths, denoms, supervised, task_codes, id_offsets
    sample_ids.txt      sample ids, UTF-8, concatenated (sliced by id_offsets)
    rejects.jsonl       records rejected while reading or rendering (nothing is dropped silently)
    verified.json       written by the first open that checked the content checksums: each file's size, mtime
                        and inode then (not part of the store's content)

Integrity: the manifest holds an xxh3-64 checksum of every file (and of the manifest itself), computed at build.
Opening a store always checks sizes and offsets against the manifest (cheap), and checks the content checksums on
the first open after a build, whenever a file's size, mtime or inode differs from what verified.json recorded
(rewritten, copied, replaced), and on `sftlab data render-cache --verify` (bit rot that touches nothing else).
A mismatch is damage like a truncated file: the store is rendered again, with one line.

labels and per-token loss coefficients are derived when a sample is read (labels = input_ids where
turn_index >= 0; coefficient = turn_coef[turn]), so a token costs 4 bytes on disk (6 with a large vocab).
Rendering goes through `render_records` and the coefficients through `sample_loss_coefficients`, chunk by
chunk, in `num_proc` worker processes; chunks are written in input order, so the store is byte-identical
whatever num_proc is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import multiprocessing
import os
import shutil
import socket
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from sftlab.data.coefficients import sample_loss_coefficients
from sftlab.data.formats import read_records
from sftlab.data.records import RecordError
from sftlab.data.render import eot_token_ids, render_records
from sftlab.errors import UserError
from sftlab.io import atomic_path, progress_bar

STORE_VERSION = 2  # 2: content checksums in the manifest
CHUNK_RECORDS = 1000  # records per rendering task: small enough to balance workers, big enough to batch tokenizing
TURN_DTYPE = np.int16
# their source is the renderer version
_MODULES = ("render.py", "records.py", "formats.py", "store.py", "coefficients.py")
CONTENT_FILES = ("input_ids.bin", "turn_index.bin", "turn_coef.bin", "samples.npz", "sample_ids.txt", "rejects.jsonl")
_STAMP = "verified.json"


# ------------------------------------------------------------------------------------------ fingerprint


def default_cache_dir() -> Path:
    """$SFTLAB_CACHE, else $XDG_CACHE_HOME/sftlab/render, else ~/.cache/sftlab/render."""
    if os.environ.get("SFTLAB_CACHE"):
        return Path(os.environ["SFTLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sftlab" / "render"


def default_num_proc() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def file_content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file of a directory (saved HF datasets) with its relative path."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """What rendering depends on in a tokenizer: its vocabulary/merges/normalisation (the fast tokenizer's JSON,
    so a tokenizer re-saved into a checkpoint hashes the same), added tokens, chat template and end-of-turn ids."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    for key in ("truncation", "padding"):  # call-time settings, not the vocabulary
        backend.pop(key, None)
    h = hashlib.sha256(json.dumps(backend, sort_keys=True).encode())
    h.update(json.dumps([tokenizer.chat_template, eot_token_ids(tokenizer), len(tokenizer)]).encode())
    return h.hexdigest()


def renderer_version() -> str:
    """Store format version + the source of the modules that read, render and weight samples: changing the
    renderer's code invalidates every cache built with the old one."""
    h = hashlib.sha256(f"store-v{STORE_VERSION}".encode())
    here = Path(__file__).parent
    for name in _MODULES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RenderSettings:
    """Everything besides the data file that decides what a store holds."""

    max_length: int
    train_on: str
    loss: str
    on_error: str = "raise"
    extra_roles: tuple[str, ...] = ()


def fingerprint(source: Any, tokenizer_digest: str, settings: RenderSettings) -> tuple[str, dict[str, Any]]:
    """(cache key, the inputs it was computed from) for one data source."""
    inputs = {"renderer": renderer_version(), "data_sha256": file_content_hash(source.path),
              "format": source.format, "task_type": source.task_type, "tokenizer": tokenizer_digest,
              "max_length": settings.max_length, "train_on": settings.train_on, "loss": settings.loss,
              "on_error": settings.on_error, "extra_roles": list(settings.extra_roles)}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    return key, inputs


# ------------------------------------------------------------------------------------------- the store


class Store:
    """One built store, memory-mapped read-only. Per-sample arrays are loaded (small); token columns are not.
    verify: "auto" checks the content checksums only when verified.json does not match the files (see the module
    docstring), "full" always; `verified` says whether this open did."""

    def __init__(self, path: Path, verify: str = "auto") -> None:
        self.path = Path(path)
        self.verified = False
        try:
            self._open()
            self._check_content(full=verify == "full")
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile) as e:
            # a file truncated, deleted or overwritten after the store was built (disk full, a copy cut short):
            # np.memmap / np.load fail with internal errors, or worse, map fewer tokens than the manifest says
            raise BrokenStore(f"rendered store {self.path} is damaged ({type(e).__name__}: {e})") from None

    def _open(self) -> None:
        self.manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        m = self.manifest
        self.input_ids = _map(self.path / "input_ids.bin", m["token_dtype"], m["num_tokens"])
        self.turn_index = _map(self.path / "turn_index.bin", m["turn_dtype"], m["num_tokens"])
        self.turn_coef = _map(self.path / "turn_coef.bin", "float64", m["num_turns"])
        with np.load(self.path / "samples.npz") as z:
            self.token_offsets = z["token_offsets"]
            self.turn_offsets = z["turn_offsets"]
            self.lengths = z["lengths"]
            self.denoms = z["denoms"]
            self.supervised = z["supervised"]
            self.task_codes = z["task_codes"]
            self.id_offsets = z["id_offsets"]
        self.task_names: list[str] = m["task_names"]
        self._ids = _map(self.path / "sample_ids.txt", "uint8", int(self.id_offsets[-1]))
        n = m["samples"]
        sizes = {"lengths": len(self.lengths), "denoms": len(self.denoms), "supervised": len(self.supervised),
                 "task_codes": len(self.task_codes), "token_offsets": len(self.token_offsets) - 1,
                 "turn_offsets": len(self.turn_offsets) - 1, "id_offsets": len(self.id_offsets) - 1}
        wrong = [k for k, v in sizes.items() if v != n]
        if wrong or int(self.token_offsets[-1]) != m["num_tokens"] or int(self.turn_offsets[-1]) != m["num_turns"]:
            raise ValueError(f"samples.npz does not match manifest.json ({', '.join(wrong) or 'offsets'})")
        self._rejects = self._read_rejects()  # read now: a cut line or a lost record is damage, not an internal error
        if len(self._rejects) != m["read_rejects"] + sum(m["dropped"].values()):
            raise ValueError(f"rejects.jsonl has {len(self._rejects)} records, the manifest says "
                             f"{m['read_rejects'] + sum(m['dropped'].values())}")

    def _check_content(self, full: bool) -> None:
        """Content checksums against the manifest's, unless (not full) the files are as the last check found them."""
        sums = self.manifest.get("checksums")
        if not isinstance(sums, dict):
            raise ValueError("manifest.json has no content checksums")
        stats = _file_stats(self.path)
        if not full and _read_stamp(self.path) == stats:
            return
        if manifest_checksum(self.manifest) != sums.get("manifest.json"):
            raise ValueError("manifest.json: content checksum differs from the one written at build")
        for name in CONTENT_FILES:
            if file_checksum(self.path / name) != sums.get(name):
                raise ValueError(f"{name}: content checksum differs from the manifest's (changed after the build)")
        self.verified = True
        _write_stamp(self.path, stats)

    def __len__(self) -> int:
        return len(self.lengths)

    def sample_id(self, row: int) -> str:
        return bytes(self._ids[self.id_offsets[row]:self.id_offsets[row + 1]]).decode("utf-8")

    def sample(self, row: int) -> dict[str, Any]:
        """One sample as the collators read it (train/batching.py), built from slices of the mapped columns."""
        a, b = int(self.token_offsets[row]), int(self.token_offsets[row + 1])
        ids = self.input_ids[a:b].astype(np.int64)
        turn = self.turn_index[a:b].astype(np.int64)
        sup = turn >= 0
        coef = self.turn_coef[int(self.turn_offsets[row]) + np.maximum(turn, 0)]
        return {"id": self.sample_id(row), "task_type": self.task_names[self.task_codes[row]],
                "input_ids": ids, "labels": np.where(sup, ids, -100), "turn_index": turn,
                "loss_coef": np.where(sup, coef, 0.0), "num_tokens": b - a}

    def rejects(self) -> list[dict[str, Any]]:
        return self._rejects

    def _read_rejects(self) -> list[dict[str, Any]]:
        path = self.path / "rejects.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _map(path: Path, dtype: str, count: int) -> np.ndarray:
    size, expected = path.stat().st_size, count * np.dtype(dtype).itemsize
    if size != expected:  # np.memmap accepts a longer file and fails on a shorter one with an internal error
        raise ValueError(f"{path.name} has {size} bytes, the manifest says {expected}")
    if count == 0:  # an empty file cannot be memory-mapped
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes (hex), hashed from a memory map: no copy, so a store hashes at page-cache or disk
    speed (5x faster than reading it into Python bytes)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # an empty file cannot be mapped
            return xxhash.xxh3_64_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return xxhash.xxh3_64_hexdigest(view)


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """xxh3-64 of the manifest's content, its checksums left out."""
    body = {k: v for k, v in manifest.items() if k != "checksums"}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True).encode())


def _file_stats(path: Path) -> dict[str, list[int]]:
    stats = {}
    for name in (*CONTENT_FILES, "manifest.json"):
        st = (path / name).stat()
        stats[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return stats


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, stats: dict[str, list[int]]) -> None:
    """Atomically; a read-only cache dir just means the next open checks again."""
    with contextlib.suppress(OSError), atomic_path(path / _STAMP, unique=True) as tmp:
        tmp.write_text(json.dumps(stats), encoding="utf-8")


class BrokenStore(UserError):
    """A store directory whose files do not match its manifest (see Store)."""


class StoreSamples:
    """The samples of a split as a read-only sequence: rows of one or more stores (weights repeat rows).
    `samples[i]` builds sample i's dict from the mapped columns when a micro-batch needs it; nothing per
    sample is kept between micro-batches."""

    def __init__(self, stores: list[Store], store_of: np.ndarray, rows: np.ndarray) -> None:
        self.stores, self.store_of, self.rows = stores, store_of, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.stores[self.store_of[i]].sample(int(self.rows[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------------------- building

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, settings: RenderSettings) -> None:
    if multiprocessing.parent_process() is not None:  # a forked worker: one thread each, no fork warning
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizer"], _WORKER["settings"] = tokenizer, settings


def _render_chunk(task: tuple[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Render one chunk of records into compact arrays (runs in a worker process, or in-process)."""
    start, records = task
    tok, st = _WORKER["tokenizer"], _WORKER["settings"]
    try:
        samples, report = render_records(records, tok, train_on=st.train_on, max_length=st.max_length,
                                         on_error=st.on_error)
    except RecordError as e:  # the index is the chunk's: make it the source's; pass fields (pickling loses them)
        index = e.index + start if e.index is not None and e.unit == "record" else e.index
        return {"error": {"reason": e.reason, "file": e.file, "index": index, "field": e.field, "code": e.code,
                          "unit": e.unit}}
    position = {id(r): start + i for i, r in enumerate(records)}
    rejects = []
    for r in report.rejects:
        local = position[id(r["record"])] - start
        reason = r["reason"]
        if reason.startswith(f"record {local}"):  # render_records numbers records within this chunk
            reason = f"record {local + start}" + reason[len(f"record {local}"):]
        rejects.append({"code": r["code"], "reason": reason, "raw": r["record"]})
    token_dtype = np.uint16 if len(tok) <= np.iinfo(np.uint16).max + 1 else np.int32
    ids, turns, coefs, n_turns, denoms, sup = [], [], [], [], [], []
    for s in samples:
        ti = np.asarray(s["turn_index"], dtype=np.int64)
        coef, denom = sample_loss_coefficients(ti, s["turn_weights"], st.loss)
        pos = np.flatnonzero(ti >= 0)
        first = pos[np.unique(ti[pos], return_index=True)[1]]  # each turn's first token: c_i is constant per turn
        ids.append(np.asarray(s["input_ids"], dtype=token_dtype))
        turns.append(ti.astype(TURN_DTYPE))
        coefs.append(coef[first])
        n_turns.append(len(first))
        denoms.append(denom)
        sup.append(len(pos))
    empty = np.zeros(0)
    return {"input_ids": np.concatenate(ids) if ids else empty.astype(token_dtype),
            "turn_index": np.concatenate(turns) if turns else empty.astype(TURN_DTYPE),
            "turn_coef": np.concatenate(coefs) if coefs else empty,
            "lengths": np.array([s["num_tokens"] for s in samples], dtype=np.int32),
            "n_turns": np.array(n_turns, dtype=np.int64), "denoms": np.array(denoms, dtype=np.float64),
            "supervised": np.array(sup, dtype=np.int32), "ids": [s["id"] for s in samples],
            "task_types": [s["task_type"] for s in samples], "rejects": rejects,
            "report": {"truncated": report.truncated, "turns_truncated_away": report.turns_truncated_away,
                       "history_truncated": report.history_truncated, "exchanges_dropped": report.exchanges_dropped,
                       "dropped": dict(report.dropped)}}


def render_store(records: list[dict[str, Any]], read_rejects: list[dict[str, Any]], tokenizer: Any,
                 settings: RenderSettings, out: Path, num_proc: int = 1, inputs: dict[str, Any] | None = None,
                 label: str = "") -> dict[str, Any]:
    """Render `records` into a new store directory `out` (atomically); returns its manifest."""
    tmp = out.with_name(f"{out.name}.tmp-{_unique()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tasks = [(i, records[i:i + CHUNK_RECORDS]) for i in range(0, len(records), CHUNK_RECORDS)]
    workers = max(1, min(num_proc, len(tasks)))
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    task_names: dict[str, int] = {}
    lengths, turn_counts, denoms, sup, codes, id_lens = [], [], [], [], [], []
    truncated = turns_lost = 0
    history: Counter = Counter()  # train_on last_assistant: samples shortened, exchanges dropped
    dropped: Counter = Counter()
    n_tokens = n_turns = 0
    try:
        with (open(tmp / "input_ids.bin", "wb") as f_ids, open(tmp / "turn_index.bin", "wb") as f_turn,
              open(tmp / "turn_coef.bin", "wb") as f_coef, open(tmp / "sample_ids.txt", "wb") as f_sid,
              open(tmp / "rejects.jsonl", "w", encoding="utf-8") as f_rej):
            for r in read_rejects:
                f_rej.write(json.dumps(r, ensure_ascii=False) + "\n")
            for part in _run_chunks(tasks, tokenizer, settings, workers, label):
                if "error" in part:
                    raise RecordError(**part["error"])
                f_ids.write(part["input_ids"].tobytes())
                f_turn.write(part["turn_index"].tobytes())
                f_coef.write(part["turn_coef"].tobytes())
                encoded = [s.encode("utf-8") for s in part["ids"]]
                f_sid.write(b"".join(encoded))
                id_lens += [len(e) for e in encoded]
                for r in part["rejects"]:
                    f_rej.write(json.dumps(r, ensure_ascii=False) + "\n")
                lengths.append(part["lengths"])
                turn_counts.append(part["n_turns"])
                denoms.append(part["denoms"])
                sup.append(part["supervised"])
                codes += [task_names.setdefault(t, len(task_names)) for t in part["task_types"]]
                n_tokens += len(part["input_ids"])
                n_turns += len(part["turn_coef"])
                truncated += part["report"]["truncated"]
                turns_lost += part["report"]["turns_truncated_away"]
                history.update({k: part["report"][k] for k in ("history_truncated", "exchanges_dropped")})
                dropped.update(part["report"]["dropped"])
                token_dtype = str(part["input_ids"].dtype)
        lengths_a = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        if len(task_names) > np.iinfo(np.int16).max:
            raise UserError(f"{label}: more than {np.iinfo(np.int16).max} distinct task_type values")
        np.savez(tmp / "samples.npz", token_offsets=_offsets(lengths_a),
                 turn_offsets=_offsets(np.concatenate(turn_counts) if turn_counts else []),
                 lengths=lengths_a, denoms=np.concatenate(denoms) if denoms else np.zeros(0),
                 supervised=np.concatenate(sup) if sup else np.zeros(0, np.int32),
                 task_codes=np.array(codes, dtype=np.int16), id_offsets=_offsets(id_lens))
        t_sum = time.perf_counter()
        checksums = {name: file_checksum(tmp / name) for name in CONTENT_FILES}
        manifest = {
            "version": STORE_VERSION, "inputs": inputs or {}, "records": len(records) + len(read_rejects),
            "samples": int(len(lengths_a)), "num_tokens": n_tokens, "num_turns": n_turns,
            "supervised_tokens": int(sum(int(s.sum()) for s in sup)),
            "token_dtype": token_dtype if tasks else "uint16", "turn_dtype": np.dtype(TURN_DTYPE).name,
            "task_names": list(task_names), "truncated": truncated, "turns_truncated_away": turns_lost,
            "history_truncated": history["history_truncated"], "exchanges_dropped": history["exchanges_dropped"],
            "dropped": dict(dropped), "read_rejects": len(read_rejects),
            "render": {"num_proc": workers, "seconds": round(time.perf_counter() - t0, 3),
                       "cpu_seconds": round(_cpu_seconds() - cpu0, 3),
                       "checksum_seconds": round(time.perf_counter() - t_sum, 3)},
        }
        manifest["checksums"] = {**checksums, "manifest.json": manifest_checksum(manifest)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same store first: identical content, keep theirs
            if not (out / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _run_chunks(tasks: list, tokenizer: Any, settings: RenderSettings, workers: int, label: str):
    """Rendered chunks in input order, from a process pool (fork where available) or in-process, with progress."""
    with progress_bar() as progress:
        bar = progress.add_task(f"rendering {label}", total=len(tasks))
        if workers <= 1:
            _init_worker(tokenizer, settings)
            for task in tasks:
                yield _render_chunk(task)
                progress.advance(bar)
            return
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer, settings)) as pool:
            for part in pool.imap(_render_chunk, tasks):
                yield part
                progress.advance(bar)


def _unique() -> str:
    """host-pid: the nodes of a job may share the cache dir, and pids repeat across machines (containers start
    their processes at the same low pids), so a pid alone would let one node delete another's temp store."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _offsets(counts: Any) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the render workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------- build or open


@dataclass
class SourceStore:
    """A data source's store and how it was obtained (for the run dir's record of caches used)."""

    store: Store
    key: str
    hit: bool


def build_or_open(source: Any, tokenizer: Any, settings: RenderSettings, cache_dir: str | Path | None = None,
                  num_proc: int | None = None, *, build: bool = True, wait_s: float = 86400.0,
                  tokenizer_digest: str | None = None, label: str = "", verify: bool = False) -> SourceStore:
    """The store of one data source: found in the cache, or (build=True) rendered into it.

    build=False is for the other ranks of a node: they wait until the builder's store appears (it is renamed
    into place only when complete), then memory-map it. verify=True checks a found store's content checksums
    even when its files look untouched (`render-cache --verify`)."""
    if not Path(source.path).exists():
        raise UserError(f"{label or 'data'}: file not found: {source.path}")
    digest = tokenizer_digest or tokenizer_hash(tokenizer)
    key, inputs = fingerprint(source, digest, settings)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = root / key
    damage = ""
    if (out / "manifest.json").exists():
        try:
            return SourceStore(Store(out, "full" if verify else "auto"), key, hit=True)
        except BrokenStore as e:
            damage = str(e)
    elif out.exists():  # stores appear complete (renamed into place): without a manifest, files were lost since
        damage = f"rendered store {out} is damaged (no manifest.json)"
    if damage and build:  # render it again (below), after moving the damaged one out of the way atomically
        print(f"{label}: {damage}; rendering it again", flush=True)
        broken = out.with_name(f"{out.name}.broken-{_unique()}")
        with contextlib.suppress(OSError):  # another builder moved it first
            out.rename(broken)
        shutil.rmtree(broken, ignore_errors=True)
    if not build:  # wait for the builder's store (a damaged one is being replaced by the builder)
        t0, damage = time.monotonic(), ""
        while True:
            if (out / "manifest.json").exists():
                try:
                    return SourceStore(Store(out), key, hit=True)
                except BrokenStore as e:
                    damage = f"; {e}"
            if time.monotonic() - t0 > wait_s:
                raise UserError(f"{label}: waited {wait_s:.0f} s for the rendered store {out} (local rank 0 renders "
                                f"it); check that rank's log{damage}")
            time.sleep(0.2)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.cache_dir: cannot create {root}: {e.strerror}") from None
    records, rejects = read_records(source.path, source.format, task_type=source.task_type,
                                    on_error=settings.on_error, extra_roles=list(settings.extra_roles))
    n_proc = num_proc or default_num_proc()
    n_proc = max(1, min(n_proc, math.ceil(len(records) / CHUNK_RECORDS)))
    print(f"{label}: rendering {source.path} ({len(records)} records, {n_proc} process{'es' if n_proc > 1 else ''}) "
          f"into {out}", flush=True)
    try:
        render_store(records, rejects, tokenizer, settings, out, n_proc, inputs, label=label)
    except RecordError as e:  # render_store numbers the records of the source: name the source too
        raise e.located(file=str(source.path)) from None
    return SourceStore(Store(out), key, hit=False)


__all__ = ["Store", "StoreSamples", "SourceStore", "RenderSettings", "build_or_open", "render_store", "fingerprint",
           "default_cache_dir", "default_num_proc", "file_content_hash", "tokenizer_hash", "renderer_version",
           "file_checksum", "manifest_checksum"]
