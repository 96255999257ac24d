"""`stats`: what a dataset looks like before training on it, as stats.json and a self-contained stats.html.

Per task_type counts, prompt / answer length percentiles (tokens with a tokenizer, else words), turn counts,
script mix, the most frequent tokens, and (with embeddings) diversity: mean pairwise cosine distance and
K-means cluster sizes with their entropy. Plots are PNGs (matplotlib, Agg) embedded as base64 data URIs.
"""

from __future__ import annotations

import base64
import html
import io
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftlab.curate.text import answer_text, dominant_script, prompt_text, tokens
from sftlab.io import check_output_dir, write_json, write_text

PCTS = (0, 5, 25, 50, 75, 95, 99, 100)


def _pct(values: Sequence[int]) -> dict[str, float]:
    if not len(values):
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p}": round(float(np.percentile(arr, p)), 2) for p in PCTS} | {"mean": round(float(arr.mean()), 2)}


def diversity(emb: np.ndarray, n_clusters: int = 8, seed: int = 0, max_pairs_n: int = 5000) -> dict[str, Any]:
    """Mean pairwise cosine distance (on a seeded sample of <= max_pairs_n rows) and K-means cluster sizes."""
    from sklearn.cluster import KMeans  # lazy: scikit-learn takes seconds to import; only with embeddings

    rng = np.random.default_rng(seed)
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = x[rng.choice(len(x), size=min(len(x), max_pairs_n), replace=False)] if len(x) > max_pairs_n else x
    n = len(s)
    sim = s @ s.T
    mean_dist = float(1 - (sim.sum() - np.trace(sim)) / max(1, n * (n - 1)))
    k = max(1, min(n_clusters, len(x)))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x.astype(np.float64))
    sizes = np.bincount(labels, minlength=k)
    p = sizes / sizes.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {"mean_pairwise_cosine_distance": round(mean_dist, 4), "clusters": k,
            "cluster_sizes": sorted(sizes.tolist(), reverse=True), "cluster_entropy": round(entropy, 4),
            "cluster_entropy_normalised": round(entropy / np.log(k), 4) if k > 1 else 1.0}


class StatsTally:
    """What `stats` needs, filled chunk by chunk: per record only its prompt / answer length and task index
    (typed arrays, 24 bytes), plus counters; so a dataset of millions of records is never held as records."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.prompt_len, self.answer_len, self.task = array("q"), array("q"), array("q")
        self.task_index: dict[str, int] = {}
        self.turns: Counter = Counter()
        self.scripts: Counter = Counter()
        self.sources: Counter = Counter()
        self.freq: Counter = Counter()

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        prompts = [prompt_text(r) for r in records]
        answers = [answer_text(r) for r in records]
        if self.tokenizer is not None:
            enc = self.tokenizer(prompts + answers, add_special_tokens=False)["input_ids"] if records else []
            lens = [len(e) for e in enc]
            self.prompt_len.extend(lens[: len(records)])
            self.answer_len.extend(lens[len(records):])
        else:
            self.prompt_len.extend(len(tokens(t)) for t in prompts)
            self.answer_len.extend(len(tokens(t)) for t in answers)
        self.task.extend(self.task_index.setdefault(r["task_type"], len(self.task_index)) for r in records)
        self.turns.update(sum(m.get("role") == "assistant" for m in r["messages"]) for r in records)
        self.scripts.update(dominant_script(p + " " + a) for p, a in zip(prompts, answers, strict=True))
        self.sources.update(r.get("source") or "" for r in records)
        for a in answers:
            self.freq.update(tokens(a))

    def summary(self, emb: np.ndarray | None = None, top_tokens: int = 30, seed: int = 0) -> dict[str, Any]:
        """The numbers behind stats.html (JSON-serialisable, except the `_` keys the plots read)."""
        p_len, a_len = np.frombuffer(self.prompt_len, dtype=np.int64), np.frombuffer(self.answer_len, dtype=np.int64)
        task = np.frombuffer(self.task, dtype=np.int64)
        counts = np.bincount(task, minlength=len(self.task_index))
        tasks = {t: int(counts[k]) for t, k in sorted(self.task_index.items())}
        per_task = {t: {"count": n, "prompt_len": _pct(p_len[task == self.task_index[t]]),
                        "answer_len": _pct(a_len[task == self.task_index[t]])} for t, n in tasks.items()}
        out: dict[str, Any] = {
            "records": len(task), "length_unit": "tokens" if self.tokenizer is not None else "words",
            "task_types": tasks, "prompt_len": _pct(p_len), "answer_len": _pct(a_len), "per_task_type": per_task,
            "assistant_turns": {str(k): v for k, v in sorted(self.turns.items())},
            "scripts": dict(sorted(self.scripts.items())),
            "top_answer_tokens": self.freq.most_common(top_tokens),
            "sources": dict(sorted(self.sources.items())),
        }
        if emb is not None and len(emb):
            out["diversity"] = diversity(emb, seed=seed)
        out["_lengths"] = {"prompt": p_len, "answer": a_len}
        out["_task"] = (task, self.task_index)
        return out


def tally_records(chunks: Iterable[Sequence[dict[str, Any]]], tokenizer: Any = None) -> StatsTally:
    """A StatsTally filled chunk by chunk (lengths, task indices and counters are held, not the records)."""
    tally = StatsTally(tokenizer)
    for chunk in chunks:
        tally.add(chunk)
    return tally


def compute_stats(records: Sequence[dict[str, Any]], *, tokenizer: Any = None, emb: np.ndarray | None = None,
                  top_tokens: int = 30, seed: int = 0) -> dict[str, Any]:
    """The numbers behind stats.html for records in memory (StatsTally over one chunk)."""
    tally = StatsTally(tokenizer)
    tally.add(records)
    return tally.summary(emb, top_tokens, seed)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_plots(stats: dict[str, Any], emb: np.ndarray | None = None) -> dict[str, str]:
    """{title: base64 PNG}: length histograms per task_type, task_type bars, PCA projection of embeddings."""
    import matplotlib  # lazy: matplotlib takes a second to import; only the stats page draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as matplotlib

    plots: dict[str, str] = {}
    tasks = sorted(stats["task_types"])
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    unit = stats["length_unit"]
    task, task_index = stats["_task"]
    for which in ("prompt", "answer"):
        lens = np.asarray(stats["_lengths"][which], dtype=np.float64)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        bins = np.histogram_bin_edges(lens, bins=40) if len(lens) else 10
        for t in tasks:
            ax.hist(lens[task == task_index[t]], bins=bins, alpha=0.6, label=t, color=colors[t])
        ax.set_xlabel(f"{which} length ({unit})")
        ax.set_ylabel("records")
        ax.legend(fontsize=7)
        plots[f"{which} length by task_type"] = _png(fig)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(tasks) + 1.2))
    ax.barh(tasks, [stats["task_types"][t] for t in tasks], color=[colors[t] for t in tasks])
    ax.set_xlabel("records")
    plots["records per task_type"] = _png(fig)
    plt.close(fig)
    if emb is not None and len(emb) >= 2:
        from sklearn.decomposition import PCA  # lazy: scikit-learn takes seconds to import

        xy = PCA(n_components=2, random_state=0).fit_transform(emb.astype(np.float64))
        fig, ax = plt.subplots(figsize=(6, 5))
        for t in tasks:
            sel = task == task_index[t]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=t, color=colors[t])
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7, markerscale=2)
        plots["embedding PCA by task_type"] = _png(fig)
        plt.close(fig)
    return plots


def _table(rows: list[list[Any]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def render_html(stats: dict[str, Any], plots: dict[str, str], title: str = "sftlab data stats") -> str:
    """A single self-contained HTML page (no external resources)."""
    pct_head = ["task_type", "count"] + [f"answer {p}" for p in ("p5", "p50", "p95")] + ["prompt p50"]
    per_task = [[t, v["count"], *(v["answer_len"].get(p, "") for p in ("p5", "p50", "p95")),
                 v["prompt_len"].get("p50", "")] for t, v in stats["per_task_type"].items()]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{stats['records']} records; lengths in {stats['length_unit']}.</p>",
             "<h2>Task types</h2>", _table(per_task, pct_head),
             "<h2>Lengths (all records)</h2>",
             _table([[k, *stats[k].values()] for k in ("prompt_len", "answer_len")],
                    ["", *stats["prompt_len"].keys()]),
             "<h2>Assistant turns per record</h2>", _table(list(map(list, stats["assistant_turns"].items())),
                                                           ["turns", "records"]),
             "<h2>Script mix</h2>", _table(list(map(list, stats["scripts"].items())), ["script", "records"]),
             "<h2>Most frequent answer tokens</h2>", _table(stats["top_answer_tokens"], ["token", "count"])]
    if "diversity" in stats:
        d = stats["diversity"]
        parts += ["<h2>Embedding diversity</h2>",
                  _table([[k, v] for k, v in d.items()], ["measure", "value"])]
    parts.append("<h2>Plots</h2>")
    for name, b64 in plots.items():
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{html.escape(name)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_stats(records: Sequence[dict[str, Any]], out_dir: str | Path, *, tokenizer: Any = None,
                emb: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Write stats.json and stats.html into out_dir for records in memory; returns the stats."""
    return write_stats_report(compute_stats(records, tokenizer=tokenizer, emb=emb, seed=seed), out_dir, emb)


def write_stats_report(stats: dict[str, Any], out_dir: str | Path, emb: np.ndarray | None = None) -> dict[str, Any]:
    """Write stats.json and stats.html (StatsTally.summary) into out_dir; returns the stats."""
    out = Path(out_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(stats, emb)
    saved = {k: v for k, v in stats.items() if not k.startswith("_")}
    write_json(saved, out / "stats.json")
    write_text(render_html(saved, plots), out / "stats.html")
    return stats
