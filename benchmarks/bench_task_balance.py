"""Per-task exact match with and without a task weight / extra task epochs (docs/DESIGN.md §2.1).

The embedded demo (tiny model + synthetic multi-task chats with checkable answers), trained once per variant
with the same seed, data and schedule; only `train.task_weights` / `train.task_epochs` change. Prints one
markdown table: exact match per task_type after training, per variant, plus steps and wall time.

    .venv/bin/python benchmarks/bench_task_balance.py                  # ~10-20 min on a busy 2-core machine
    .venv/bin/python benchmarks/bench_task_balance.py --task list/count_up --weight 4 --n-train 1800
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/sftlab-bench/task_balance")
    ap.add_argument("--task", default="math/add", help="the task to weight / repeat")
    ap.add_argument("--weight", type=float, default=3.0)
    ap.add_argument("--epochs-factor", type=float, default=2.0, help="train.task_epochs for --task")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--epochs", type=float, default=3.0)  # the demo itself trains 5
    ap.add_argument("--variants", default="baseline,weight,epochs,zero")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from sftlab.config import build_config
    from sftlab.data.records import write_jsonl
    from sftlab.data.render import load_tokenizer
    from sftlab.demo import demo_config, make_demo_data
    from sftlab.eval.generate import exact_match_by_task, generate_replies
    from sftlab.tiny import build_tiny_model
    from sftlab.train.loop import train

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_recs, eval_recs = make_demo_data(n_train=args.n_train, n_eval=40)
    train_path, eval_path = out / "train.jsonl", out / "eval.jsonl"
    write_jsonl(train_recs, train_path)
    write_jsonl(eval_recs, eval_path)
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        texts = [m["content"] for r in train_recs for m in r["messages"]]
        build_tiny_model(model_dir, texts, vocab_size=512, hidden_size=128, num_layers=4, num_heads=4,
                         intermediate_size=384)
    prompts = [r["messages"][:-1] for r in eval_recs]
    variants = {"baseline": {}, "weight": {"task_weights": {args.task: args.weight}},
                "epochs": {"task_epochs": {args.task: args.epochs_factor}},
                "zero": {"task_weights": {args.task: 0.0}}}
    labels = {"baseline": "baseline", "weight": f"weight {args.task}={args.weight:g}",
              "epochs": f"task_epochs {args.task}={args.epochs_factor:g}", "zero": f"weight {args.task}=0"}
    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        raw = demo_config(out / name, str(model_dir), train_path, eval_path)
        raw["data"]["eval"] = []
        raw["train"].update({"num_train_epochs": args.epochs, "eval_steps": 0, "logging_steps": 5,
                             "report_to": [], **variants[name]})
        cfg = build_config(raw, source=name)
        t0 = time.time()
        with open(out / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
            final = train(cfg)
        seconds = time.time() - t0
        model = AutoModelForCausalLM.from_pretrained(final)
        em = exact_match_by_task(eval_recs, generate_replies(model, load_tokenizer(str(final)), prompts,
                                                             max_new_tokens=24))
        steps = sum(1 for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()
                    if '"loss"' in line)
        results[name] = {"label": labels[name], "exact_match": {t: v["exact_match"] for t, v in em.items()},
                         "seconds": seconds, "logged_steps": steps}
        print(f"{labels[name]}: {seconds:.0f}s", flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2))

    tasks = sorted({t for r in results.values() for t in r["exact_match"]})
    print("\n| task_type | " + " | ".join(r["label"] for r in results.values()) + " |")
    print("|---|" + "---|" * len(results))
    for t in tasks:
        mark = " (weighted)" if t == args.task else ""
        print(f"| {t}{mark} | " + " | ".join(f"{r['exact_match'].get(t, 0):.0%}" for r in results.values()) + " |")
    print("| train time | " + " | ".join(f"{r['seconds']:.0f} s" for r in results.values()) + " |")
    print(f"\n{args.n_train} train samples, {args.epochs:g} epochs, 40 eval prompts per task; summary in "
          f"{out / 'summary.json'}")


if __name__ == "__main__":
    main()
