"""Length-controlled win rates: what a pairwise judge would prefer if the model's replies had the baseline's length.

The model form follows AlpacaEval 2's length-controlled GLM (Dubois et al. 2024, "Length-Controlled AlpacaEval"),
re-derived here, not copied. For run m and instruction i, with outcome y in [0, 1] (win 1, tie 1/2, loss 0) and
Δ = len(model reply) − len(baseline reply) in characters:

    P(win) = σ(θ_m + φ_m·tanh(Δ / sd_m(Δ)) + ψ_m·γ_i)

θ_m is the run's quality, φ_m the judge's length preference, γ_i the instruction's difficulty (shared by every run
judged against the same baseline) and ψ_m how much it matters for this run. The length-controlled win rate is the
prediction averaged over the run's items with the length term zeroed: mean_i σ(θ_m + ψ_m·γ_i).

Why the priors (every strength is a Gaussian prior, i.e. an L2 penalty on the log-likelihood summed over items):
- Length slope, centred on zero, precision SLOPE_PRIOR·n (n = the run's items). A free slope absorbs instruction
  difficulty: hard prompts get long baseline answers and lose, so a model that is short everywhere looks length-
  penalised and its σ(θ) at Δ = 0 is an extrapolation. That confound does not shrink with more items, so neither
  does the prior: the slope is shrunk by the same factor whatever the eval size.
- Several runs against one baseline share the judge, so their slopes are pooled: φ_m = φ̄ + δ_m, φ̄ with the
  per-run prior above, δ_m centred on zero with precision DEVIATION_PRIOR·n_m. Runs whose replies are sometimes
  longer than the baseline's then identify the slope for runs that are always shorter.
- Difficulty γ_i is told apart from the baseline's reply length only by how the candidates' lengths vary across
  runs on the same instruction; with few runs it would soak up the length effect. Its prior precision is
  DIFFICULTY_PRIOR / M (M = runs): the more runs share the baseline, the more of the item spread it may explain.
- ψ_m is centred on 1 with unit precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

SLOPE_PRIOR = 0.02  # length slope ~ N(0, 1 / (SLOPE_PRIOR · n))
DEVIATION_PRIOR = 0.1  # joint fit: φ_m − φ̄ ~ N(0, 1 / (DEVIATION_PRIOR · n_m))
DIFFICULTY_PRIOR = 60.0  # joint fit: γ_i ~ N(0, M / DIFFICULTY_PRIOR)
EXTRAPOLATION_SHARE = 0.10  # below this share of items with a longer model reply, Δ = 0 is an extrapolation

MEANING = ("lc_win_rate: the judge's win rate for the model if its replies had the baseline's length (ties count "
           "1/2): a logistic fit of each item's outcome on tanh(Δ/sd(Δ)), Δ = model minus baseline reply length in "
           "characters, with a zero-centred prior on the length slope (precision {k}·n), predicted at Δ = 0. "
           "lc_extrapolated: fewer than {share:.0%} of the items have a longer model reply, so Δ = 0 lies outside "
           "most of the data and the number leans on the prior.")


def length_feature(len_diff: Sequence[float]) -> np.ndarray:
    """tanh(Δ / sd(Δ)): bounded, so a few very long replies cannot dominate the slope."""
    d = np.asarray(len_diff, dtype=float)
    return np.tanh(d / (d.std() or 1.0))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def fit_single(outcomes: Sequence[float], len_diff: Sequence[float], *, slope_prior: float = SLOPE_PRIOR
               ) -> dict[str, Any]:
    """One run: σ(θ + φ·tanh(Δ/sd)) with φ ~ N(0, 1/(slope_prior·n)); the controlled rate is σ(θ)."""
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(len_diff, dtype=float)
    n = len(y)
    out: dict[str, Any] = {"n": n, "win_rate": float(y.mean()) if n else None,
                           "longer_share": float((d > 0).mean()) if n else None}
    out["lc_extrapolated"] = bool(n and out["longer_share"] < EXTRAPOLATION_SHARE)
    if n < 3 or y.min() == y.max():  # nothing to separate: every item won (or lost, or tied)
        return {**out, "lc_win_rate": out["win_rate"] if n >= 3 else None, "length_slope": None}
    x = length_feature(d)[:, None]
    # soft labels as two weighted rows per item (y as a win, 1 − y as a loss); sklearn leaves the intercept
    # unpenalised and its penalty is ½‖φ‖²/C, so C = 1/(slope_prior·n) is the prior above
    xs, ys, w = np.concatenate([x, x]), np.r_[np.ones(n), np.zeros(n)], np.r_[y, 1 - y]
    keep = w > 0
    fit = LogisticRegression(C=1.0 / (slope_prior * n)).fit(xs[keep], ys[keep], sample_weight=w[keep])
    return {**out, "lc_win_rate": float(_sigmoid(fit.intercept_[0])), "length_slope": float(fit.coef_[0, 0])}


def _design(runs: Mapping[str, tuple[Sequence[Any], Sequence[float], Sequence[float]]]) -> dict[str, np.ndarray]:
    """Long format over (run, item) pairs: run index, item index, outcome, length feature."""
    items = sorted({str(i) for ids, _, _ in runs.values() for i in ids})
    at = {v: k for k, v in enumerate(items)}
    run_ix, item_ix, y, x = [], [], [], []
    for m, (ids, outcomes, len_diff) in enumerate(runs.values()):
        run_ix.append(np.full(len(ids), m))
        item_ix.append(np.array([at[str(i)] for i in ids], dtype=int))
        y.append(np.asarray(outcomes, dtype=float))
        x.append(length_feature(len_diff))
    return {"run": np.concatenate(run_ix), "item": np.concatenate(item_ix), "y": np.concatenate(y),
            "x": np.concatenate(x), "n_items": np.array(len(items))}


def _joint_objective(w: np.ndarray, data: dict[str, np.ndarray], priors: dict[str, Any]
                     ) -> tuple[float, np.ndarray]:
    """Penalised negative log-likelihood of the joint GLM and its gradient; w = [θ, δ, ψ, γ, φ̄]."""
    run, item, y, x = data["run"], data["item"], data["y"], data["x"]
    m, n_items = priors["runs"], int(data["n_items"])
    th, dv, ps, g, pb = w[:m], w[m:2 * m], w[2 * m:3 * m], w[3 * m:3 * m + n_items], w[-1]
    z = th[run] + (pb + dv[run]) * x + ps[run] * g[item]
    nll = float(np.sum(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)))
    k_dev, k_bar, k_psi, k_g = priors["deviation"], priors["slope"], priors["psi"], priors["difficulty"]
    pen = 0.5 * (np.sum(k_dev * dv ** 2) + k_bar * pb ** 2 + k_psi * np.sum((ps - 1) ** 2) + k_g * np.sum(g ** 2))
    r = _sigmoid(z) - y  # d nll / d z
    g_slope = np.bincount(run, r * x, m)
    grad = np.concatenate([np.bincount(run, r, m), g_slope + k_dev * dv,
                           np.bincount(run, r * g[item], m) + k_psi * (ps - 1),
                           np.bincount(item, r * ps[run], n_items) + k_g * g, [g_slope.sum() + k_bar * pb]])
    return nll + pen, grad


def fit_shared_baseline(runs: Mapping[str, tuple[Sequence[Any], Sequence[float], Sequence[float]]], *,
                        slope_prior: float = SLOPE_PRIOR, deviation_prior: float = DEVIATION_PRIOR,
                        difficulty_prior: float = DIFFICULTY_PRIOR) -> dict[str, Any]:
    """Runs judged against the same baseline: {name: (item ids, outcomes, len_diff)} → one joint fit (module doc);
    per run the item-averaged prediction with the length term zeroed, its slope and extrapolation flag."""
    if not runs:
        return {"runs": {}}
    data = _design(runs)
    m, n_items = len(runs), int(data["n_items"])
    n_per_run = np.bincount(data["run"], minlength=m).astype(float)
    priors = {"runs": m, "deviation": deviation_prior * n_per_run, "slope": slope_prior * n_per_run.mean(),
              "psi": 1.0, "difficulty": difficulty_prior / m}
    w0 = np.zeros(3 * m + n_items + 1)
    w0[2 * m:3 * m] = 1.0
    res = minimize(_joint_objective, w0, args=(data, priors), jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000})
    w = res.x
    th, dv, ps, g, pb = w[:m], w[m:2 * m], w[2 * m:3 * m], w[3 * m:3 * m + n_items], w[-1]
    out: dict[str, Any] = {}
    for k, (name, (_ids, outcomes, len_diff)) in enumerate(runs.items()):
        mine = g[data["item"][data["run"] == k]]
        single = fit_single(outcomes, len_diff)
        out[name] = {"n": single["n"], "win_rate": single["win_rate"],
                     "lc_win_rate": float(_sigmoid(th[k] + ps[k] * mine).mean()) if len(mine) else None,
                     "length_slope": float(pb + dv[k]), "difficulty_weight": float(ps[k]),
                     "longer_share": single["longer_share"], "lc_extrapolated": single["lc_extrapolated"]}
    return {"runs": out, "shared_length_slope": float(pb), "items": n_items, "converged": bool(res.success),
            "priors": {"slope": slope_prior, "deviation": deviation_prior, "difficulty": difficulty_prior}}


def length_controlled_summary(outcomes: Sequence[float], len_diff: Sequence[float]) -> dict[str, Any]:
    """The pairwise summary's length-control fields: lc_win_rate, lc_extrapolated with longer_share, the fitted
    length slope and what the number means (summary.json carries the sentence)."""
    fit = fit_single(outcomes, len_diff)
    return {"lc_win_rate": fit["lc_win_rate"], "lc_extrapolated": fit["lc_extrapolated"],
            "longer_share": fit["longer_share"], "length_slope": fit["length_slope"],
            "lc_meaning": MEANING.format(k=SLOPE_PRIOR, share=EXTRAPOLATION_SHARE)}


def shared_baseline_from_rows(rows_by_run: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """The joint fit for eval dirs judged pairwise against the same baseline (`sftlab eval compare`), from their
    predictions rows; {"skipped": why} when they were not (no pairwise verdicts, or different baseline replies)."""
    runs: dict[str, tuple[list[Any], list[float], list[float]]] = {}
    baseline: dict[Any, str] = {}
    for name, rows in rows_by_run.items():
        ids, outcomes, len_diff = [], [], []
        for r in rows:
            win, base = (r.get("judge_scores") or {}).get("win"), r.get("baseline_reply")
            if win is None or base is None or r.get("reply") is None:
                continue
            if baseline.setdefault(r["id"], base) != base:
                return {"skipped": f"{name} was judged against another baseline (item {r['id']}): the joint "
                                   "length control needs one baseline shared by every run"}
            ids.append(r["id"])
            outcomes.append(float(win))
            len_diff.append(float(len(r["reply"]) - len(base)))
        if len(ids) < 3:
            return {"skipped": f"{name} has fewer than 3 pairwise verdicts against a baseline"}
        runs[name] = (ids, outcomes, len_diff)
    return fit_shared_baseline(runs)
