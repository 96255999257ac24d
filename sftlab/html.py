"""The pieces both HTML reports (`sftlab report` for a run, `sftlab eval`'s report.html) are built from: the page
style, tables, sections of figures, and charts drawn with matplotlib's Agg renderer and embedded as base64 PNGs,
so a page is one self-contained file that opens anywhere without network access.

Bottom layer: imports nothing of sftlab.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d1d1f;background:#fff;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{border-bottom:2px solid #e5e5ea;padding-bottom:4px;margin-top:32px}
.sub{color:#6e6e73;margin-top:0} .grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
figure{margin:0 0 12px 0} figure.wide{grid-column:1 / -1} img{max-width:100%;height:auto;border:1px solid #e5e5ea}
figcaption{font-size:.85em;color:#6e6e73} table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #d2d2d7;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f5f5f7}
td.num{text-align:right;font-variant-numeric:tabular-nums} pre{background:#f5f5f7;padding:12px;overflow:auto;
font-size:.85em} .alarm{color:#b00020;font-weight:600} .note{background:#fff4ce;padding:6px 10px;margin:4px 0}
.ok{color:#1a7f37}
"""


@dataclass
class Plot:
    """One chart: its title, the alt text that says what it shows, and the PNG as base64."""

    title: str
    alt: str
    png_b64: str
    wide: bool = False


def new_figure(wide: bool = False) -> tuple[Any, Any]:
    """(figure, axes) for one chart: full page width when wide, else half (two per row)."""
    from matplotlib.figure import Figure  # lazy: matplotlib takes a second to import; only reports draw

    fig = Figure(figsize=(11, 4.4) if wide else (6.4, 3.6), dpi=100, layout="constrained")
    return fig, fig.subplots()


def finish_plot(fig: Any, ax: Any, title: str, alt: str, wide: bool = False, xlabel: str = "step") -> Plot:
    """Title, x label and grid on the axes, then the figure as an embedded PNG."""
    ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return Plot(title, alt, base64.b64encode(buf.getvalue()).decode("ascii"), wide)


def bar_chart(title: str, labels: list[str], groups: dict[str, list[float]], ylabel: str, alt: str,
              ylim: tuple[float, float] | None = None) -> Plot:
    """Grouped bars: one group of bars per label, one colour per entry of `groups` (at most four)."""
    fig, ax = new_figure(wide=len(labels) > 6)
    n = max(1, len(groups))
    width = 0.8 / n
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for i, (name, vals) in enumerate(groups.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, vals, width=width, label=name, color=colors[i % len(colors)])
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right"
                  if len(labels) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if n > 1:
        ax.legend(fontsize=8)
    return finish_plot(fig, ax, title, alt, wide=len(labels) > 6, xlabel="")


def figure_html(p: Plot) -> str:
    t = html.escape(p.title)
    return (f'<figure class="{"wide" if p.wide else ""}"><img src="data:image/png;base64,{p.png_b64}" '
            f'alt="{html.escape(p.alt, quote=True)}" title="{t}"><figcaption>{t}</figcaption></figure>')


def section(title: str, plots: list[Plot | None], extra: str = "") -> str:
    """A titled section: `extra` HTML, then its charts two per row; empty when there is nothing to show."""
    figs = [p for p in plots if p is not None]
    if not figs and not extra:
        return ""
    return (f"<section><h2>{html.escape(title)}</h2>{extra}"
            + ('<div class="grid">' + "".join(figure_html(p) for p in figs) + "</div>" if figs else "")
            + "</section>")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; numbers right-aligned (ints with thousands separators, floats to 4 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            txt = f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
            return f'<td class="num">{txt}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
