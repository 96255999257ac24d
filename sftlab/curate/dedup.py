"""`dedup`: exact (normalised hash) and near-duplicate (MinHash LSH) removal.

Near duplicates: token 5-gram shingles (a CJK character is a token) hashed in numpy, MinHash signatures
from `rensa` (chosen over `datasketch` by benchmarks/bench_dedup.py: same quality, much faster), LSH
banding in numpy, then every candidate pair is verified with the exact Jaccard of the shingle sets, so
precision does not depend on the MinHash estimate. Records are visited in priority order (input order, or highest meta
score first); a record is dropped when its Jaccard with an already kept record is >= threshold, so every
dropped record names a kept one (`duplicate_of`) that really is that similar. Texts with fewer tokens
than the shingle size are a single shingle (so they only match their exact duplicates); texts with no
tokens at all are only compared exactly.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import Field
from rensa import RMinHash

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.embed import DEFAULT_CACHE, embed_texts
from sftlab.curate.step import StepResult, drop
from sftlab.curate.text import field_text, mix64, token_hashes
from sftlab.errors import UserError


class DedupConfig(StepConfig):
    """Options of `dedup`."""

    field: Literal["prompt", "answer", "both"] = "both"
    mode: Literal["exact", "near"] = "near"
    threshold: float = Field(0.7, gt=0, le=1)
    num_perm: int = Field(128, ge=8, le=1024)
    ngram: int = Field(5, ge=1, le=32)
    keep: Literal["first", "score"] = "first"
    score_key: str | None = None
    verify: bool = True
    seed: int = 0
    workers: int = Field(1, ge=1, le=256)
    semantic_threshold: float | None = Field(None, gt=0, le=1)
    embedding_model: str | None = None
    semantic_group_size: int = Field(10000, ge=2)


def lsh_bands(threshold: float, num_perm: int, min_recall: float = 0.99) -> int:
    """Number of LSH bands: the fewest candidates (largest rows per band) that still make a pair at
    exactly the threshold a candidate with probability >= min_recall. Bands must divide num_perm."""
    best = num_perm
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold ** rows) ** bands >= min_recall:
            best = bands
            break
    return best


def _key(token_hash_bytes: bytes) -> str:
    """Exact-duplicate key: the normalised token sequence, via its token hashes."""
    return hashlib.blake2b(token_hash_bytes, digest_size=16).hexdigest()


def _score(rec: dict[str, Any], pos: int, key: str) -> float:
    """meta[key] of a record (keep=score ranks by it), refused unless a number."""
    s = (rec.get("meta") or {}).get(key)
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise UserError(f"dedup: record {pos} (id {rec['id']!r}): meta.{key} must be a number, got {s!r}")
    return s


def _priority(records: Sequence[dict[str, Any]], cfg: DedupConfig) -> list[int]:
    if cfg.keep == "first":
        return list(range(len(records)))
    if not cfg.score_key:
        raise UserError("dedup: keep='score' needs score_key (the meta field to rank by, higher is kept)")
    scores = [_score(r, i, cfg.score_key) for i, r in enumerate(records)]
    return sorted(range(len(records)), key=lambda i: (-scores[i], i))


_MUL = np.uint64(0x9E3779B97F4A7C15)


def shingle_hashes(th: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every token n-gram, flat, with row offsets (numpy, no per-token Python loop).

    th: flat token hashes of all texts (`token_hashes`), lens: tokens per text. The n-gram hash combines n
    consecutive token hashes. A text with fewer than n tokens has one shingle (all its tokens); a text with
    no tokens has none."""
    lens = np.asarray(lens, dtype=np.int64)
    total = int(lens.sum())
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    short = np.flatnonzero((lens > 0) & (lens < n))
    short_hash = np.zeros(len(short), dtype=np.uint64)
    acc = th.copy()
    with np.errstate(over="ignore"):
        for k in range(n):
            if 0 < k < total:
                acc[: total - k] = acc[: total - k] * _MUL + th[k:]
            done = short[lens[short] == k + 1]
            short_hash[np.searchsorted(short, done)] = acc[starts[done]]
        acc = mix64(acc)
        short_hash = mix64(short_hash)
    counts = np.where(lens >= n, lens - n + 1, (lens > 0).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pos = np.repeat(starts, counts) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts))
    flat = acc[pos] if total else np.zeros(0, dtype=np.uint64)
    flat[offsets[short]] = short_hash
    return flat, offsets


def lsh_candidates(sig: np.ndarray | Sequence[np.ndarray], bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows sharing at least one LSH band of their MinHash signatures, sorted by i.

    Banding is done here in numpy on rensa's digest matrix (rensa's own LSH index can only be queried one
    signature object at a time). `sig` may be a list of row blocks (the matrix in parts, as the streaming
    steps collect it): one band's columns are gathered at a time, so the whole matrix is never copied."""
    parts = [sig] if isinstance(sig, np.ndarray) else list(sig)
    rows = parts[0].shape[1] // bands
    pair_keys = []
    n = sum(len(part) for part in parts)
    with np.errstate(over="ignore"):
        for b in range(bands):
            block = np.concatenate([part[:, b * rows:(b + 1) * rows] for part in parts]).astype(np.uint64)
            key = block[:, 0].copy()
            for c in range(1, rows):
                key = key * _MUL + block[:, c]
            order = np.argsort(key, kind="stable")
            eq = np.concatenate([[False], key[order][1:] == key[order][:-1], [False]]).astype(np.int8)
            edge = np.diff(eq)
            run_start, run_end = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # runs [start, end]
            pairs = run_end - run_start == 1  # most buckets hold exactly two rows: vectorised
            a, c = order[run_start[pairs]], order[run_end[pairs]]
            pair_keys.append(np.minimum(a, c).astype(np.int64) * n + np.maximum(a, c))
            for s0, e0 in zip(run_start[~pairs].tolist(), run_end[~pairs].tolist(), strict=True):
                members = np.sort(order[s0:e0 + 1]).astype(np.int64)
                i, j = np.triu_indices(len(members), 1)
                pair_keys.append(members[i] * n + members[j])
    if not pair_keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uniq = np.unique(np.concatenate(pair_keys))
    return uniq // n, uniq % n


def signatures(th: np.ndarray, lens: np.ndarray, ngram: int, num_perm: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat shingle hashes, row offsets, MinHash signature matrix uint32 [rows, num_perm]) via rensa."""
    flat, off = shingle_hashes(th, lens, ngram)
    sig = RMinHash.digest_matrix_from_flat_token_hashes(flat, off.astype(np.uint64), num_perm, seed)
    return flat, off, np.array(sig.to_rows(), dtype=np.uint32).reshape(len(lens), num_perm)


def near_pairs(texts: Sequence[str], threshold: float = 0.7, ngram: int = 5, num_perm: int = 128,
               seed: int = 0) -> list[tuple[int, int, float]]:
    """All pairs (i < j, exact shingle Jaccard) >= threshold among texts with tokens, via MinHash LSH."""
    th, lens = token_hashes(texts)
    idx = np.flatnonzero(lens > 0).tolist()
    if len(idx) < 2:
        return []
    flat, off, sig = signatures(th, lens[lens > 0], ngram, num_perm, seed)
    ci, cj = lsh_candidates(sig, lsh_bands(threshold, num_perm))
    sets = [set(flat[off[u]:off[u + 1]].tolist()) for u in range(len(idx))]
    out = []
    for u, v in zip(ci.tolist(), cj.tolist(), strict=True):
        sim = len(sets[u] & sets[v]) / len(sets[u] | sets[v])
        if sim >= threshold:
            out.append((idx[u], idx[v], sim))
    return out


def _chunk_features(texts: Sequence[str], ngram: int, num_perm: int, seed: int, near: bool
                    ) -> tuple[list[str], list[bool], np.ndarray, np.ndarray, np.ndarray]:
    """Exact keys, has-tokens flags, and (for texts with tokens) shingle hashes + MinHash signatures."""
    th, lens = token_hashes(texts)
    ends = np.cumsum(lens).tolist()
    keys = [_key(th[e - n:e].tobytes()) for e, n in zip(ends, lens.tolist(), strict=True)]
    nonempty = (lens > 0).tolist()
    if near and any(nonempty):
        flat, off, sig = signatures(th, lens[lens > 0], ngram, num_perm, seed)
    else:
        flat, off, sig = np.zeros(0, np.uint64), np.zeros(1, np.int64), np.zeros((0, num_perm), np.uint32)
    return keys, nonempty, flat, off, sig


def _features(texts: list[str], cfg: DedupConfig, chunk_size: int) -> list[tuple]:
    chunks = [texts[s:s + chunk_size] for s in range(0, len(texts), chunk_size)]
    args = (cfg.ngram, cfg.num_perm, cfg.seed, cfg.mode == "near")
    if cfg.workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(_chunk_features, chunks, *[[a] * len(chunks) for a in args]))
    return [_chunk_features(c, *args) for c in chunks]


def _semantic_groups(emb: np.ndarray, group_size: int, seed: int) -> list[np.ndarray]:
    """Row groups searched exactly: all rows when there are few, else seeded K-means clusters of about
    group_size rows (pairs across clusters are not compared: the SemDeDup trade-off for large data)."""
    n = emb.shape[0]
    if n <= group_size:
        return [np.arange(n)]
    from sklearn.cluster import KMeans  # lazy: scikit-learn takes seconds to import

    k = -(-n // group_size)
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(emb.astype(np.float64)).labels_
    return [np.flatnonzero(labels == c) for c in range(k)]


def semantic_duplicates(emb: np.ndarray, threshold: float, group_size: int = 10000, seed: int = 0,
                        block: int = 1024) -> dict[int, tuple[int, float]]:
    """Greedy semantic dedup over rows in priority order: row i -> (kept row, cosine) when its cosine with
    an earlier kept row of its group is >= threshold (the most similar such row; ties: the earliest).

    emb: L2-normalised rows. Similarities are computed block by block (float64, so reruns are identical);
    only the pairs above the threshold are kept, and only those are walked in Python."""
    out: dict[int, tuple[int, float]] = {}
    for members in _semantic_groups(emb, group_size, seed):
        members = np.sort(members)
        g = emb[members].astype(np.float64)  # per group: no float64 copy of the whole matrix
        cand: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # local row -> (earlier local rows, cosines)
        for s in range(0, len(members), block):
            e = min(s + block, len(members))
            sims = g[s:e] @ g[:e].T
            earlier = np.arange(e)[None, :] < np.arange(s, e)[:, None]
            rows, cols = np.nonzero((sims >= threshold) & earlier)  # row-major: rows sorted
            bounds = np.searchsorted(rows, np.arange(e - s + 1))
            for r in np.unique(rows).tolist():
                c = cols[bounds[r]:bounds[r + 1]]
                cand[s + r] = (c, sims[r, c])
        dropped: set[int] = set()
        for r in sorted(cand):
            c, v = cand[r]
            alive = np.array([j not in dropped for j in c.tolist()], dtype=bool)
            if alive.any():
                c, v = c[alive], v[alive]
                best = int(np.argmax(v))  # first maximum: the earliest of equally similar rows
                dropped.add(r)
                out[int(members[r])] = (int(members[c[best]]), float(v[best]))
    return out


def greedy_near_duplicates(ci: np.ndarray, cj: np.ndarray, n: int, similarity: Callable[[int, int], float],
                           threshold: float, done: Callable[[int], Any] | None = None
                           ) -> tuple[list[tuple[int, int, float]], int]:
    """Keep-first over LSH candidate pairs (ci ascending): each row u that is still kept removes its candidates
    v (not removed yet) whose similarity reaches the threshold. Returns ([(u, v, similarity)], pairs checked);
    `done(u)` is called when u's candidates are finished (to free what was loaded for u)."""
    bounds = np.searchsorted(ci, np.arange(n + 1))
    removed: set[int] = set()
    found: list[tuple[int, int, float]] = []
    checked = 0
    for u in np.unique(ci).tolist():
        if u in removed:
            continue
        for v in cj[bounds[u]:bounds[u + 1]].tolist():
            if v in removed:
                continue
            checked += 1
            sim = similarity(u, v)
            if sim >= threshold:
                removed.add(v)
                found.append((u, v, sim))
        if done is not None:
            done(u)
    return found, checked


def dedup_records(records: Sequence[dict[str, Any]], config: DedupConfig | dict | None = None,
                  chunk_size: int = 8192, *, cache_dir: Any = None) -> StepResult:
    """Keep one record per duplicate cluster; meta.dedup_cluster = id of the kept representative.

    With semantic_threshold, the records left by exact + MinHash dedup are embedded (embed.py, cached in
    cache_dir, default ~/.cache/sftlab/embeddings) and cosine near-duplicates removed (semantic_duplicates)."""
    cfg = config if isinstance(config, DedupConfig) else parse_config(DedupConfig, "dedup", config)
    order = _priority(records, cfg)
    feats = _features([field_text(records[i], cfg.field) for i in order], cfg, chunk_size)
    rep_of: dict[int, tuple[int, str, float]] = {}  # position in order -> (rep position, reason, similarity)
    first_by_key: dict[str, int] = {}
    uniq: list[int] = []  # positions of the first of each exact group that has tokens
    uniq_rows: list[int] = []  # their rows in the concatenated signature matrix
    pos = row = 0
    for keys, nonempty, _f, _o, _s in feats:
        for k, ne in zip(keys, nonempty, strict=True):
            if k in first_by_key:
                rep_of[pos] = (first_by_key[k], "exact_duplicate", 1.0)
            else:
                first_by_key[k] = pos
                if ne and cfg.mode == "near":
                    uniq.append(pos)
                    uniq_rows.append(row)
            pos += 1
            row += ne
    n_candidates = n_verified = 0
    if cfg.mode == "near" and uniq:
        flat = np.concatenate([f[2] for f in feats])
        shift = np.cumsum([0] + [len(f[2]) for f in feats[:-1]])
        off = np.concatenate([f[3][:-1] + s for f, s in zip(feats, shift, strict=True)] + [[len(flat)]])
        sig = np.concatenate([f[4] for f in feats])[uniq_rows]
        off_start, off_end = off[uniq_rows], off[np.asarray(uniq_rows) + 1]
        ci, cj = lsh_candidates(sig, lsh_bands(cfg.threshold, cfg.num_perm))
        sets: dict[int, set[int]] = {}

        def shingle_set(u: int) -> set[int]:
            if u not in sets:
                sets[u] = set(flat[off_start[u]:off_end[u]].tolist())
            return sets[u]

        def similarity(u: int, v: int) -> float:
            if not cfg.verify:
                return float(np.mean(sig[u] == sig[v]))
            a, b = shingle_set(u), shingle_set(v)
            return len(a & b) / len(a | b)

        found, n_candidates = greedy_near_duplicates(ci, cj, len(uniq), similarity, cfg.threshold,
                                                     done=lambda u: sets.pop(u, None))
        n_verified = len(found)
        for u, v, sim in found:
            rep_of[uniq[v]] = (uniq[u], "near_duplicate", round(sim, 4))

    n_semantic = 0
    if cfg.semantic_threshold is not None:
        alive = [p for p in range(len(order)) if p not in rep_of]
        emb = embed_texts([field_text(records[order[p]], cfg.field) for p in alive], cfg.embedding_model,
                          cache_dir=cache_dir or DEFAULT_CACHE)
        if alive:
            for a, (b, cos) in semantic_duplicates(emb, cfg.semantic_threshold, cfg.semantic_group_size,
                                                   cfg.seed).items():
                rep_of[alive[a]] = (alive[b], "semantic_duplicate", round(cos, 4))
                n_semantic += 1

    def final_rep(pos: int) -> int:
        while pos in rep_of:
            pos = rep_of[pos][0]
        return pos

    cluster = {}
    dropped = []
    for pos, i in enumerate(order):
        root = final_rep(pos)
        cluster[i] = records[order[root]]["id"]
        if pos in rep_of:
            rep, reason, sim = rep_of[pos]
            score = {"cosine": sim} if reason == "semantic_duplicate" else {"similarity": sim}
            dropped.append((i, drop(records[i], "dedup", reason, duplicate_of=records[order[rep]]["id"],
                                    cluster=cluster[i], **score)))
    dropped_idx = {i for i, _ in dropped}
    kept = [{**r, "meta": {**(r.get("meta") or {}), "dedup_cluster": cluster[i]}}
            for i, r in enumerate(records) if i not in dropped_idx]
    return StepResult("dedup", kept, [d for _, d in sorted(dropped, key=lambda x: x[0])],
                      info={"candidate_pairs": n_candidates, "near_pairs": n_verified,
                            "semantic_duplicates": n_semantic})


def can_stream(cfg: DedupConfig) -> bool:
    """Exact dedup keeping the first of each group needs only the keys seen so far, so it streams in one
    pass; every other dedup takes passes (dedup_in_passes)."""
    return cfg.mode == "exact" and cfg.keep == "first" and cfg.semantic_threshold is None


def dedup_exact_stream(chunks: Iterable[Sequence[dict[str, Any]]], config: DedupConfig | dict | None = None
                       ) -> Iterator[StepResult]:
    """dedup_records for mode=exact, keep=first, one chunk at a time with the same kept and dropped rows.

    The only state is {16-byte key digest: id of the kept record} for the distinct texts seen so far."""
    cfg = config if isinstance(config, DedupConfig) else parse_config(DedupConfig, "dedup", config)
    if not can_stream(cfg):
        raise UserError("dedup: only mode=exact with keep=first and no semantic_threshold streams")
    first_id: dict[bytes, str] = {}
    for chunk in chunks:
        th, lens = token_hashes([field_text(r, cfg.field) for r in chunk])
        ends = np.cumsum(lens).tolist()
        kept, dropped = [], []
        for rec, end, n in zip(chunk, ends, lens.tolist(), strict=True):
            key = hashlib.blake2b(th[end - n:end].tobytes(), digest_size=16).digest()
            rep = first_id.get(key)
            if rep is None:
                first_id[key] = rec["id"]
                kept.append({**rec, "meta": {**(rec.get("meta") or {}), "dedup_cluster": rec["id"]}})
            else:
                dropped.append(drop(rec, "dedup", "exact_duplicate", duplicate_of=rep, cluster=rep, similarity=1.0))
        yield StepResult("dedup", kept, dropped)
    yield StepResult("dedup", [], [], info={"candidate_pairs": 0, "near_pairs": 0, "semantic_duplicates": 0})


def candidate_shingles(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], wanted: np.ndarray,
                       field: str, ngram: int) -> dict[int, np.ndarray]:
    """Sorted unique shingle hashes of the `field` texts of the records at input positions `wanted` (sorted),
    re-read from the input: only the candidate rows of LSH are held, 8 bytes per distinct shingle."""
    out: dict[int, np.ndarray] = {}
    start = 0
    for chunk in read_chunks():
        lo, hi = np.searchsorted(wanted, [start, start + len(chunk)])
        pos = wanted[lo:hi].tolist()
        if pos:
            th, lens = token_hashes([field_text(chunk[p - start], field) for p in pos])
            flat, off = shingle_hashes(th, lens, ngram)
            for k, p in enumerate(pos):
                out[p] = np.unique(flat[off[k]:off[k + 1]])
        start += len(chunk)
    return out


def _take_rows(parts: list[np.ndarray], at: np.ndarray) -> np.ndarray:
    """Rows `at` of the parts stacked, as one matrix in that order; each part is freed (popped from `parts`)
    once copied, so the signatures are never held twice."""
    out = np.empty((len(at), parts[0].shape[1]), dtype=parts[0].dtype)
    order = np.argsort(at, kind="stable")
    sorted_at = at[order]
    start = 0
    while parts:
        part = parts.pop(0)
        lo, hi = np.searchsorted(sorted_at, [start, start + len(part)])
        out[order[lo:hi]] = part[sorted_at[lo:hi] - start]
        start += len(part)
    return out


def _semantic_pass(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], cfg: DedupConfig,
                   rep_of: dict[int, tuple[int, str, float]], n: int, scores: list[float] | None,
                   cache_dir: Any) -> int:
    """Adds semantic duplicates to rep_of and returns how many: the survivors are embedded chunk by chunk as
    they are read again, then searched in priority order (semantic_duplicates); only their rows are held."""
    alive = np.asarray([p for p in range(n) if p not in rep_of], dtype=np.int64)  # input order
    parts, start = [], 0
    for chunk in read_chunks():
        lo, hi = np.searchsorted(alive, [start, start + len(chunk)])
        texts = [field_text(chunk[p - start], cfg.field) for p in alive[lo:hi].tolist()]
        if texts:
            parts.append(embed_texts(texts, cfg.embedding_model, cache_dir=cache_dir or DEFAULT_CACHE))
        start += len(chunk)
    if not parts:
        return 0
    emb = np.concatenate(parts)
    if scores is not None:  # priority order: highest score first, ties by input position
        order = np.asarray(sorted(range(len(alive)), key=lambda k: (-scores[alive[k]], alive[k])), dtype=np.int64)
        alive, emb = alive[order], emb[order]
    found = semantic_duplicates(emb, cfg.semantic_threshold, cfg.semantic_group_size, cfg.seed)
    for a, (b, cos) in found.items():
        rep_of[int(alive[a])] = (int(alive[b]), "semantic_duplicate", round(cos, 4))
    return len(found)


def dedup_in_passes(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]],
                    config: DedupConfig | dict | None = None, *, cache_dir: Any = None) -> Iterator[StepResult]:
    """dedup_records in passes over the input, with the same kept and dropped rows.

    read_chunks() must yield the same chunks each call. Pass 1 keeps only compact state per record: its id,
    its exact group, (keep=score) its score and, for a record that is the best of its exact group when it is
    read, a uint32 MinHash signature row. The best of each group is then known; LSH banding runs on their
    rows in priority order (input order, or highest score first). Pass 2 (near, with verify) re-reads only
    the candidate rows for their exact shingle Jaccard. With semantic_threshold, another pass embeds the
    survivors (cache_dir as in dedup_records). The last pass yields each chunk's kept and dropped rows, then
    dedup_records' info (pair counts)."""
    cfg = config if isinstance(config, DedupConfig) else parse_config(DedupConfig, "dedup", config)
    by_score = cfg.keep == "score"
    if by_score and not cfg.score_key:
        raise UserError("dedup: keep='score' needs score_key (the meta field to rank by, higher is kept)")
    near = cfg.mode == "near"
    ids: list[str] = []
    scores: list[float] = []
    group = array("q")  # per record: its exact group
    best = array("q")  # per exact group: the position of its best record so far (first, or highest score)
    group_of_key: dict[bytes, int] = {}
    sig_pos = array("q")  # positions whose signature rows are kept (rows of sig_parts), ascending
    sig_parts: list[np.ndarray] = []
    n_candidates = n_near = n_semantic = 0
    for chunk in read_chunks():
        th, lens = token_hashes([field_text(r, cfg.field) for r in chunk])
        rows = []  # rows of this chunk's tokenised texts that are the best of their group when read
        row = 0
        for rec, end, n in zip(chunk, np.cumsum(lens).tolist(), lens.tolist(), strict=True):
            pos = len(ids)
            ids.append(rec["id"])
            if by_score:
                scores.append(_score(rec, pos, cfg.score_key))
            key = hashlib.blake2b(th[end - n:end].tobytes(), digest_size=16).digest()
            g = group_of_key.setdefault(key, len(best))
            if g == len(best):
                best.append(pos)
            elif by_score and scores[pos] > scores[best[g]]:  # ties keep the earlier record
                best[g] = pos
            group.append(g)
            if near and n and best[g] == pos:
                sig_pos.append(pos)
                rows.append(row)
            row += n > 0
        if rows:
            sig_parts.append(signatures(th, lens[lens > 0], cfg.ngram, cfg.num_perm, cfg.seed)[2][rows])
    del group_of_key
    rep_of: dict[int, tuple[int, str, float]] = {}  # input position -> (rep position, reason, similarity)
    for pos, g in enumerate(group):
        if best[g] != pos:
            rep_of[pos] = (best[g], "exact_duplicate", 1.0)
    del group
    if sig_parts:
        with_sig = np.frombuffer(sig_pos, dtype=np.int64)
        uniq = np.asarray(best, dtype=np.int64)
        uniq = uniq[np.isin(uniq, with_sig, assume_unique=True)]  # the best of each group with tokens
        if by_score:
            uniq = np.asarray(sorted(uniq.tolist(), key=lambda p: (-scores[p], p)), dtype=np.int64)
        sig = _take_rows(sig_parts, np.searchsorted(with_sig, uniq))  # their rows, in priority order
        ci, cj = lsh_candidates(sig, lsh_bands(cfg.threshold, cfg.num_perm))
        if cfg.verify:
            del sig
        uniq_list = uniq.tolist()
        shingles = (candidate_shingles(read_chunks, np.unique(uniq[np.concatenate([ci, cj])]), cfg.field,
                                       cfg.ngram) if cfg.verify and len(ci) else {})

        def similarity(u: int, v: int) -> float:
            if not cfg.verify:
                return float(np.mean(sig[u] == sig[v]))
            a, b = shingles[uniq_list[u]], shingles[uniq_list[v]]
            inter = len(np.intersect1d(a, b, assume_unique=True))
            return inter / (len(a) + len(b) - inter)

        found, n_candidates = greedy_near_duplicates(ci, cj, len(uniq_list), similarity, cfg.threshold,
                                                     done=lambda u: shingles.pop(uniq_list[u], None))
        n_near = len(found)
        for u, v, sim in found:
            rep_of[uniq_list[v]] = (uniq_list[u], "near_duplicate", round(sim, 4))
    if cfg.semantic_threshold is not None:
        n_semantic = _semantic_pass(read_chunks, cfg, rep_of, len(ids), scores if by_score else None, cache_dir)

    def final_rep(pos: int) -> int:
        while pos in rep_of:
            pos = rep_of[pos][0]
        return pos

    pos = 0
    for chunk in read_chunks():
        kept, dropped = [], []
        for rec in chunk:
            if pos in rep_of:
                rep, reason, sim = rep_of[pos]
                score = {"cosine": sim} if reason == "semantic_duplicate" else {"similarity": sim}
                dropped.append(drop(rec, "dedup", reason, duplicate_of=ids[rep], cluster=ids[final_rep(pos)],
                                    **score))
            else:
                kept.append({**rec, "meta": {**(rec.get("meta") or {}), "dedup_cluster": rec["id"]}})
            pos += 1
        yield StepResult("dedup", kept, dropped)
    yield StepResult("dedup", [], [], info={"candidate_pairs": n_candidates, "near_pairs": n_near,
                                            "semantic_duplicates": n_semantic})
