"""stats on real alpaca data: stats.json numbers, stats.html with embedded plots, and a headless render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sftlab.curate.files import load_records
from sftlab.curate.stats import write_stats

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def alpaca_stats(real_data_dir, tmp_path_factory):
    records = load_records(real_data_dir / "alpaca_en_demo.json")
    for i, r in enumerate(records):  # two task types so the per-task plots have something to separate
        r["task_type"] = "with_input" if len(r["messages"][0]["content"].splitlines()) > 1 else "instruction"
        r["_i"] = i
    # stand-in embeddings: two shifted Gaussian blobs by task type (the real model is exercised in test_curate_embed)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(records), 16)) + np.array([[3.0 if r["task_type"] == "with_input" else 0.0]
                                                          for r in records])
    out = tmp_path_factory.mktemp("stats")
    stats = write_stats(records, out, emb=emb.astype(np.float32))
    return records, stats, out


def test_stats_numbers(alpaca_stats):
    records, stats, out = alpaca_stats
    saved = json.loads((out / "stats.json").read_text())
    assert saved["records"] == len(records) == 999
    assert sum(saved["task_types"].values()) == 999 and len(saved["task_types"]) == 2
    words = sorted(len(re.findall(r"\w+", r["messages"][1]["content"])) for r in records)
    assert saved["answer_len"]["p50"] == pytest.approx(np.percentile(words, 50), rel=0.05)
    assert saved["assistant_turns"] == {"1": 999} and saved["scripts"]["latin"] >= 990
    assert saved["top_answer_tokens"][0][0] == "the"
    d = saved["diversity"]
    assert sum(d["cluster_sizes"]) == 999 and 0 < d["cluster_entropy_normalised"] <= 1
    assert 0 < d["mean_pairwise_cosine_distance"] < 2


def test_stats_html_is_self_contained_with_plots(alpaca_stats):
    _, _, out = alpaca_stats
    page = (out / "stats.html").read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) == 4  # prompt + answer length histograms, task_type bars, PCA
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page
    assert "embedding PCA by task_type" in page and "with_input" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
def test_stats_html_renders_in_headless_browser(alpaca_stats, tmp_path):
    _, _, out = alpaca_stats
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                    f"--screenshot={shot}", "--window-size=1000,2400", (out / "stats.html").as_uri()],
                   check=False, capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    assert shot.exists(), "chromium wrote no screenshot"
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    gray = rgb.mean(2)
    assert gray.shape[0] > 1000 and gray.std() > 10  # not a blank page
    assert (gray < 128).mean() > 0.01  # text and table lines
    colourful = (rgb.max(2) - rgb.min(2)) > 60  # tables and text are grey; only the plots are coloured
    assert colourful.mean() > 0.002, "no plot pixels rendered"


def test_stats_in_chunks_and_cli_match_the_list(real_data_dir, tmp_path, capsys, monkeypatch, tiny_tokenizer):
    """StatsTally over chunks writes the same stats.json and stats.html (plots included) as the whole list, and
    `data stats` never loads the whole list."""
    from sftlab.cli import main
    from sftlab.curate import files as curate_io
    from sftlab.curate.stats import StatsTally, write_stats_report
    from sftlab.data.records import write_jsonl

    records = load_records(real_data_dir / "glaive_toolcall_en_demo.json")
    for i, r in enumerate(records):
        r["task_type"] = ("tool", "chat", "other")[i % 3]
    emb = np.random.default_rng(0).normal(size=(len(records), 8)).astype(np.float32)
    for tok in (None, tiny_tokenizer):
        write_stats(records, tmp_path / "list", tokenizer=tok, emb=emb)
        tally = StatsTally(tok)
        for s in range(0, len(records), 7):
            tally.add(records[s:s + 7])
        write_stats_report(tally.summary(emb), tmp_path / "chunks", emb)
        for name in ("stats.json", "stats.html"):
            assert (tmp_path / "chunks" / name).read_bytes() == (tmp_path / "list" / name).read_bytes()
    path = tmp_path / "in.jsonl"
    write_jsonl(records, path)
    write_stats(load_records(path), tmp_path / "list")
    monkeypatch.setattr(curate_io, "load_records", None)
    main(["data", "stats", str(path), "-o", str(tmp_path / "cli"), "--no-embed"])
    assert f"stats: {len(records)} records, 3 task_types" in capsys.readouterr().out
    assert (tmp_path / "cli" / "stats.json").read_bytes() == (tmp_path / "list" / "stats.json").read_bytes()
