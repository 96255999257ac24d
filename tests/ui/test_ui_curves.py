"""Training curves for the browser: incremental reading of a metrics.jsonl being written, damaged lines, rewrites,
thinning that keeps spikes, and a 200k-line run that opens in under a second."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
from conftest import start_ui

from sftlab.ui.curves import MetricsIndex, thin
from sftlab.ui.workspace import Workspace


def line(step: int, **extra) -> str:
    return json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-3, "loss/math": 2.0 / step, **extra}) + "\n"


def test_reads_only_new_complete_lines_and_counts_damaged_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1) + line(2) + '{"step": 3, "lo')  # a run writing its third line right now
    idx = MetricsIndex(path)
    c = idx.curves()
    assert [p[0] for p in c["series"]["loss"]] == [1, 2] and not c["partial"]
    with open(path, "a") as f:  # the line ends, then a corrupt line, an alarm and an eval line
        f.write('ss": 0.3}\nnot json\n' + json.dumps({"step": 3, "alarm": "loss_spike", "message": "m"}) + "\n"
                + json.dumps({"step": 3, "eval_loss": 0.5, "eval_loss/math": 0.7}) + "\n")
    c = idx.curves()
    assert [p[0] for p in c["series"]["loss"]] == [1, 2, 3]
    assert c["series"]["eval_loss/math"] == [[3.0, 0.7]]
    assert len(idx.alarms) == 1 and idx.last_eval["eval_loss"] == 0.5
    assert idx.problems() == ["1 unreadable line(s) in metrics.jsonl skipped (line 4): not a JSON object with a "
                              "numeric 'step'"]


def test_a_rewritten_file_is_read_again(tmp_path):
    """A resumed run rewrites metrics.jsonl without the interrupted tail (temp file + rename)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(line(s) for s in range(1, 6)))
    idx = MetricsIndex(path)
    assert len(idx.curves()["series"]["loss"]) == 5
    tmp = tmp_path / "metrics.jsonl.tmp"
    tmp.write_text("".join(line(s) for s in range(1, 3)))
    tmp.replace(path)
    assert [p[0] for p in idx.curves()["series"]["loss"]] == [1, 2]


def test_thinning_keeps_every_spike():
    x = np.arange(100_000, dtype=float)
    y = np.ones_like(x)
    y[[777, 50_001, 99_998]] = [50.0, -20.0, 30.0]
    pts = thin(x, y, 1000)
    assert len(pts) <= 1002
    got = {p[0]: p[1] for p in pts}
    assert got[777.0] == 50.0 and got[50_001.0] == -20.0 and got[99_998.0] == 30.0


def write_long_run(run, n: int) -> None:
    """n train lines in the shape sftlab writes (10 channels), plus an eval line every 500 steps."""
    chans = ["math", "math/add", "text", "text/plural", "facts", "facts/capital", "list", "list/next", "@eot", "qa"]
    head = '{"step": %d, "epoch": %.4f, "loss": %.6f, "grad_norm": %.4f, "lr": 0.001, "tokens": 2048, ' \
           '"tokens_per_s": 5000.0, "padding_ratio": 0.1, ' + ", ".join(f'"loss/{c}": %.6f' for c in chans) + "}\n"
    parts = []
    for s in range(1, n + 1):
        v = 2.0 / (1 + s / 1000)
        parts.append(head % (s, s / 1000, v, 1.0 + (s % 97 == 0), *([v] * len(chans))))
        if s % 500 == 0:
            parts.append(json.dumps({"step": s, "eval_loss": v, "eval_loss/math": v}) + "\n")
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(parts))
    (run / "config.yaml").write_text(f"train:\n  max_steps: {n}\n  logging_steps: 1\n")


def test_200k_metric_lines_open_in_under_a_second(tmp_path):
    run = tmp_path / "long"
    write_long_run(run, 200_000)
    ws = Workspace(paths=[tmp_path], fixes_dir=tmp_path / "fixes")
    ws.scan(force=True)
    rid = next(iter(ws.runs))
    url, server = start_ui(ws)
    try:
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{url}/runs/{rid}", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{url}/api/runs/{rid}/curves", timeout=30) as r:
            curves = json.loads(r.read())
        took = time.perf_counter() - t0
        assert took < 1.0, f"page + curves took {took:.2f} s"
        loss = curves["series"]["loss"]
        assert 500 < len(loss) <= 1002 and loss[0][0] < 200 and loss[-1][0] > 199_000  # the whole run, thinned
        assert curves["partial"]  # the full index is still being built in the background
        assert max(p[1] for p in curves["series"]["grad_norm"]) == 2.0
    finally:
        ws.close()
        server.should_exit = True
