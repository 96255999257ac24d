"""Sample-isolating attention kernels on one padding-free row: forward + backward time, side by side.

A row of T tokens holds k samples. The kernels compared (docs/DESIGN.md §3, sftlab/train/attention.py):
    block_mask   sdpa with a dense 4-D block-diagonal causal mask (the old CPU path: T² whatever k is)
    sdpa_varlen  sftlab's kernel: one causal sdpa call per sample span (Σ len²)
    flex         torch flex_attention with a document BlockMask (eager; `--compile` adds the compiled one);
                 torch 2.13 has no flex backward on CPU, so on CPU it prints n/a: training cannot use it there

    .venv/bin/python benchmarks/bench_attention.py                       # rows of 1, 4, 16 samples, T=1024
    .venv/bin/python benchmarks/bench_attention.py --length 2048 --compile

Times are medians of `--repeats` forward+backward passes of the attention op alone (8 heads × 64 dims, the
benchmark's `large` model), fp32, one thread; the sample lengths of a row are random (seed 0) and sum to T.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def split_lengths(total: int, k: int, gen: torch.Generator) -> list[int]:
    """k random positive lengths summing to total."""
    if k == 1:
        return [total]
    cuts = torch.randperm(total - 1, generator=gen)[:k - 1].add(1).sort().values.tolist()
    bounds = [0] + cuts + [total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def block_mask_attention(q, k, v, lengths):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (doc[:, None] == doc[None, :]) & torch.ones(len(doc), len(doc), dtype=torch.bool).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None])


def varlen_attention(q, k, v, lengths):
    return torch.cat([F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                      for qs, ks, vs in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2),
                                            strict=True)], dim=2)


def flex_kernel(compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    fn = torch.compile(flex_attention) if compiled else flex_attention

    def run(q, k, v, lengths):
        doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

        def document_causal(b, h, q_idx, kv_idx):
            return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

        bm = create_block_mask(document_causal, None, None, len(doc), len(doc), device="cpu")
        return fn(q, k, v, block_mask=bm)

    return run


def time_kernel(fn, length: int, lengths: list[int], heads: int, dim: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, heads, length, dim, generator=gen, requires_grad=True) for _ in range(3))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = fn(q, k, v, lengths)
        out.sum().backward()
        if i:  # the first pass warms up (allocations, compilation)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--samples", default="1,4,16", help="samples per row, comma-separated")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time flex_attention under torch.compile")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    kernels = {"block_mask": block_mask_attention, "sdpa_varlen": varlen_attention, "flex": flex_kernel(False)}
    if a.compile:
        kernels["flex_compiled"] = flex_kernel(True)
    gen = torch.Generator().manual_seed(0)
    print(f"| samples/row | {' | '.join(f'{n} ms' for n in kernels)} | sdpa_varlen vs block_mask |")
    print(f"|---:|{'---:|' * len(kernels)}---:|")
    for k in (int(x) for x in a.samples.split(",")):
        lengths = split_lengths(a.length, k, gen)
        ms: dict[str, float | str] = {}
        for n, fn in kernels.items():
            try:
                ms[n] = 1e3 * time_kernel(fn, a.length, lengths, a.heads, a.dim, a.repeats)
            except NotImplementedError as e:  # torch 2.13: "FlexAttention does not support backward on CPU"
                ms[n] = f"n/a ({str(e).split('.')[0]})"
        cells = " | ".join(f"{ms[n]:.1f}" if isinstance(ms[n], float) else ms[n] for n in kernels)
        print(f"| {k} | {cells} | {ms['block_mask'] / ms['sdpa_varlen']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
