"""How much faster can sftlab be than TRL on the same data, counting work only? Model FLOPs per optimizer
step of each trainer's batch layout on bench_batching.py's rendered data (run that first: it writes the
samples to --workdir), from the model config:

- linear layers: every token, both trainers (q/k/v/o projections, MLP);
- attention: sftlab's `sdpa_varlen` pays Σ len(len+1)/2 per sample; TRL's padding-free rows under sdpa pay a
  dense block-causal mask over the whole row: T² scores per row with a 4-D mask (CPU sdpa computes every
  block), T(T+1)/2 if the kernel skipped the blocks above the diagonal;
- LM head: sftlab's supervised positions only, TRL every position.

Backward is ~2× forward for all three, so the forward ratio is the step's. A throughput ratio above the FLOP
ratio would need the same matmuls to run faster in one trainer than in the other.

    .venv/bin/python benchmarks/flops_bound.py --groups large:longtail,qwen:longtail,tiny:alpaca
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def group_ratio(workdir: Path, model: str, data: str, micro: int) -> dict:
    cfg = json.loads((workdir / model / "config.json").read_text())
    h, layers, ffn, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * (h // cfg["num_attention_heads"])
    samples = json.loads((workdir / (f"{data}-qwen.json" if model == "qwen" else f"{data}.json")).read_text())
    lens = [len(s["input_ids"]) for s in samples]
    sup = sum(sum(1 for x in s["labels"] if x != -100) for s in samples)
    tokens = sum(lens)
    linear = tokens * layers * (2 * h * h + 2 * h * kv + 3 * h * ffn)
    rows = [lens[i:i + micro] for i in range(0, len(lens), micro)]  # padding-free: one row per micro-batch

    def attn(keys: float) -> float:
        return layers * keys * 2 * h  # QK^T and AV

    ours = linear + attn(sum(n * (n + 1) / 2 for n in lens)) + sup * h * vocab
    trl_full = linear + attn(sum(sum(r) ** 2 for r in rows)) + tokens * h * vocab
    trl_causal = linear + attn(sum(sum(r) * (sum(r) + 1) / 2 for r in rows)) + tokens * h * vocab
    return {"group": f"{model}:{data}", "tokens": tokens, "mean_len": tokens / len(lens),
            "supervised_share": sup / tokens, "linear_share_ours": linear / ours,
            "trl_over_ours_dense": trl_full / ours, "trl_over_ours_causal_skip": trl_causal / ours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", default="large:longtail,qwen:longtail,qwen:alpaca,tiny:alpaca,tiny:longtail")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench"))
    p.add_argument("--micro", type=int, default=4)
    a = p.parse_args()
    print("| group | tokens | mean len | supervised | linear share (ours) | TRL/ours FLOPs, dense mask | "
          "TRL/ours FLOPs, causal skip |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for g in a.groups.split(","):
        model, data = g.split(":")
        try:
            r = group_ratio(a.workdir, model, data, a.micro)
        except FileNotFoundError as e:
            print(f"| {g} | not rendered yet ({e.filename}) |")
            continue
        print(f"| {r['group']} | {r['tokens']:,} | {r['mean_len']:.0f} | {r['supervised_share']:.0%} | "
              f"{r['linear_share_ours']:.0%} | {r['trl_over_ours_dense']:.2f}x | {r['trl_over_ours_causal_skip']:.2f}x |")


if __name__ == "__main__":
    main()
