"""The estimator checked against measurement, in one command:

    .venv/bin/python benchmarks/bench_estimate.py            # Qwen2.5-7B table + probe vs full demo training
    .venv/bin/python benchmarks/bench_estimate.py --table    # only the Qwen2.5-7B table (seconds, no training)

1. Qwen2.5-7B (config only, from its public config.json values): full fine-tuning vs LoRA vs QLoRA on one
   80 GB GPU and full fine-tuning with FSDP over 8 (docs/estimate.md compares it with LLaMA-Factory's table).
2. `--probe STEPS` on the demo config against the full demo training, timed in the same process one after
   the other (so both see the same machine load): predicted vs measured wall time of `train`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def qwen_table() -> None:
    from test_estimate import qwen7b_fsdp_table, qwen7b_table

    print_table(qwen7b_table(), "")
    print_table(qwen7b_fsdp_table(), ", full fine-tuning over 8 GPUs by train.fsdp setting")


def print_table(rows: dict, what: str) -> None:
    from sftlab.train.estimate import format_gib, rows_for_table

    labels = [label for label, _ in rows_for_table(next(iter(rows.values())))]
    print(f"\nQwen2.5-7B{what}, bf16 autocast, gradient checkpointing, micro-batch 1 x 2048 tokens (GiB per device)")
    print(f"{'term':40}" + "".join(f"{k:>20}" for k in rows))
    for i, label in enumerate(labels):
        print(f"{label:40}" + "".join(f"{format_gib(rows_for_table(e)[i][1]):>20}" for e in rows.values()))
    print(f"{'total':40}" + "".join(f"{format_gib(e.total_bytes):>20}" for e in rows.values()))
    print(f"{'offloaded to host memory (per process)':40}" + "".join(f"{format_gib(e.offloaded_bytes):>20}"
                                                                      for e in rows.values()))
    print(f"{'fits one H100 80GB':40}" + "".join(f"{str(e.fits):>20}" for e in rows.values()))
    print(f"{'largest micro-batch (x 2048)':40}" + "".join(f"{e.max_micro_batch:>20}" for e in rows.values()))
    print(f"{'trainable params':40}" + "".join(f"{e.trainable_params:>20,}" for e in rows.values()))


def demo_probe(probe_steps: int, n_train: int, epochs: float) -> tuple[float, float, dict]:
    """(predicted s, measured s, probe dict) for the demo config on `n_train` demo samples; the probe dict
    also gets the full run's process CPU time (`measured_cpu_s`) next to its `predicted_cpu_s`."""
    import torch

    from sftlab.config import build_config
    from sftlab.data.records import write_jsonl
    from sftlab.demo import demo_config, make_demo_data
    from sftlab.tiny import build_tiny_model
    from sftlab.train.loop import train
    from sftlab.train.probe import probe_run

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(tempfile.mkdtemp(prefix="sftlab-bench-estimate-"))
    train_recs, eval_recs = make_demo_data(n_train=n_train)
    write_jsonl(train_recs, out / "train.jsonl")
    write_jsonl(eval_recs, out / "eval.jsonl")
    texts = [m["content"] for r in train_recs for m in r["messages"]]
    build_tiny_model(out / "model", texts, vocab_size=512, hidden_size=128, num_layers=4, num_heads=4,
                     intermediate_size=384)
    raw = demo_config(out, str(out / "model"), out / "train.jsonl", out / "eval.jsonl")
    cfg = build_config(raw, [f"train.num_train_epochs={epochs}"], source="demo")
    probe = probe_run(cfg, probe_steps, quiet=True)
    t0, c0 = time.perf_counter(), time.process_time()
    train(cfg)
    probe["measured_cpu_s"] = time.process_time() - c0
    return probe["predicted_s"], time.perf_counter() - t0, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only the Qwen2.5-7B table")
    ap.add_argument("--probe-steps", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=3000, help="demo train samples (the demo uses 3000)")
    ap.add_argument("--epochs", type=float, default=5, help="demo epochs (the demo uses 5)")
    args = ap.parse_args()
    qwen_table()
    if args.table:
        return
    predicted, measured, probe = demo_probe(args.probe_steps, args.n_train, args.epochs)
    print(f"\ndemo config ({args.n_train} samples, {args.epochs} epochs, {probe['total_steps']} steps), "
          f"--probe {args.probe_steps}:")
    print(f"{'probe step time':28}{probe['step_s']:.4f} s ± {probe['step_s_sem']:.4f} (start-up {probe['startup_s']:.1f} s)")
    print(f"{'predicted train time':28}{predicted:.1f} s ± {probe['uncertainty_s']:.1f}")
    print(f"{'measured train time':28}{measured:.1f} s")
    print(f"{'predicted / measured':28}{predicted / measured:.3f}")
    print(f"{'CPU time: predicted':28}{probe['predicted_cpu_s']:.1f} s, measured {probe['measured_cpu_s']:.1f} s, "
          f"ratio {probe['predicted_cpu_s'] / probe['measured_cpu_s']:.3f} (process CPU time: less sensitive to load)")


if __name__ == "__main__":
    main()
