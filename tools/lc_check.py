"""Length-controlled win rates against AlpacaEval 2's published ones, on judge preferences in its release format.

    python tools/lc_check.py [annotations.json.gz] [--loo]

The file is ../shared/data/alpaca_eval_lc/annotations_subset.json.gz by default (README.md there). Prints per model
the raw and published numbers, sftlab's per-run estimate (stats.length_controlled_win_rate) and the joint
shared-baseline estimate (length_control.fit_shared_baseline over all models in the file), then for each estimator
the Spearman correlation with the published LC, mean and max |delta| and the largest gain over the raw win rate.
--loo: leave-one-model-out choice of the two tuned prior strengths (per-run slope, joint difficulty) and the
held-out error it gives.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from sftlab.eval.length_control import fit_shared_baseline
from sftlab.eval.stats import length_controlled_win_rate

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca_eval_lc" / "annotations_subset.json.gz"


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    """{model: {ids, outcomes (preference − 1), len_diff (model − baseline chars), lc, wr}}."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        models = json.load(f)["models"]
    runs = {}
    for name, m in models.items():
        rows = np.asarray(m["rows"], dtype=float)
        runs[name] = {"ids": rows[:, 0].astype(int), "outcomes": rows[:, 1] - 1, "len_diff": rows[:, 3] - rows[:, 2],
                      "lc": m["lc"], "wr": m["wr"]}
    return runs


def per_run(runs: dict[str, dict[str, Any]], **kw: Any) -> dict[str, float]:
    return {m: 100 * length_controlled_win_rate(r["outcomes"], r["len_diff"], **kw) for m, r in runs.items()}


def joint(runs: dict[str, dict[str, Any]], **kw: Any) -> dict[str, float]:
    fit = fit_shared_baseline({m: (r["ids"], r["outcomes"], r["len_diff"]) for m, r in runs.items()}, **kw)
    return {m: 100 * v["lc_win_rate"] for m, v in fit["runs"].items()}


def figures(runs: dict[str, dict[str, Any]], lc: dict[str, float]) -> dict[str, float]:
    """Spearman with the published LC, mean / max |LC − published|, max LC − raw gain (points)."""
    names = list(lc)
    ours, pub, raw = (np.array([f(m) for m in names]) for f in (lc.get, lambda m: runs[m]["lc"],
                                                                 lambda m: runs[m]["wr"]))
    return {"spearman": float(spearmanr(ours, pub)[0]), "mean_abs_delta": float(np.abs(ours - pub).mean()),
            "max_abs_delta": float(np.abs(ours - pub).max()), "max_gain": float((ours - raw).max())}


def leave_one_out(runs: dict[str, dict[str, Any]], grid: dict[float, dict[str, float]]) -> tuple[list[float], float]:
    """Per held-out model: the grid value that fits the other models best (mean |delta|), and its held-out error."""
    picks, errors = [], []
    for held in runs:
        rest = [m for m in runs if m != held]
        best = min(grid, key=lambda g: np.mean([abs(grid[g][m] - runs[m]["lc"]) for m in rest]))
        picks.append(best)
        errors.append(abs(grid[best][held] - runs[held]["lc"]))
    return picks, float(np.mean(errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--loo", action="store_true")
    args = ap.parse_args()
    runs = load_runs(args.path)
    single, shared = per_run(runs), joint(runs)
    print(f"{'model':34s} {'raw':>6s} {'pub LC':>7s} {'per-run':>8s} {'joint':>7s} {'longer':>7s}")
    for m, r in runs.items():
        print(f"{m:34s} {r['wr']:6.2f} {r['lc']:7.2f} {single[m]:8.2f} {shared[m]:7.2f} "
              f"{(r['len_diff'] > 0).mean():7.1%}")
    for name, lc in (("per-run", single), ("joint", shared)):
        f = figures(runs, lc)
        print(f"{name:8s} spearman {f['spearman']:.3f}  mean|d| {f['mean_abs_delta']:.2f}  "
              f"max|d| {f['max_abs_delta']:.2f}  max gain over raw {f['max_gain']:.2f}")
    if args.loo:
        slopes = {k: per_run(runs, slope_prior=k) for k in (0.005, 0.01, 0.02, 0.05, 0.1)}
        picks, err = leave_one_out(runs, slopes)
        print(f"per-run slope prior, leave-one-model-out: picks {sorted(set(picks))}, held-out mean|d| {err:.2f}")
        diffs = {c: joint(runs, difficulty_prior=c) for c in (15.0, 30.0, 60.0, 120.0)}
        picks, err = leave_one_out(runs, diffs)
        print(f"joint difficulty prior, leave-one-model-out: picks {sorted(set(picks))}, held-out mean|d| {err:.2f}")


if __name__ == "__main__":
    main()
