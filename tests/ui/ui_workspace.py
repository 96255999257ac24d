"""Builders of what `sftlab ui` shows, shared by the UI tests and tests/ui/make_screenshots.py: a tiny training run,
judged eval dirs (no LLM: the rule-based reference-match judge), a dataset with rejects, and damaged dirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASKS = ("math/add", "text/repeat", "facts/capital")
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
            ("Peru", "Lima")]


def records(n: int = 36) -> list[dict[str, Any]]:
    """Short chat records over three task types (every fourth two-turn)."""
    out = []
    for i in range(n):
        task = TASKS[i % 3]
        a, b = i % 7, (i * 3) % 5
        if task == "math/add":
            q, ans = f"what is {a} plus {b}?", str(a + b)
        elif task == "text/repeat":
            q, ans = f"repeat: word{i}", f"word{i} word{i}"
        else:
            country, city = CAPITALS[(i // 3) % len(CAPITALS)]
            q, ans = f"capital of {country}?", city
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        if i % 4 == 0:
            msgs += [{"role": "user", "content": "say it again"}, {"role": "assistant", "content": ans,
                                                                      "loss_weight": 0.5}]
        out.append({"id": f"r{i}", "messages": msgs, "task_type": task, "source": "test", "meta": {}})
    return out


def write_data(path: Path, recs: list[dict[str, Any]], bad_lines: bool = True) -> Path:
    """JSONL records; with bad_lines, two rows the reader rejects (malformed JSON, empty answer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in recs]
    if bad_lines:
        lines.insert(3, '{"id": "broken", "messages": [')
        lines.insert(7, json.dumps({"id": "empty", "messages": [{"role": "user", "content": "hi"},
                                                                {"role": "assistant", "content": ""}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_config(model: Path, data: Path, out: Path, max_steps: int = 12, **train: Any) -> dict[str, Any]:
    return {"model": {"name_or_path": str(model)},
            "data": {"train": [{"path": str(data), "format": "auto"}], "eval": [str(data)], "max_length": 64,
                     "on_error": "skip"},
            "train": {"output_dir": str(out), "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                      "learning_rate": 3e-3, "max_steps": max_steps, "logging_steps": 1, "eval_steps": 4, "seed": 3,
                      "report_to": [], **train}}


def train_run(model: Path, data: Path, out: Path, max_steps: int = 12, **train: Any) -> Path:
    """A real `sftlab train` run (in this process) into out; returns out."""
    from sftlab.config import build_config
    from sftlab.train.loop import train as run_train

    run_train(build_config(run_config(model, data, out, max_steps, **train), []))
    return out


EVAL_ITEMS = [tuple(row.split(" | ")) for row in """
math/add | what is 2 plus 3? | 5 | 5 | 6
math/add | what is 4 plus 4? | 8 | 8 | 8
math/add | what is 1 plus 6? | 7 | 9 | 7
math/add | what is 3 plus 3? | 6 | 6 | 5
text/repeat | repeat: apple | apple apple | apple apple | apple
text/repeat | repeat: tree | tree tree | tree | tree tree
text/repeat | repeat: sun | sun sun | sun sun | sun sun
facts/capital | capital of France? | Paris | Paris | Lyon
facts/capital | capital of Japan? | Tokyo | Kyoto | Tokyo
facts/capital | capital of Peru? | Lima | Lima | Cusco
facts/capital | capital of Italy? | Rome | Rome | Rome
facts/capital | capital of Egypt? | Cairo | Cairo | Giza
""".strip().splitlines()]  # (task_type, question, reference, model reply, baseline reply)


def eval_dir(out: Path, *, pairwise: bool = True, flip: bool = False, model: str = "tiny-after") -> Path:
    """A judged eval output dir written by sftlab's own eval code (predictions, summary, bad cases, report)."""
    from sftlab.eval.judge import ReferenceMatchJudge
    from sftlab.eval.run import finish

    rows = []
    for i, (task, q, ref, reply, base) in enumerate(EVAL_ITEMS):
        if flip:
            reply, base = base, reply
        row = {"id": f"demo:e{i}", "set": "demo", "record_id": f"e{i}", "turn": 1, "task_type": task,
               "prompt": [{"role": "user", "content": q}], "reference": ref, "reply": reply}
        if pairwise:
            row["baseline_reply"] = base
        rows.append(row)
    judge = {"mode": "pairwise" if pairwise else "single", "dimensions": ["correctness"],
             "cache": str(out.parent / f".judge-{out.name}.sqlite")}
    finish(rows, out, {"data": ["demo"]}, metrics=["exact_match"], judge_cfg=judge, info={"model": model},
           generator=ReferenceMatchJudge())
    return out


def old_eval_dir(out: Path) -> Path:
    """An eval dir as an older sftlab could have left it: no summary version, a renamed score layout, a torn line."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"n": 2, "model": "old", "metrics": {"all": {"exact_match": 0.5}}}))
    (out / "predictions.jsonl").write_text(json.dumps({"id": "a", "task_type": "t", "reply": "x", "prompt": "q"})
                                           + "\n" + '{"id": "b", "reply"' + "\n" + json.dumps({"id": "c"}) + "\n")
    (out / "bad_cases.jsonl").write_text("")
    return out


def damaged_runs(root: Path) -> dict[str, Path]:
    """Run dirs a crash or a copy can leave: a half-written one and one whose metrics have a corrupt line."""
    half = root / "half-written"
    half.mkdir(parents=True)
    (half / "config.yaml").write_text("model:\n  name_or_path: [unclosed\n")
    (half / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "epoch": 0.1}\n{"step": 2, "lo')
    corrupt = root / "corrupt-metrics"
    corrupt.mkdir()
    lines = [json.dumps({"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "epoch": s / 10}) for s in range(1, 11)]
    lines.insert(4, "this is not json")
    lines.insert(6, json.dumps([1, 2, 3]))
    (corrupt / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return {"half": half, "corrupt": corrupt}
