"""Length-controlled win rates against AlpacaEval 2's published ones (shared subset: 15 models, 805 instructions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sftlab.eval.length_control import fit_shared_baseline, length_controlled_summary
from sftlab.eval.stats import length_controlled_win_rate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from lc_check import figures, joint, load_runs, per_run  # noqa: E402


@pytest.fixture(scope="module")
def runs(alpaca_eval_lc):
    return load_runs(alpaca_eval_lc)


def _holds(f: dict[str, float]) -> None:
    assert f["spearman"] >= 0.97
    assert f["mean_abs_delta"] <= 3.0
    assert f["max_gain"] <= 15.0  # no model gains more than 15 points over its raw win rate


def test_per_run_lc_tracks_the_published_one(runs):
    f = figures(runs, per_run(runs))
    _holds(f)
    assert f["mean_abs_delta"] < 1.5  # measured 1.04 (tools/lc_check.py)


def test_joint_shared_baseline_lc_tracks_the_published_one(runs):
    f = figures(runs, joint(runs))
    _holds(f)
    assert f["spearman"] > 0.99 and f["mean_abs_delta"] < 1.0  # measured 0.993 / 0.60


def test_joint_fit_on_two_runs_stays_close(runs):
    pair = {m: runs[m] for m in ("gpt35_turbo_instruct", "FuseChat-Llama-3.2-3B-Instruct")}
    lc, single = joint(pair), per_run(pair)
    for m, r in pair.items():  # with only two runs the difficulty term is kept small: no worse than per run
        assert abs(lc[m] - r["lc"]) <= abs(single[m] - r["lc"]) + 0.5


def test_raw_win_rate_of_the_data_is_the_published_one(runs):
    for r in runs.values():  # the data is read right: preference − 1 averages to AlpacaEval's win rate
        assert 100 * r["outcomes"].mean() == pytest.approx(r["wr"], abs=1e-3)


def test_a_model_that_is_always_shorter_is_flagged_and_not_inflated():
    """Quality and length independent, the model is shorter on 95% of the items and the judge has no length bias:
    the controlled rate stays near the raw one, and says it is an extrapolation."""
    rng = np.random.default_rng(0)
    n = 800
    base_len = rng.lognormal(7.3, 0.6, n)
    len_diff = np.where(rng.random(n) < 0.05, 200.0, -0.8 * base_len)
    # harder items get longer baseline answers: the confound that a free length slope mistakes for length
    difficulty = (np.log(base_len) - 7.3) / 0.6
    outcomes = (rng.random(n) < 1 / (1 + np.exp(2.5 + 1.2 * difficulty))).astype(float)
    s = length_controlled_summary(outcomes, len_diff)
    assert s["lc_extrapolated"] is True and s["longer_share"] == pytest.approx(0.05, abs=0.02)
    gain = s["lc_win_rate"] - outcomes.mean()
    free = length_controlled_win_rate(outcomes, len_diff, slope_prior=1e-7) - outcomes.mean()  # no prior
    assert gain < 0.08 and gain < 0.5 * free  # measured +6.9 points vs +17.5 without the prior
    assert "baseline's length" in s["lc_meaning"]


def test_pure_length_bias_is_removed():
    """Equal quality (θ = 0), a judge that prefers the longer reply: the raw rate follows the lengths, the
    controlled one moves back toward 1/2 and the joint fit over runs of different lengths gets closer still."""
    rng = np.random.default_rng(1)
    n, runs = 800, {}
    for name, shift in (("short", -600.0), ("mixed", 0.0), ("long", 500.0)):
        d = rng.normal(shift, 700.0, n)
        p = 1 / (1 + np.exp(-1.5 * np.tanh(d / d.std())))
        runs[name] = (np.arange(n), (rng.random(n) < p).astype(float), d)
    fit = fit_shared_baseline(runs)
    for name, (_, y, d) in runs.items():
        raw, single, shared = y.mean(), length_controlled_win_rate(y, d), fit["runs"][name]["lc_win_rate"]
        assert abs(single - 0.5) <= abs(raw - 0.5) + 0.02
        assert abs(shared - 0.5) < 0.06
    assert fit["shared_length_slope"] > 0.8


def test_ties_count_half_and_degenerate_inputs():
    assert length_controlled_win_rate([0.5, 0.5, 0.5, 0.5], [10, -10, 5, -5]) == 0.5
    assert length_controlled_win_rate([1, 0], [1, 2]) is None  # fewer than 3 items
    s = length_controlled_summary([1.0, 0.0, 0.5, 1.0], [100, -100, 0, 50])
    assert s["lc_extrapolated"] is False and s["longer_share"] == 0.5


def _pairwise_dir(path: Path, runs_entry: tuple, baseline: dict) -> Path:
    """An eval dir as `sftlab eval` writes it after a pairwise judge: summary.json and predictions.jsonl."""
    ids, outcomes, len_diff = runs_entry
    path.mkdir()
    (path / "summary.json").write_text(json.dumps({"version": 1, "n": len(ids), "metrics": {},
                                                   "judge": {"mode": "pairwise", "scores": {}}}))
    rows = [{"id": i, "task_type": "t", "reply": "x" * max(1, int(len(baseline[i]) + d)),
             "baseline_reply": baseline[i], "judge_scores": {"win": y}}
            for i, y, d in zip(ids, outcomes, len_diff, strict=True)]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_fits_the_runs_that_share_a_baseline_jointly(runs, tmp_path, capsys):
    from sftlab.cli import main

    chosen = ("claude-instant-1.2", "jina-chat", "FuseChat-Llama-3.2-3B-Instruct")
    rng = np.random.default_rng(0)
    baseline = {f"i{k}": "b" * int(rng.integers(300, 3000)) for k in range(805)}
    dirs = []
    for k, m in enumerate(chosen):
        r = runs[m]
        keep = [j for j, i in enumerate(r["ids"]) if f"i{i}" in baseline]
        entry = ([f"i{r['ids'][j]}" for j in keep], [r["outcomes"][j] for j in keep], [r["len_diff"][j] for j in keep])
        dirs.append(_pairwise_dir(tmp_path / f"run{k}", entry, baseline))
    main(["eval", "compare", str(dirs[0]), str(dirs[1]), "--with", str(dirs[2])])
    out = capsys.readouterr().out
    assert "length-controlled win rate (joint fit, shared baseline" in out and "extrapolated: longer on" in out
    html = (dirs[1] / "compare.html").read_text()
    assert "Length-controlled win rate (shared baseline)" in html and str(dirs[2]) in html
    # a run judged against other baseline replies is not mixed into the fit
    other = {i: b + "!" for i, b in baseline.items()}
    odd = _pairwise_dir(tmp_path / "odd", ([f"i{k}" for k in range(10)], [1.0] * 5 + [0.0] * 5, [0.0] * 10), other)
    main(["eval", "compare", str(dirs[0]), str(odd)])
    assert "judged against another baseline" in capsys.readouterr().out
