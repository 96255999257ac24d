"""`sftlab report RUN_DIR`: one self-contained HTML page that says how a run went.

Reads only the run-directory files (metrics.jsonl, config.yaml, data_summary.json, eval_results.json),
so it works on a finished run, a crashed one, or one still training (a partial last line is skipped).
Plots are PNGs drawn with matplotlib's Agg renderer and embedded as base64: the file can be mailed or
attached to a ticket and opens anywhere without network access.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.html import CSS, Plot, bar_chart, finish_plot, new_figure, section, table
from sftlab.io import write_text
from sftlab.train.metrics import METRICS_FILE, is_number, read_metrics

REPORT_FILE = "report.html"
_EVAL_KEY = re.compile(r"^eval_(?:(?P<set>.+)_)?loss(?:/(?P<ch>.+))?$")

Series = list[tuple[float, float]]


@dataclass
class RunData:
    """Everything the report shows, parsed from the run directory."""

    run_dir: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    config_text: str | None = None
    data_summary: dict[str, Any] | None = None
    eval_results: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def series(self, key: str, records: list[dict[str, Any]] | None = None) -> Series:
        """(step, value) points of one numeric key (non-finite values dropped)."""
        recs = self.train if records is None else records
        return [(float(r["step"]), float(r[key])) for r in recs
                if is_number(r.get(key)) and is_number(r.get("step")) and math.isfinite(r[key])]

    def train_channels(self) -> list[str]:
        chans = {k[len("loss/"):] for r in self.train for k in r if k.startswith("loss/")}
        return sorted(chans, key=_channel_order)

    def eval_keys(self) -> dict[str, dict[str, str]]:
        """{eval set ('' = default): {channel ('' = total): metrics key}}."""
        out: dict[str, dict[str, str]] = {}
        for r in self.evals:
            for k in r:
                m = _EVAL_KEY.match(k)
                if m:
                    out.setdefault(m.group("set") or "", {})[m.group("ch") or ""] = k
        return out


def _channel_order(ch: str) -> tuple[int, str]:
    """Top-level task types first, then sub-types, then the special '@' channels."""
    if ch.startswith("@"):
        return 2, ch
    return (1 if "/" in ch else 0), ch


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path.name} could not be read ({e}); its section is left out")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object; its section is left out")
        return None
    return data


def load_run(run_dir: str | Path) -> RunData:
    """Parse a run directory; UserError when it is missing or holds none of the run files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    data = RunData(run_dir=run_dir)
    mpath = run_dir / METRICS_FILE
    if mpath.exists():
        records, bad = read_metrics(mpath)
        if bad:
            data.notes.append(f"{bad} unreadable line(s) in {METRICS_FILE} skipped (a run still writing?)")
        for r in records:
            if "alarm" in r:
                data.alarms.append(r)
            elif "loss" in r:
                data.train.append(r)
            elif any(_EVAL_KEY.match(k) for k in r):
                data.evals.append(r)
    cpath = run_dir / "config.yaml"
    if cpath.exists() and cpath.stat().st_size:
        data.config_text = cpath.read_text(encoding="utf-8", errors="replace")
    data.data_summary = _read_json(run_dir / "data_summary.json", data.notes)
    data.eval_results = _read_json(run_dir / "eval_results.json", data.notes)
    if not (data.train or data.evals or data.alarms or data.config_text or data.data_summary
            or data.eval_results):
        raise UserError(f"{run_dir} holds no run data (expected {METRICS_FILE}, config.yaml, "
                        "data_summary.json or eval_results.json written by `sftlab train`)")
    return data


# -- plotting --------------------------------------------------------------------------------------

def _smooth(points: Series, k: int) -> Series:
    """Trailing moving average over k points (k <= 1: unchanged)."""
    if k <= 1 or len(points) <= k:
        return points
    out: Series = []
    acc = 0.0
    for i, (x, y) in enumerate(points):
        acc += y
        if i >= k:
            acc -= points[i - k][1]
        out.append((x, acc / min(i + 1, k)))
    return out


def _xy(points: Series, max_points: int = 3000) -> tuple[list[float], list[float]]:
    """x and y lists for plotting; long series are thinned to the min and max of each bucket, so a
    100k-step run draws fast and a single spike (grad norm, loss) stays visible."""
    if len(points) > max_points:
        size = math.ceil(2 * len(points) / max_points)
        thinned: Series = []
        for i in range(0, len(points), size):
            bucket = points[i:i + size]
            lo = min(bucket, key=lambda p: p[1])
            hi = max(bucket, key=lambda p: p[1])
            thinned.extend(sorted({lo, hi}))
        points = thinned
    return [p[0] for p in points], [p[1] for p in points]


def _legend(ax: Any, n: int) -> None:
    if n > 8:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, ncol=1 if n <= 24 else 2)
    elif n > 1:
        ax.legend(fontsize=8)


def _style(ch: str) -> str:
    return ":" if ch.startswith("@") else ("--" if "/" in ch else "-")


def _plot_loss_overview(d: RunData) -> Plot | None:
    train = d.series("loss")
    ekeys = d.eval_keys()
    if not train and not ekeys:
        return None
    fig, ax = new_figure(wide=True)
    k = max(1, len(train) // 50)
    if train:
        ax.plot(*_xy(train), color="tab:blue", alpha=0.35 if k > 1 else 1.0, lw=1, label="train loss")
        if k > 1:
            ax.plot(*_xy(_smooth(train, k)), color="tab:blue", lw=2, label=f"train loss (mean of {k} logs)")
    colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, (name, keys) in enumerate(sorted(ekeys.items())):
        if "" in keys:
            pts = d.series(keys[""], d.evals)
            ax.plot(*_xy(pts), marker="o", color=colors[i % len(colors)], lw=2,
                    label=f"eval loss ({name})" if name else "eval loss")
    steps = sorted({float(a["step"]) for a in d.alarms if is_number(a.get("step"))})
    for j, s in enumerate(steps[:50]):
        ax.axvline(s, color="red", ls=":", lw=1, alpha=0.7, label="alarm" if j == 0 else None)
    ax.set_ylabel("loss (nats/token)")
    _legend(ax, len(ax.get_lines()))
    alt = (f"Line chart of the total train loss over {len(train)} logged steps"
           + (f" with eval loss for {len(ekeys)} eval set(s)" if ekeys else "")
           + (f"; red dotted lines mark {len(steps)} alarm step(s)" if steps else "") + ".")
    return finish_plot(fig, ax, "Train and eval loss (total)", alt, wide=True)


def _channel_plot(title: str, lines: list[tuple[str, Series]], what: str, marker: str | None = None,
                  smooth: bool = True) -> Plot | None:
    lines = [(label, pts) for label, pts in lines if pts]
    if not lines:
        return None
    fig, ax = new_figure(wide=True)
    cmap = _colors(len(lines))
    n_max = max(len(p) for _, p in lines)
    k = max(1, n_max // 50) if smooth else 1
    for i, (label, pts) in enumerate(lines):
        ch = label.split(": ", 1)[-1]
        ax.plot(*_xy(_smooth(pts, k)), color=cmap[i], ls=_style(ch), lw=1.6, marker=marker, markersize=3,
                label=label)
    ax.set_ylabel("loss (nats/token)")
    _legend(ax, len(lines))
    if k > 1:
        title = f"{title} (mean of {k} logs)"
    alt = f"Line chart of {what} for {len(lines)} channels: " + ", ".join(lb for lb, _ in lines[:30]) + "."
    return finish_plot(fig, ax, title, alt, wide=True)


def _plot_shares(d: RunData, prefix: str, title: str, what: str) -> Plot | None:
    """Stacked area of each top-level task's share per step (top-level channels partition the samples)."""
    chans = sorted({k[len(prefix):] for r in d.train for k in r if k.startswith(prefix)}, key=_channel_order)
    chans = [c for c in chans if "/" not in c and not c.startswith("@")]
    recs = [r for r in d.train if is_number(r.get("step")) and any(f"{prefix}{c}" in r for c in chans)]
    if not chans or not recs:
        return None
    xs = [float(r["step"]) for r in recs]
    ys = [[float(r.get(f"{prefix}{c}", 0.0)) if is_number(r.get(f"{prefix}{c}")) else 0.0 for r in recs]
          for c in chans]
    fig, ax = new_figure()
    ax.stackplot(xs, ys, labels=chans, colors=_colors(len(chans)), alpha=0.85)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("share of the step")
    _legend(ax, len(chans))
    means = ", ".join(f"{c} {sum(y) / len(y):.1%}" for c, y in zip(chans, ys, strict=True))
    alt = f"Stacked area chart of {what} per task over {len(recs)} logged steps; mean shares: {means}."
    return finish_plot(fig, ax, title, alt)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps  # lazy: matplotlib takes a second to import; only the report draws

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _simple_plot(d: RunData, key: str, title: str, ylabel: str, what: str, logy: bool = False) -> Plot | None:
    pts = d.series(key)
    if not pts:
        return None
    fig, ax = new_figure()
    ax.plot(*_xy(pts), color="tab:blue", lw=1.2)
    ys = [p[1] for p in pts]
    if logy and min(ys) > 0 and max(ys) / min(ys) > 100:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    alt = (f"Line chart of {what} over {len(pts)} logged steps, from {ys[0]:.4g} to {ys[-1]:.4g} "
           f"(min {min(ys):.4g}, max {max(ys):.4g}).")
    return finish_plot(fig, ax, title, alt)


def _data_plots(summary: dict[str, Any]) -> list[Plot]:
    plots = []
    splits = {s: v for s, v in summary.items() if isinstance(v, dict)}
    for key, title, unit in (("samples_per_task", "Samples per task_type", "samples"),
                             ("tokens_per_task", "Tokens per task_type", "tokens")):
        tasks = sorted({t for v in splits.values() for t in (v.get(key) or {})}, key=_channel_order)
        if not tasks:
            continue
        groups = {s: [float((v.get(key) or {}).get(t, 0)) for t in tasks] for s, v in splits.items()
                  if v.get(key)}
        alt = f"Bar chart of {unit} per task_type ({', '.join(groups)}): " + "; ".join(
            f"{t} " + "/".join(f"{g[i]:.0f}" for g in groups.values()) for i, t in enumerate(tasks[:30])) + "."
        plots.append(bar_chart(title, tasks, groups, unit, alt))
    lengths = {s: [x for x in (v.get("lengths") or []) if is_number(x)] for s, v in splits.items()}
    lengths = {s: v for s, v in lengths.items() if v}
    if lengths:
        fig, ax = new_figure()
        lo = min(min(v) for v in lengths.values())
        hi = max(max(v) for v in lengths.values())
        bins = 40 if hi > lo else 1
        for s, v in lengths.items():
            ax.hist(v, bins=bins, range=(lo, max(hi, lo + 1)), alpha=0.6, label=f"{s} (n={len(v)})")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
        alt = "Histogram of sample lengths in tokens: " + "; ".join(
            f"{s}: n={len(v)}, min {min(v)}, median {sorted(v)[len(v) // 2]}, max {max(v)}"
            for s, v in lengths.items()) + "."
        plots.append(finish_plot(fig, ax, "Sample length (tokens)", alt, xlabel="tokens"))
    return plots


def _eval_results_plot(res: dict[str, Any]) -> Plot | None:
    tasks = [t for t, v in res.items() if isinstance(v, dict)]
    tasks.sort(key=_channel_order)
    if not tasks:
        return None
    groups = {}
    for part in ("before", "after"):
        vals = [res[t].get(part) for t in tasks]
        if any(is_number(v) for v in vals):
            groups[part] = [float(v) if is_number(v) else 0.0 for v in vals]
    if not groups:
        return None
    alt = "Bar chart of exact-match accuracy per task_type, before and after training: " + "; ".join(
        f"{t} " + " -> ".join(f"{g[i]:.2f}" for g in groups.values()) for i, t in enumerate(tasks[:30])) + "."
    top = max(max(g) for g in groups.values())
    return bar_chart("Exact-match accuracy per task_type (before vs after)", tasks, groups, "accuracy", alt,
                 ylim=(0, 1.02) if top <= 1 else None)


# -- html ------------------------------------------------------------------------------------------

def _summary_rows(d: RunData) -> list[list[Any]]:
    rows: list[list[Any]] = []
    if d.train:
        last = d.train[-1]
        rows.append(["logged train steps", len(d.train)])
        rows.append(["last step", last.get("step", "-")])
        if is_number(last.get("epoch")):
            rows.append(["last epoch", float(last["epoch"])])
        losses = d.series("loss")
        if losses:
            rows.append(["first / last train loss", f"{losses[0][1]:.4f} / {losses[-1][1]:.4f}"])
        toks = sum(r["tokens"] for r in d.train if is_number(r.get("tokens")))
        if toks:
            rows.append(["tokens seen (logged steps)", int(toks)])
        tps = [p[1] for p in d.series("tokens_per_s")]
        if tps:
            rows.append(["mean tokens/s", sum(tps) / len(tps)])
        # the start-up memory estimate next to the measured peak, and MFU where the device peak is known
        peaks = [p[1] for p in d.series("memory_peak_gb")]
        if peaks and is_number(last.get("memory_estimate_gb")):
            rows.append(["memory per device: estimate / measured peak (GiB)",
                         f"{float(last['memory_estimate_gb']):.3f} / {max(peaks):.3f}"])
        mfus = [p[1] for p in d.series("mfu")]
        if mfus:
            rows.append(["mean MFU (model FLOPs)", f"{sum(mfus) / len(mfus):.1%}"])
    for name, keys in sorted(d.eval_keys().items()):
        if "" in keys:
            pts = d.series(keys[""], d.evals)
            if pts:
                best = min(pts, key=lambda p: p[1])
                label = f"eval loss{f' ({name})' if name else ''}"
                rows.append([f"{label}: first / best (step) / last",
                             f"{pts[0][1]:.4f} / {best[1]:.4f} ({best[0]:g}) / {pts[-1][1]:.4f}"])
    rows.append(["alarms", len(d.alarms)])
    return rows


def render_html(d: RunData) -> str:
    """The report page for parsed run data."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sftlab report: "
             f"{esc(d.run_dir.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>sftlab run report</h1><p class='sub'>{esc(str(d.run_dir.resolve()))}</p>"]
    for n in d.notes:
        parts.append(f"<div class='note'>{esc(n)}</div>")
    parts.append("<section><h2>Summary</h2>" + table(["", "value"], _summary_rows(d)) + "</section>")

    # alarms
    if d.alarms:
        rows = [[a.get("step", "-"), a.get("alarm", "?"), a.get("message", "")] for a in d.alarms]
        parts.append("<section><h2>Alarms</h2><p class='alarm'>" + f"{len(d.alarms)} alarm(s) raised during "
                     "training.</p>" + table(["step", "alarm", "message"], rows) + "</section>")
    else:
        parts.append("<section><h2>Alarms</h2><p class='ok'>No alarms were raised.</p></section>")

    # losses
    train_lines = [(ch, d.series(f"loss/{ch}")) for ch in d.train_channels()]
    eval_lines: list[tuple[str, Series]] = []
    ekeys = d.eval_keys()
    for name, keys in sorted(ekeys.items()):
        for ch in sorted((c for c in keys if c), key=_channel_order):
            eval_lines.append((f"{name}: {ch}" if name else ch, d.series(keys[ch], d.evals)))
    parts.append(section("Loss", [
        _plot_loss_overview(d),
        _channel_plot("Train loss per channel", train_lines, "the train loss per channel "
                      "(solid: task type, dashed: sub-type, dotted: special tokens)"),
        _channel_plot("Eval loss per channel", eval_lines, "the eval loss per channel", marker="o", smooth=False),
    ], "" if d.train or d.evals else "<p>No train or eval metrics logged yet.</p>"))

    # each task's share (what task_weights / task_epochs / mix did to a step)
    plan = ((d.data_summary or {}).get("train") or {}).get("plan_per_epoch") or {}
    plan_rows = [[t, r.get("samples", "-"), r.get("tokens", "-"), r.get("supervised_tokens", "-"),
                  r.get("weight", "-"), r.get("epochs", "-")] for t, r in plan.items() if isinstance(r, dict)]
    parts.append(section("Task shares", [
        _plot_shares(d, "loss_share/", "Share of the weighted loss per task", "the share of the weighted loss"),
        _plot_shares(d, "token_share/", "Share of supervised tokens per task", "the share of supervised tokens"),
    ], table(["task_type", "samples / epoch", "tokens / epoch", "supervised / epoch", "task weight",
               "task epochs"], plan_rows) if plan_rows else ""))

    # final per-task metrics
    if d.eval_results:
        res = {t: v for t, v in d.eval_results.items() if isinstance(v, dict)}
        rows = []
        for t in sorted(res, key=_channel_order):
            b, a = res[t].get("before"), res[t].get("after")
            delta = f"{a - b:+.4g}" if is_number(a) and is_number(b) else "-"
            rows.append([t, b if b is not None else "-", a if a is not None else "-", delta])
        parts.append(section("Task metrics (exact match)", [_eval_results_plot(d.eval_results)],
                              table(["task_type", "before", "after", "change"], rows)))

    # optimisation
    parts.append(section("Optimisation and throughput", [
        _simple_plot(d, "lr", "Learning rate", "lr", "the learning rate"),
        _simple_plot(d, "grad_norm", "Gradient norm (before clipping)", "grad norm",
                     "the gradient norm before clipping", logy=True),
        _simple_plot(d, "tokens_per_s", "Throughput (tokens/s)", "tokens/s", "training throughput in tokens/s"),
        _simple_plot(d, "padding_ratio", "Padding ratio", "padding / all tokens",
                     "the fraction of padding tokens per step"),
    ]))

    # data
    if d.data_summary:
        rows = []
        for split, v in d.data_summary.items():
            if not isinstance(v, dict):
                continue
            spt, tpt = v.get("samples_per_task") or {}, v.get("tokens_per_task") or {}
            total = sum(x for x in spt.values() if is_number(x)) or 1
            for t in sorted(set(spt) | set(tpt), key=_channel_order):
                s = spt.get(t, 0)
                rows.append([split, t, s, f"{100 * s / total:.1f}%" if is_number(s) else "-", tpt.get(t, "-")])
            if is_number(v.get("supervised_tokens")):
                rows.append([split, "(supervised tokens)", "", "", v["supervised_tokens"]])
        parts.append(section("Data", _data_plots(d.data_summary),
                              table(["split", "task_type", "samples", "share", "tokens"], rows)))

    if d.config_text is not None:
        parts.append(f"<section><h2>Config</h2><pre>{esc(d.config_text)}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report (default RUN_DIR/report.html) and return its path."""
    d = load_run(run_dir)
    page = render_html(d)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    if path.is_dir():  # `-o DIR`: DIR/report.html (os.replace onto a directory failed and left DIR.tmp behind)
        path = path / REPORT_FILE
    write_text(page, path)  # atomic: a browser refreshing a live run never sees half a page
    return path
