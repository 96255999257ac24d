"""Does bf16 pay on this CPU? The probe training uses (`cpu_bf16_matmul_speedup`) next to a real training step.

`model.dtype: auto` on CPU takes bf16 autocast only where `cpu_bf16_matmul_speedup` (one 1024 x 512 x 1536 matmul
per dtype, one core) says bf16 is >= 1.1x faster than fp32. This script checks that the probe agrees with what
matters: forward + backward of the benchmark's `large` model (hidden 512 x 8 layers, Llama) on 4 x 256 tokens,
fp32 vs bf16 autocast over fp32 weights, alternated, best of `--repeats`, one thread.

    .venv/bin/python benchmarks/bench_precision.py
"""

from __future__ import annotations

import argparse
import time

import torch


def step_seconds(model: torch.nn.Module, ids: torch.Tensor, dtype: torch.dtype | None) -> float:
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    return time.perf_counter() - t


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftlab.train.model import BF16_MIN_SPEEDUP, cpu_bf16_matmul_speedup, resolve_precision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, intermediate_size=1536, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, 2048, (4, 256))
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for dtype in (None, torch.bfloat16):  # warm-up
        step_seconds(model, ids, dtype)
    for _ in range(a.repeats):
        best["fp32"] = min(best["fp32"], step_seconds(model, ids, None))
        best["bf16"] = min(best["bf16"], step_seconds(model, ids, torch.bfloat16))
    print(f"CPU flags: AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}")
    print(f"probe: bf16 matmul {cpu_bf16_matmul_speedup():.2f}x fp32 (bf16 used at >= {BF16_MIN_SPEEDUP}x)")
    print(f"training step (512 x 8, 4 x 256 tokens): fp32 {best['fp32'] * 1e3:,.0f} ms, bf16 autocast "
          f"{best['bf16'] * 1e3:,.0f} ms -> bf16 is {best['fp32'] / best['bf16']:.2f}x fp32")
    print(f"model.dtype=auto here: {resolve_precision('auto', torch.device('cpu'))[1]}")


if __name__ == "__main__":
    main()
