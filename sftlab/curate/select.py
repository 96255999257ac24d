"""`select kcenter | cluster`: diversity selection on embeddings (numpy / scikit-learn, seeded).

K-Center-Greedy (Gonzalez): repeatedly take the point farthest from the chosen centres. Its covering radius
is at most twice the optimum, it is deterministic for a seed, and it stops at k points or when every point
lies within `radius` of a centre. Cluster sampling: K-means, then n points per cluster (closest to the
centroid, or seeded random).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.scoring import chunks_with_rows
from sftlab.curate.step import StepResult, drop
from sftlab.errors import UserError


class KCenterConfig(StepConfig):
    """k centres, or the smallest set whose covering radius (cosine distance) is <= radius."""

    k: int | None = Field(None, ge=1)
    radius: float | None = Field(None, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _one(self) -> KCenterConfig:
        if self.k is None and self.radius is None:
            raise ValueError("give k or radius")
        return self


class ClusterConfig(StepConfig):
    """K-means with n_clusters, then per_cluster records from each."""

    n_clusters: int = Field(ge=1)
    per_cluster: int = Field(1, ge=1)
    pick: Literal["closest", "random"] = "closest"
    seed: int = 0
    band: Literal["all", "middle"] = "all"
    band_low: float = Field(0.25, ge=0, le=1)
    band_high: float = Field(0.75, ge=0, le=1)

    @model_validator(mode="after")
    def _band(self) -> ClusterConfig:
        if self.band_low >= self.band_high:
            raise ValueError("band_low must be < band_high")
        return self


def kcenter_greedy(emb: np.ndarray, k: int | None = None, radius: float | None = None,
                   seed: int = 0) -> tuple[list[int], float]:
    """Indices of the chosen centres (in pick order) and the final covering radius (Euclidean)."""
    n = emb.shape[0]
    if n == 0:
        return [], 0.0
    x = emb.astype(np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    dist = np.sqrt(np.maximum(sq + sq[first] - 2 * (x @ x[first]), 0))
    limit = n if k is None else min(k, n)
    while len(chosen) < limit:
        far = int(np.argmax(dist))
        if radius is not None and dist[far] <= radius:
            break
        chosen.append(far)
        dist = np.minimum(dist, np.sqrt(np.maximum(sq + sq[far] - 2 * (x @ x[far]), 0)))
    return chosen, float(dist.max())


def covering_radius(emb: np.ndarray, centres: Sequence[int]) -> float:
    """max over points of the distance to the nearest centre."""
    x = emb.astype(np.float64)
    c = x[list(centres)]
    d = np.sqrt(np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * (x @ c.T), 0))
    return float(d.min(1).max())


def _check(records: Sequence[dict[str, Any]], emb: np.ndarray) -> None:
    if emb.ndim != 2 or emb.shape[0] != len(records):
        raise UserError(f"select: {emb.shape[0] if emb.ndim else 0} embeddings for {len(records)} records")


def kcenter_ranks(emb: np.ndarray, config: KCenterConfig | dict | None = None) -> tuple[dict[int, int], float]:
    """{row: pick order} of the k-center set and its covering radius (Euclidean, on unit vectors)."""
    cfg = config if isinstance(config, KCenterConfig) else parse_config(KCenterConfig, "select kcenter", config)
    # unit vectors: Euclidean radius r <-> cosine distance r^2 / 2
    rad = None if cfg.radius is None else float(np.sqrt(2 * cfg.radius))
    chosen, r = kcenter_greedy(emb, cfg.k, rad, cfg.seed)
    return {i: n for n, i in enumerate(chosen)}, r


def _kcenter_result(records: Sequence[dict[str, Any]], rank: dict[int, int], start: int = 0) -> StepResult:
    kept, dropped = [], []
    for i, rec in enumerate(records, start):
        if i in rank:
            kept.append({**rec, "meta": {**(rec.get("meta") or {}), "kcenter_rank": rank[i]}})
        else:
            dropped.append(drop(rec, "select_kcenter", "not_selected"))
    return StepResult("select_kcenter", kept, dropped)


def kcenter_select(records: Sequence[dict[str, Any]], emb: np.ndarray,
                   config: KCenterConfig | dict | None = None) -> StepResult:
    """Keep the k-center set (input order kept); meta.kcenter_rank = pick order."""
    _check(records, emb)
    rank, r = kcenter_ranks(emb, config)
    res = _kcenter_result(records, rank)
    res.info = {"covering_radius": r, "selected": len(rank)}
    return res


def kcenter_select_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], emb: np.ndarray,
                          config: KCenterConfig | dict | None = None) -> Iterator[StepResult]:
    """kcenter_select on an input read again chunk by chunk: only the embeddings (one row per record, in input
    order) and the chosen set are held, not the records. The last result carries kcenter_select's info."""
    rank, r = kcenter_ranks(emb, config)
    for chunk, start in chunks_with_rows(read_chunks, len(emb)):
        yield _kcenter_result(chunk, rank, start)
    yield StepResult("select_kcenter", [], [], info={"covering_radius": r, "selected": len(rank)})


def cluster_choice(emb: np.ndarray, config: ClusterConfig | dict | None = None, *,
                   perplexity: np.ndarray | None = None) -> tuple[np.ndarray, set[int], set[int]]:
    """(cluster label per row, rows kept, rows outside the perplexity band): K-means, then per_cluster rows
    of each cluster (closest to the centroid or seeded random; band 'middle': only inside the band)."""
    from sklearn.cluster import KMeans  # lazy: scikit-learn takes seconds to import; only cluster selection

    cfg = config if isinstance(config, ClusterConfig) else parse_config(ClusterConfig, "select cluster", config)
    if cfg.band == "middle" and (perplexity is None or len(perplexity) != len(emb)):
        raise UserError("select cluster: band 'middle' needs one answer perplexity per record (--model)")
    n_clusters = min(cfg.n_clusters, len(emb))
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=cfg.seed).fit(emb.astype(np.float64))
    dist = np.linalg.norm(emb - km.cluster_centers_[km.labels_], axis=1)
    rng = np.random.default_rng(cfg.seed)
    keep: set[int] = set()
    outside: set[int] = set()
    for c in range(n_clusters):
        members = np.flatnonzero(km.labels_ == c)
        if cfg.band == "middle":
            p = perplexity[members]
            lo, hi = np.quantile(p, [cfg.band_low, cfg.band_high])  # linear interpolation
            inside = (p >= lo) & (p <= hi)
            if not inside.any():  # tiny clusters: no member inside, take the one nearest the band's middle
                inside[int(np.argmin(np.abs(p - (lo + hi) / 2)))] = True
            outside.update(members[~inside].tolist())
            members = members[inside]
        if cfg.pick == "closest":
            members = members[np.argsort(dist[members], kind="stable")]
        else:
            members = rng.permutation(members)
        keep.update(members[: cfg.per_cluster].tolist())
    return km.labels_, keep, outside


def _cluster_result(records: Sequence[dict[str, Any]], labels: np.ndarray, keep: set[int], outside: set[int],
                    perplexity: np.ndarray | None, start: int = 0) -> StepResult:
    kept, dropped = [], []
    for i, rec in enumerate(records, start):
        extra = {"cluster": int(labels[i])}
        if perplexity is not None:
            extra["perplexity"] = round(float(perplexity[i]), 6)
        if i in keep:
            kept.append({**rec, "meta": {**(rec.get("meta") or {}), **extra}})
        else:
            dropped.append(drop(rec, "select_cluster", "outside_band" if i in outside else "not_selected", **extra))
    return StepResult("select_cluster", kept, dropped)


def cluster_select(records: Sequence[dict[str, Any]], emb: np.ndarray,
                   config: ClusterConfig | dict | None = None, *, perplexity: np.ndarray | None = None) -> StepResult:
    """K-means (scikit-learn) then per_cluster records per cluster; meta.cluster = cluster id.

    band 'middle': only records whose answer perplexity (ifd.answer_perplexities) lies between the band_low and
    band_high quantiles of their cluster are sampled (neither the trivial nor the noisy ones); the others are
    dropped as outside_band, and meta.perplexity is kept."""
    cfg = config if isinstance(config, ClusterConfig) else parse_config(ClusterConfig, "select cluster", config)
    _check(records, emb)
    labels, keep, outside = cluster_choice(emb, cfg, perplexity=perplexity)
    res = _cluster_result(records, labels, keep, outside, perplexity if cfg.band == "middle" else None)
    res.info = {"clusters": min(cfg.n_clusters, len(records))}
    return res


def cluster_select_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], emb: np.ndarray,
                          config: ClusterConfig | dict | None = None, *, perplexity: np.ndarray | None = None
                          ) -> Iterator[StepResult]:
    """cluster_select on an input read again chunk by chunk: only the embeddings (and, band 'middle', the
    perplexities: ifd.answer_perplexities_of_chunks) are held. The last result carries the info."""
    cfg = config if isinstance(config, ClusterConfig) else parse_config(ClusterConfig, "select cluster", config)
    labels, keep, outside = cluster_choice(emb, cfg, perplexity=perplexity)
    shown = perplexity if cfg.band == "middle" else None
    for chunk, start in chunks_with_rows(read_chunks, len(emb)):
        yield _cluster_result(chunk, labels, keep, outside, shown, start)
    yield StepResult("select_cluster", [], [], info={"clusters": min(cfg.n_clusters, len(emb))})
