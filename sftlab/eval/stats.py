"""Statistics for eval summaries: bootstrap confidence intervals, paired differences, correlations."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sftlab.eval.length_control import SLOPE_PRIOR, fit_single

N_BOOT = 1000


def bootstrap_ci(values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05
                 ) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (resampling items)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def describe(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """{n, mean, ci_low, ci_high} — the one shape every score has in summary.json."""
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"n": len(values), "mean": float(np.mean(values)) if len(values) else float("nan"),
            "ci_low": lo, "ci_high": hi}


def group_scores(rows: Iterable[dict[str, Any]], field: str = "scores") -> dict[str, dict[str, list[float]]]:
    """{task_type: {name: [values]}} plus the "all" group, skipping missing (None) values."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for name, v in (row.get(field) or {}).items():
            if v is None or isinstance(v, (dict, list, str)):
                continue
            groups[row.get("task_type", "default")][name].append(float(v))
            groups["all"][name].append(float(v))
    return {t: dict(m) for t, m in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0]))}


def summarize(rows: list[dict[str, Any]], field: str = "scores") -> dict[str, dict[str, dict[str, float]]]:
    """metrics.<task_type>.<name>.{n, mean, ci_low, ci_high}."""
    return {t: {m: describe(v) for m, v in sorted(ms.items())} for t, ms in group_scores(rows, field).items()}


def paired_diff(a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Mean of b - a over paired items with a bootstrap CI; significant when the CI excludes 0."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return {"n": len(d), "diff": float(d.mean()) if len(d) else float("nan"), "ci_low": lo, "ci_high": hi,
            "significant": bool(len(d) > 1 and (lo > 0 or hi < 0))}


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation, None when undefined (fewer than 3 points or a constant series)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def length_controlled_win_rate(outcomes: Sequence[float], len_diff: Sequence[float], *,
                               slope_prior: float = SLOPE_PRIOR) -> float | None:
    """Win rate at equal length for one run (ties count half): σ(θ) of P(win) = σ(θ + φ·tanh(Δ/sd(Δ))), Δ = model
    minus baseline reply length in characters, with a zero-centred prior on φ of precision slope_prior·n
    (sftlab/eval/length_control.py says why). None for fewer than 3 items."""
    return fit_single(outcomes, len_diff, slope_prior=slope_prior)["lc_win_rate"]
