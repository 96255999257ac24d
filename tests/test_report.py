"""The HTML run report: content on a synthetic run dir, CLI errors, and a headless-browser screenshot."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sftlab.errors import UserError
from sftlab.report import write_report

CHANNELS = ["math", "math/add", "code", "code/python", "chat", "@eot"]
CHROMIUM = Path("/usr/bin/chromium")


def make_run_dir(run: Path, steps: int = 120, eval_every: int = 20, with_results: bool = True) -> Path:
    """A run directory shaped like what the training loop writes (metrics, config, data summary)."""
    rng = random.Random(0)
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(1, steps + 1):
        base = 2.5 * math.exp(-s / 40) + 0.4
        rec = {"step": s, "epoch": s / steps, "loss": base + rng.gauss(0, 0.05), "grad_norm": 1 + rng.random(),
               "lr": 2e-5 * min(1.0, s / 10), "supervised_tokens": 900, "tokens": 2048,
               "tokens_per_s": 5000 + rng.gauss(0, 200), "padding_ratio": 0.2 + 0.05 * rng.random()}
        for i, ch in enumerate(CHANNELS):
            rec[f"loss/{ch}"] = base * (0.6 + 0.2 * i) + rng.gauss(0, 0.08)
            rec[f"tokens/{ch}"] = 100 + i
        lines.append(rec)
        if s % eval_every == 0:
            ev = {"step": s, "eval_loss": base + 0.1, "eval_held_out_loss": base + 0.3}
            for i, ch in enumerate(CHANNELS):
                ev[f"eval_loss/{ch}"] = base * (0.65 + 0.2 * i)
            lines.append(ev)
    lines.append({"step": 77, "alarm": "grad_spike", "message": "grad norm 40 is > 10x the median <check>"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 12',
                                       encoding="utf-8")  # a partial last line, as in a live run
    (run / "config.yaml").write_text("model:\n  name_or_path: tiny\ntrain:\n  learning_rate: 2.0e-05\n",
                                     encoding="utf-8")
    summary = {split: {"samples_per_task": {"math/add": 40 * k, "code/python": 30 * k, "chat": 20 * k},
                       "tokens_per_task": {"math/add": 4000 * k, "code/python": 6000 * k, "chat": 3000 * k},
                       "lengths": [rng.randint(20, 400) for _ in range(90 * k)], "supervised_tokens": 5000 * k}
               for split, k in (("train", 4), ("eval", 1))}
    (run / "data_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    if with_results:
        (run / "eval_results.json").write_text(json.dumps(
            {"math/add": {"before": 0.1, "after": 0.8}, "code/python": {"before": 0.0, "after": 0.5},
             "chat": {"before": 0.2, "after": 0.3}}), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def report_path(tmp_path_factory) -> Path:
    """One report of the synthetic run, shared by the content and the screenshot tests (matplotlib is slow)."""
    run = make_run_dir(tmp_path_factory.mktemp("report") / "run")
    path = write_report(run)
    assert path == run / "report.html"
    return path


def test_report_sections_plots_and_alt_texts(report_path):
    path = report_path
    page = path.read_text(encoding="utf-8")
    for title in ("Train and eval loss (total)", "Train loss per channel", "Eval loss per channel",
                  "Learning rate", "Gradient norm (before clipping)", "Throughput (tokens/s)", "Padding ratio",
                  "Samples per task_type", "Tokens per task_type", "Sample length (tokens)",
                  "Exact-match accuracy per task_type (before vs after)"):
        assert f"<figcaption>{html.escape(title)}" in page, title
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', page)
    assert len(imgs) == 11
    for b64, alt in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(alt) > 30
    # channel legend: every channel named in the per-channel plot's alt text
    per_channel_alt = next(alt for _, alt in imgs if "train loss per channel" in alt)
    for ch in CHANNELS:
        assert ch in per_channel_alt
    assert "held_out" in page  # the second eval set is found
    # alarm table (escaped), config, data table, eval results table, the partial-line note
    assert "grad_spike" in page and "&lt;check&gt;" in page
    assert "name_or_path: tiny" in page
    assert "<td>code/python</td>" in page
    assert "unreadable line(s)" in page
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_without_optional_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4}) + "\n"
                                               for s in range(1, 20)))
    page = write_report(run).read_text()
    assert "Train and eval loss (total)" in page and "Learning rate" in page
    assert "Exact-match accuracy" not in page and "Samples per task_type" not in page
    assert "No alarms were raised" in page


def test_report_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run data"):
        write_report(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="holds no run data"):
        write_report(tmp_path / "empty")


def test_cli_report(tmp_path, capsys):
    from sftlab.cli import main

    run = make_run_dir(tmp_path / "run", steps=30, with_results=False)
    main(["report", str(run)])
    out = capsys.readouterr().out.strip()
    assert out == str(run / "report.html") and Path(out).exists()
    (tmp_path / "out").mkdir()  # -o DIR writes DIR/report.html (was 'Is a directory', and a stray out.tmp)
    main(["report", str(run), "-o", str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.html")
    assert (tmp_path / "out" / "report.html").is_file() and not (tmp_path / "out.tmp").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "empty")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "holds no run data" in err and "\n" not in err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless chromium not installed (/usr/bin/chromium)")
def test_report_renders_in_headless_chromium(report_path, tmp_path):
    from matplotlib.image import imread

    page = report_path
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if os.environ.get("SFTLAB_SCREENSHOT_OUT"):  # keep the screenshot for a human to look at
        shutil.copy(shot, os.environ["SFTLAB_SCREENSHOT_OUT"])
    img = imread(shot)
    assert img.shape[0] >= 2900 and img.shape[1] >= 1100
    rgb = (img[..., :3] * 255).astype("uint8").reshape(-1, 3)
    colours = {tuple(p) for p in rgb[:: 7]}
    assert len(colours) > 500  # plots rendered (a blank or text-only page has a handful of colours)
    non_white = (rgb.min(axis=1) < 245).mean()
    assert non_white > 0.05
