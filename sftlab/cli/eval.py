"""`sftlab eval CONFIG.yaml [overrides]` and its helpers: metrics, judge, compare, export-sheet, import-sheet."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from sftlab.cli.apps import app


class _EvalGroup(TyperGroup):
    """`sftlab eval CONFIG.yaml ...` runs the `run` command; `sftlab eval metrics ...` the named one."""

    def resolve_command(self, ctx, args):  # noqa: ANN001, ANN201
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


eval_app = typer.Typer(cls=_EvalGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Evaluate a model: `sftlab eval CONFIG.yaml [key=value ...]` (= `eval run`); metrics, LLM judges, reports, human sheets (docs/evaluation.md).")
app.add_typer(eval_app, name="eval")


@eval_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(config: str | None = typer.Argument(None, help="Eval config YAML (optional when everything is overridden)."),
        overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. limit=10 judge.repeats=3."),
        limit: int | None = typer.Option(None, "--limit", help="Only the first N records of each set."),
        seed: int | None = typer.Option(None, "--seed", help="Sampling seed."),
        output_dir: Path | None = typer.Option(None, "--out", "-o", help="Output dir (overrides output_dir).")) -> None:
    """Generate replies for the eval sets, score and judge them; writes OUT/summary.json and report.html."""
    from sftlab.eval.config import load_eval_config  # lazy: start-up
    from sftlab.eval.run import run_eval

    extra = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():  # no file, only overrides
        extra.insert(0, config)
        config = None
    extra += [f"limit={limit}"] * (limit is not None) + [f"seed={seed}"] * (seed is not None)
    extra += [f"output_dir={output_dir}"] * (output_dir is not None)
    cfg = load_eval_config(config, extra)
    summary = run_eval(cfg)
    _print_summary(summary, Path(cfg.output_dir))


@eval_app.command("metrics")
def metrics(pred: Path = typer.Option(..., "--pred", help="predictions.jsonl: {id, task_type, reply, reference}."),
            out: Path = typer.Option(..., "--out", "-o", help="Output dir."),
            metric: list[str] | None = typer.Option(None, "--metric", "-m",
                                                     help="exact_match, rouge, bleu, chrf (default: all).")) -> None:
    """Score existing predictions without generating."""
    from sftlab.eval.run import score_predictions  # lazy: start-up

    summary = score_predictions(pred, out, list(metric or ["exact_match", "rouge", "bleu", "chrf"]))
    _print_summary(summary, out)


@eval_app.command("judge")
def judge(pred: Path = typer.Option(..., "--pred", help="predictions.jsonl: {id, task_type, prompt, reply, reference?}."),
          out: Path = typer.Option(..., "--out", "-o", help="Output dir."),
          baseline: Path | None = typer.Option(None, "--baseline", help="Baseline predictions.jsonl (pairwise)."),
          config: Path | None = typer.Option(None, "--config", "-c", help="An eval config with a judge: section."),
          overrides: list[str] | None = typer.Argument(None, help="Judge settings: base_url=... model=... mode=...")
          ) -> None:
    """Judge existing predictions (single-answer, or pairwise against --baseline) without generating."""
    from sftlab.eval.config import load_judge_config  # lazy: start-up
    from sftlab.eval.run import judge_predictions

    judge_cfg = load_judge_config(config, list(overrides or [])).as_dict()
    summary = judge_predictions(pred, out, judge_cfg, baseline)
    _print_summary(summary, out)


@eval_app.command("compare")
def compare(a: Path = typer.Argument(..., help="Eval dir A (before)."),
            b: Path = typer.Argument(..., help="Eval dir B (after)."),
            out: Path | None = typer.Option(None, "--out", "-o", help="HTML path (default: B/compare.html)."),
            also: list[Path] | None = typer.Option(None, "--with", help="More eval dirs judged against the same "
                                                   "baseline, for the joint length-controlled fit.")) -> None:
    """What got better or worse from A to B, per task_type and metric, with paired-bootstrap significance."""
    from rich.console import Console  # lazy: start-up
    from rich.table import Table

    from sftlab.eval.report import compare as compare_dirs  # lazy: start-up
    from sftlab.eval.report import shared_baseline_lc, write_eval_report

    diffs = compare_dirs(a, b)
    t = Table(title=f"{a} → {b}")
    for col in ("task_type", "metric", "A", "B", "B − A", "95% CI", "change"):
        t.add_column(col)
    for d in diffs:
        style = {"better": "green", "worse": "red"}.get(d["change"], "")
        t.add_row(d["task_type"], d["metric"], f"{d['a_mean']:.4g}", f"{d['b_mean']:.4g}", f"{d['diff']:+.4g}",
                  f"[{d['ci_low']:+.3g}, {d['ci_high']:+.3g}]", f"[{style}]{d['change']}[/]" if style else d["change"])
    Console().print(t)
    if any(d["metric"] == "judge:win" for d in diffs):  # pairwise: one joint length-controlled fit over the runs
        _print_lc(shared_baseline_lc([a, *(also or []), b]))
    typer.echo(str(write_eval_report(b, out or Path(b) / "compare.html", compare_with=a, lc_runs=also or [])))


def _print_lc(lc: dict) -> None:
    if lc.get("skipped"):
        typer.echo(f"length control: {lc['skipped']}")
        return
    typer.echo("length-controlled win rate (joint fit, shared baseline; ties 1/2):")
    for name, r in lc["runs"].items():
        flag = f", extrapolated: longer on {r['longer_share']:.0%}" if r["lc_extrapolated"] else ""
        typer.echo(f"  {name}: {r['lc_win_rate']:.3f} (raw {r['win_rate']:.3f}{flag})")


@eval_app.command("export-sheet")
def export_sheet(pred: Path = typer.Option(..., "--pred", help="predictions.jsonl of the model."),
                 out: Path = typer.Option(..., "--out", "-o", help="Sheet path (.csv or .xlsx)."),
                 baseline: Path | None = typer.Option(None, "--baseline", help="Baseline predictions (A/B sheet)."),
                 dimensions: str = typer.Option("helpfulness,honesty,harmlessness", "--dimensions",
                                                help="Comma-separated rating columns."),
                 seed: int = typer.Option(0, "--seed", help="Shuffle / A-B order seed.")) -> None:
    """Write a blind, shuffled human-rating sheet (A/B order randomised); the key goes next to it."""
    from sftlab.eval.human import export_sheet as export  # lazy: start-up

    typer.echo(str(export(pred, out, baseline=baseline, dimensions=dimensions.split(","), seed=seed)))


@eval_app.command("import-sheet")
def import_sheet(sheets: list[Path] = typer.Argument(..., help="Filled sheets (one per annotator)."),
                 out: Path = typer.Option(..., "--out", "-o", help="Output dir (summary.json)."),
                 pred: Path | None = typer.Option(None, "--pred", help="Judged predictions.jsonl for judge-vs-human.")
                 ) -> None:
    """Read filled sheets back into summary.json, with Cohen's kappa between annotators."""
    from sftlab.eval.human import import_sheets  # lazy: start-up

    summary = import_sheets(sheets, out, judged=pred)
    typer.echo(str(Path(out) / "summary.json"))
    for k, v in (summary.get("agreement") or {}).items():
        typer.echo(f"{k}: {v}")


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console  # lazy: start-up
    from rich.table import Table

    from sftlab.eval.report import score_table  # lazy: start-up

    header, rows = score_table(summary)
    t = Table(title=f"eval: {summary.get('n', 0)} items")
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*[str(c) for c in r])
    Console().print(t)
    j = summary.get("judge")
    if j:
        typer.echo(f"judge: {j['requests']} requests, {j['cache_hits']} cache hits, {j['parse_failures']} parse failures"
                   + "".join(f", {k} {v:.3f}" for k, v in (j.get("pairwise") or {}).items()
                             if isinstance(v, float)))
    bench = summary.get("benchmarks")
    if bench:  # lm-evaluation-harness: base -> model per task and metric, then the alarms
        for d in bench.get("deltas") or []:
            typer.echo(f"benchmark {d['task']} {d['metric']}: {d['base']:.4g} -> {d['model']:.4g} ({d['delta']:+.4g})")
        for line in bench.get("alarms") or []:
            typer.secho(line, fg="red", err=True)
    typer.echo(f"summary: {out / 'summary.json'}\nreport:  {out / 'report.html'}")
