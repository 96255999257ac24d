"""report.html for an eval dir (task_type × dimension table with CIs, bar charts, judge bias statistics, worst
cases), and `sftlab eval compare A B` (what got better or worse, with paired-bootstrap significance)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.eval.length_control import shared_baseline_from_rows
from sftlab.eval.stats import paired_diff
from sftlab.html import CSS, bar_chart, section, table
from sftlab.io import read_jsonl, write_text

_EXTRA_CSS = ".better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}" \
             "td.text{max-width:520px;white-space:pre-wrap;font-size:12px}"


def _load(eval_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    path = eval_dir / "summary.json"
    if not path.is_file():
        raise UserError(f"{eval_dir}: no summary.json (is it an eval output dir written by `sftlab eval`?)")
    summary = json.loads(path.read_text(encoding="utf-8"))
    preds = read_jsonl(eval_dir / "predictions.jsonl") if (eval_dir / "predictions.jsonl").exists() else []
    bad = read_jsonl(eval_dir / "bad_cases.jsonl") if (eval_dir / "bad_cases.jsonl").exists() else []
    return summary, preds, bad


def score_table(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Rows task_type, columns every metric and judge dimension: 'mean [ci_low, ci_high]'."""
    groups = {t: dict(ms) for t, ms in summary.get("metrics", {}).items()}
    for t, ms in (summary.get("judge") or {}).get("scores", {}).items():
        groups.setdefault(t, {}).update({f"judge:{k}": v for k, v in ms.items()})
    cols = sorted({c for ms in groups.values() for c in ms}, key=lambda c: (c.startswith("judge:"), c))
    rows = []
    # "all" last, also when the judge graded task_types that have no reference metrics (prompt-only sets)
    for t, ms in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        row: list[Any] = [t, max((v["n"] for v in ms.values()), default=0)]
        for c in cols:
            v = ms.get(c)
            row.append(f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" if v else "-")
        rows.append(row)
    return ["task_type", "n", *cols], rows


def _charts(summary: dict[str, Any]) -> list[Any]:
    plots = []
    metrics = summary.get("metrics", {})
    tasks = [t for t in metrics if t != "all"]
    names = sorted({m for t in tasks for m in metrics[t]})
    for scale, chosen in (("0-1", [m for m in names if m not in ("bleu", "chrf")]), ("0-100", [m for m in names
                                                                                                if m in ("bleu", "chrf")])):
        if chosen and tasks:
            plots.append(bar_chart(f"{', '.join(chosen[:4])} per task_type", tasks,
                               {m: [metrics[t].get(m, {}).get("mean", 0.0) for t in tasks] for m in chosen[:4]},
                               scale, f"bar chart of {', '.join(chosen[:4])} per task_type"))
    js = (summary.get("judge") or {}).get("scores", {})
    jt = [t for t in js if t != "all"]
    dims = sorted({d for t in jt for d in js[t]})
    if jt and dims:
        plots.append(bar_chart(f"Judge {', '.join(dims[:4])} per task_type", jt, {d: [js[t].get(d, {}).get("mean", 0.0) for t in jt]
                                                              for d in dims[:4]},
                           "score", f"bar chart of judge {', '.join(dims[:4])} per task_type"))
    return plots


def _judge_section(summary: dict[str, Any]) -> str:
    j = summary.get("judge")
    if not j:
        return ""
    rows = [[k, j.get(k) if j.get(k) is not None else "-"] for k in
            ("mode", "model", "requests", "cache_hits", "parse_failures", "unjudged", "repeats", "repeats_std",
             "length_corr")
            if k in j]
    rows += [[k, v if v is not None else "-"] for k, v in (j.get("pairwise") or {}).items()]
    return "<section><h2>Judge</h2>" + table(["statistic", "value"], rows) + "</section>"


def _benchmarks_section(summary: dict[str, Any]) -> str:
    """lm-evaluation-harness results: value ± stderr per task and metric, base → model with the delta and alarms."""
    b = summary.get("benchmarks")
    if not b:
        return ""
    esc = html.escape

    def pm(v: Any, se: Any) -> str:
        return f"{v:.4g}" + (f" ± {se:.2g}" if isinstance(se, (int, float)) else "")

    if b.get("deltas") is not None:
        head = ["task", "metric", "base", "model", "model − base", "alarm"]
        rows = [[d["task"], d["metric"], pm(d["base"], d["base_stderr"]), pm(d["model"], d["model_stderr"]),
                 pm(d["delta"], d["delta_stderr"]), "ALARM" if d["alarm"] else ""] for d in b["deltas"]]
    else:
        head = ["task", "metric", "model"]
        rows = [[t, m, pm(v["value"], v["stderr"])] for t, ms in sorted(b["results"]["model"].items())
                for m, v in sorted(ms.items())]
    alarms = "".join(f"<p class='worse'>{esc(a)}</p>" for a in b.get("alarms") or [])
    h = b.get("harness", {})
    return (f"<section><h2>Benchmarks (lm-evaluation-harness)</h2><p>{esc(str(h.get('package')))} "
            f"{esc(str(h.get('version')))}, model type {esc(str(h.get('model_type')))}; ± is the harness's stderr"
            f"</p>{alarms}" + table(head, rows) + "</section>")


def _cases_section(bad: list[dict[str, Any]]) -> str:
    if not bad:
        return ""
    rows = []
    for r in bad:
        prompt = (r.get("prompt") or [{}])[-1].get("content", "") if r.get("prompt") else ""
        rows.append([r.get("task_type", ""), r.get("id", ""), r.get("bad_reason", ""),
                     r.get("primary_score", "-"), prompt[:400], (r.get("reply") or "")[:400],
                     (r.get("reference") or "-")[:400]])
    head = "".join(f"<th>{h}</th>" for h in ("task_type", "id", "why", "score", "prompt", "reply", "reference"))
    body = "".join("<tr>" + "".join(f"<td class='{'text' if i >= 4 else ''}'>{html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return (f"<section><h2>Worst cases per task_type</h2><table><thead><tr>{head}</tr></thead><tbody>{body}"
            "</tbody></table></section>")


def compare(a_dir: str | Path, b_dir: str | Path) -> list[dict[str, Any]]:
    """Per task_type and metric/dimension: B − A over the items both dirs share, with a paired bootstrap CI."""
    _, pa, _ = _load(Path(a_dir))
    _, pb, _ = _load(Path(b_dir))
    a_by_id = {r["id"]: r for r in pa}
    pairs = [(a_by_id[r["id"]], r) for r in pb if r["id"] in a_by_id]
    if not pairs:
        raise UserError(f"{a_dir} and {b_dir} share no item ids: compare evals of the same eval sets")
    keyed: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for ra, rb in pairs:
        for field, prefix in (("scores", ""), ("judge_scores", "judge:")):
            sa, sb = ra.get(field) or {}, rb.get(field) or {}
            for k in set(sa) & set(sb):
                if isinstance(sa[k], (int, float)) and isinstance(sb[k], (int, float)):
                    for t in (rb.get("task_type", "default"), "all"):
                        xs = keyed.setdefault((t, prefix + k), ([], []))
                        xs[0].append(float(sa[k]))
                        xs[1].append(float(sb[k]))
    out = []
    for (t, k), (xa, xb) in sorted(keyed.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        d = paired_diff(xa, xb)
        d.update(task_type=t, metric=k, a_mean=sum(xa) / len(xa), b_mean=sum(xb) / len(xb),
                 change="better" if d["significant"] and d["diff"] > 0 else
                 "worse" if d["significant"] and d["diff"] < 0 else "no significant change")
        out.append(d)
    return out


def _compare_section(diffs: list[dict[str, Any]], a_dir: Path, b_dir: Path) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("task_type", "metric", "A", "B", "B − A", "95% CI", "change"))
    body = ""
    for d in diffs:
        cls = {"better": "better", "worse": "worse"}.get(d["change"], "")
        body += (f"<tr><td>{html.escape(d['task_type'])}</td><td>{html.escape(d['metric'])}</td>"
                 f"<td class='num'>{d['a_mean']:.4g}</td><td class='num'>{d['b_mean']:.4g}</td>"
                 f"<td class='num'>{d['diff']:+.4g}</td><td class='num'>[{d['ci_low']:+.4g}, {d['ci_high']:+.4g}]</td>"
                 f"<td class='{cls}'>{d['change']}</td></tr>")
    return (f"<section><h2>Comparison</h2><p>A = {html.escape(str(a_dir))}<br>B = {html.escape(str(b_dir))}"
            f" (paired bootstrap over shared items)</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></section>")


def shared_baseline_lc(dirs: list[Path]) -> dict[str, Any]:
    """Length-controlled win rates of eval dirs judged pairwise against one baseline, from one joint fit with a
    per-instruction difficulty shared across them (sftlab/eval/length_control.py); {"skipped": why} otherwise."""
    return shared_baseline_from_rows({str(d): _load(Path(d))[1] for d in dirs})


def _lc_section(lc: dict[str, Any]) -> str:
    if lc.get("skipped"):
        return f"<section><h2>Length-controlled win rate (shared baseline)</h2><p>{html.escape(lc['skipped'])}</p></section>"
    rows = [[name, r["n"], r["win_rate"], r["lc_win_rate"], r["length_slope"], f"{r['longer_share']:.0%}",
             "yes" if r["lc_extrapolated"] else ""] for name, r in lc["runs"].items()]
    return ("<section><h2>Length-controlled win rate (shared baseline)</h2><p>One fit over these runs (AlpacaEval's "
            "form: run quality, pooled length slope, per-instruction difficulty); lc = the item-averaged win rate "
            "predicted at equal length, ties count 1/2.</p>"
            + table(["run", "n", "win rate", "lc win rate", "length slope", "longer", "extrapolated"], rows)
            + "</section>")


def render_eval_html(eval_dir: Path, compare_with: Path | None = None, lc_runs: list[Path] = ()) -> str:
    summary, _, bad = _load(eval_dir)
    esc = html.escape
    header, rows = score_table(summary)
    overall = summary.get("overall")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sftlab eval: {esc(eval_dir.name)}"
             f"</title><style>{CSS}{_EXTRA_CSS}</style></head><body>",
             f"<h1>sftlab eval report</h1><p class='sub'>{esc(str(eval_dir.resolve()))} — model "
             f"{esc(str(summary.get('model', '?')))}, {summary.get('n', 0)} items"
             + (f", overall {overall['mean']:.3f} [{overall['ci_low']:.3f}, {overall['ci_high']:.3f}]"
                if isinstance(overall, dict) else "") + "</p>",
             section("Scores per task_type (mean [95% bootstrap CI])", _charts(summary), table(header, rows)),
             _judge_section(summary), _benchmarks_section(summary)]
    if compare_with is not None:
        parts.append(_compare_section(compare(compare_with, eval_dir), compare_with, eval_dir))
        if summary.get("judge", {}).get("mode") == "pairwise":
            parts.append(_lc_section(shared_baseline_lc([compare_with, *lc_runs, eval_dir])))
    parts.append(_cases_section(bad))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_eval_report(eval_dir: str | Path, out: str | Path | None = None, compare_with: str | Path | None = None,
                      lc_runs: list[Path] = ()) -> Path:
    """Write EVAL_DIR/report.html (or `out`); with compare_with, the page also shows the diff against that dir."""
    eval_dir = Path(eval_dir)
    page = render_eval_html(eval_dir, Path(compare_with) if compare_with else None, list(lc_runs))
    path = Path(out) if out else eval_dir / "report.html"
    write_text(page, path)
    return path
