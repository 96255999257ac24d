"""The embedded demo: tiny model + synthetic multi-task chat data with exactly checkable answers.

`sftlab demo` builds the tiny model (BPE trained on the demo texts), writes the dataset, measures exact
match per task_type, trains with the ordinary `train` path, measures again, and writes the run report.
The same config with `model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct` is what a real user runs.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM

from sftlab.config import build_config
from sftlab.data.records import make_record, write_jsonl
from sftlab.data.render import load_tokenizer
from sftlab.eval.during_training import generation_eval
from sftlab.eval.generate import exact_match_by_task, generate_replies
from sftlab.eval.run import compare_models_on_records
from sftlab.io import write_text
from sftlab.report import write_report
from sftlab.tiny import build_tiny_model
from sftlab.train.loop import train

COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
             ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago"),
             ("Greece", "Athens"), ("Cuba", "Havana"), ("Poland", "Warsaw"), ("Iran", "Tehran"),
             ("Austria", "Vienna"), ("Canada", "Ottawa"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"),
             ("Germany", "Berlin"), ("Russia", "Moscow"), ("Thailand", "Bangkok")]
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "music", "light", "ocean", "bread", "glass", "train", "horse", "piano", "winter", "garden", "silver", "rocket", "candle", "forest", "mirror", "pencil", "island", "butter", "dragon"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
PLURAL_PROMPTS = ["What is the plural of {w}?", "Plural of {w}?", "Give the plural form of {w}."]
UPPER_PROMPTS = ["Write {w} in capital letters.", "Uppercase: {w}", "Spell {w} in upper case."]
CAPITAL_PROMPTS = ["What is the capital of {c}?", "Name the capital city of {c}.", "Capital of {c}?",
                   "Which city is the capital of {c}?", "Tell me the capital of {c}."]


def _task(rng: random.Random, task: str) -> list[dict[str, Any]]:
    """One conversation of the given task; the last assistant message is the checkable answer."""
    if task == "facts/capital":
        c, cap = rng.choice(COUNTRIES)
        return [{"role": "user", "content": rng.choice(CAPITAL_PROMPTS).format(c=c)},
                {"role": "assistant", "content": cap}]
    if task == "text/plural":
        w = rng.choice(WORDS)
        return [{"role": "user", "content": rng.choice(PLURAL_PROMPTS).format(w=w)},
                {"role": "assistant", "content": w + ("es" if w.endswith(("s", "sh", "ch", "x")) else "s")}]
    if task == "text/uppercase":
        w = rng.choice(WORDS)
        return [{"role": "user", "content": rng.choice(UPPER_PROMPTS).format(w=w)},
                {"role": "assistant", "content": w.upper()}]
    if task == "list/next_number":
        a = rng.randint(0, 49)
        return [{"role": "user", "content": f"What number comes after {a}?"}, {"role": "assistant", "content": str(a + 1)}]
    if task == "dialogue/recall":
        col = rng.choice(COLOURS)
        return [{"role": "user", "content": f"My favourite colour is {col}."},
                {"role": "assistant", "content": "Noted, I will remember that."},
                {"role": "user", "content": "What is my favourite colour?"},
                {"role": "assistant", "content": col}]
    if task == "math/add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
    raise ValueError(task)


# Six task types a model of this size learns within about two minutes of CPU training (measured: every type
# >= 90 % exact match after ~85 s of training on 2 cores). Tasks that need induction over the prompt were
# tried and stayed far below that at this budget: copying a word list or counting up to a bound (0-5 %),
# and picking the first / last word of a list (18-38 % even with 12 epochs: the 128-wide model learns "some
# word of the list", not which one). A demo that reads as "training does not work" teaches the wrong lesson,
# so the word tasks are lexical transformations over a fixed vocabulary (plural, upper case).
TASKS = ["facts/capital", "text/plural", "text/uppercase", "list/next_number", "dialogue/recall", "math/add"]
CLOSED_TASKS = ("facts/capital", "dialogue/recall", "math/add", "list/next_number", "text/plural",
                "text/uppercase")  # few distinct prompts


def make_demo_data(n_train: int = 3000, n_eval: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out eval records (eval prompts never appear verbatim in train)."""
    rng = random.Random(seed)
    train, evals, seen = [], [], set()
    for i in range(n_train):
        task = TASKS[i % len(TASKS)]
        msgs = _task(rng, task)
        seen.add(json.dumps(msgs))
        train.append(make_record(msgs, id=f"demo-train-{i}", task_type=task, source="sftlab-demo"))
    per_task = {t: 0 for t in TASKS}
    attempts = 0
    while min(per_task.values()) < n_eval and attempts < 100_000:
        attempts += 1
        task = TASKS[attempts % len(TASKS)]
        if per_task[task] >= n_eval:
            continue
        msgs = _task(rng, task)
        key = json.dumps(msgs)
        if key in seen and task not in CLOSED_TASKS:
            continue  # open-ended tasks are evaluated on unseen inputs; closed ones can only repeat
        per_task[task] += 1
        evals.append(make_record(msgs, id=f"demo-eval-{attempts}", task_type=task, source="sftlab-demo"))
    return train, evals


BALANCE_HINT = """\
# Multi-task balancing (docs/DESIGN.md §2.1): train.task_epochs above gives math/add a second pass per epoch;
# train.task_weights weights a task in the loss instead (numerator only); loss/<task>, loss_share/<task> and
# token_share/<task> in metrics.jsonl show the effect, e.g.
#   task_weights: {math/add: 3.0}
"""


def demo_config(out: Path, model_dir: str, train_path: Path, eval_path: Path) -> dict[str, Any]:
    """The demo's training config (also written to OUT/demo.yaml for users to copy)."""
    return {
        "model": {"name_or_path": model_dir, "dtype": "fp32", "attn_implementation": "eager"},
        "data": {"train": [str(train_path)], "eval": [str(eval_path)], "max_length": 128,
                 "train_on": "all_assistant", "batching": "pad", "group_by_length": True},
        "train": {"output_dir": str(out / "run"), "loss": "turn", "per_device_train_batch_size": 16,
                  "gradient_accumulation_steps": 2, "learning_rate": 5e-3, "lr_scheduler_type": "cosine",
                  "warmup_ratio": 0.05, "weight_decay": 0.01, "num_train_epochs": 8, "logging_steps": 10,
                  "eval_steps": 100, "save_steps": 0, "seed": 42,
                  # arithmetic is the slowest task to learn: a second pass over it per epoch (docs/DESIGN.md
                  # §2.1) takes it from ~75 % to 100 % exact match at this budget
                  "task_epochs": {"math/add": 2}},
    }


def run_demo(out: str | Path = "runs/demo", overrides: list[str] = ()) -> dict[str, Any]:
    """Build, train, evaluate; returns the per-task before/after table."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_recs, eval_recs = make_demo_data()
    train_path, eval_path = out / "data" / "train.jsonl", out / "data" / "eval.jsonl"
    write_jsonl(train_recs, train_path)
    write_jsonl(eval_recs, eval_path)
    texts = [m["content"] for r in train_recs for m in r["messages"]]
    model_dir = out / "tiny-model"
    if not any(o.startswith("model.name_or_path=") for o in overrides):
        build_tiny_model(model_dir, texts, vocab_size=512, hidden_size=128, num_layers=4, num_heads=4,
                         intermediate_size=384)
    raw = demo_config(out, str(model_dir), train_path, eval_path)
    cfg = build_config(raw, list(overrides), source="demo")
    write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False) + BALANCE_HINT, out / "demo.yaml")
    print(f"demo data: {len(train_recs)} train / {len(eval_recs)} eval records in {out / 'data'}")
    # data and model were just rebuilt: replace the old run
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"overwrite_output_dir": not cfg.train.resume})})

    prompts = [r["messages"][:-1] for r in eval_recs]
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.chat_template)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    before = exact_match_by_task(eval_recs, generate_replies(base, tok, prompts, max_new_tokens=24))
    del base

    t_train = time.time()
    final = train(cfg, generation_eval)
    train_s = time.time() - t_train

    tuned = AutoModelForCausalLM.from_pretrained(final)
    tok = load_tokenizer(str(final))
    after = exact_match_by_task(eval_recs, generate_replies(tuned, tok, prompts, max_new_tokens=24))
    table = {t: {"before": before[t]["exact_match"], "after": after[t]["exact_match"],
                 "stopped_after": after[t]["stopped"], "n": after[t]["n"]} for t in after}
    run_dir = Path(cfg.train.output_dir)
    write_text(json.dumps(table, indent=2), run_dir / "eval_results.json")
    _print_table(table, train_s, time.time() - t0)
    print(f"report:     {write_report(run_dir)}")
    print(f"run dir:    {run_dir}\nmetrics:    {run_dir / 'metrics.jsonl'}\ncheckpoint: {final}")

    # Closing eval (`sftlab eval`): the trained model vs the base model, judged pairwise in both orders by a
    # rule-based judge that knows the right answers.
    vs_base = compare_models_on_records(eval_path, str(final), cfg.model.name_or_path, run_dir / "eval_vs_base",
                                        max_new_tokens=24)
    p = vs_base["judge"]["pairwise"]
    print(f"vs base:    win {p['outright_win_rate']:.0%} / tie {p['tie_rate']:.0%} / loss {p['loss_rate']:.0%} "
          f"(swap consistency {p['swap_consistency']:.0%}); {run_dir / 'eval_vs_base' / 'report.html'}")
    return table


def _print_table(table: dict[str, Any], train_s: float, total_s: float) -> None:
    t = Table(title=f"exact match per task_type (train {train_s:.0f}s, total {total_s:.0f}s)")
    for col in ("task_type", "before", "after", "stops at <|im_end|>", "n"):
        t.add_column(col)
    for task, row in table.items():
        t.add_row(task, f"{row['before']:.0%}", f"{row['after']:.0%}", f"{row['stopped_after']:.0%}", str(row["n"]))
    Console().print(t)
