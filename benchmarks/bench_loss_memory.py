"""Peak memory of the loss: full logits (HF `model(labels=...)`) vs sftlab's supervised-only chunked logits.

Each variant runs forward + backward in its own subprocess and reports its peak RSS growth (CPU) or
torch.cuda.max_memory_allocated (GPU). SFT masks the prompt, so only a fraction of positions need logits;
with a large vocabulary the [rows, length, vocab] logits (and their gradient) dominate activation memory.

    .venv/bin/python benchmarks/bench_loss_memory.py [--vocab 32000 --length 1024 --rows 4 --supervised 0.3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _child(variant: str, vocab: int, length: int, rows: int, supervised: float, device: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sftlab.train.loss import supervised_token_nll

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=512, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(device)
    ids = torch.randint(0, vocab, (rows, length), device=device)
    labels = ids.clone()
    labels[:, : int(length * (1 - supervised))] = -100  # the prompt part is not supervised
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if variant == "full_logits":
        loss = model(input_ids=ids, labels=labels).loss
    else:
        rows_i, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
        batch = {"input_ids": ids, "position_ids": torch.arange(length, device=device).expand(rows, -1),
                 "target_pos": (rows_i, cols), "targets": labels[rows_i, cols + 1]}
        loss = supervised_token_nll(model, batch, chunk_size=1024).mean()
    loss.backward()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_mib": peak / 2**20, "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--supervised", type=float, default=0.3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.vocab, a.length, a.rows, a.supervised, a.device)))
        return
    results = []
    for variant in ["full_logits", "supervised_chunked", "full_logits", "supervised_chunked"]:
        cmd = [sys.executable, __file__, "--child", variant, "--vocab", str(a.vocab), "--length", str(a.length),
               "--rows", str(a.rows), "--supervised", str(a.supervised), "--device", a.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
    print(f"vocab {a.vocab}, {a.rows} x {a.length} tokens, {a.supervised:.0%} supervised, device {a.device}")
    print("| variant | peak memory growth (MiB), 2 runs | loss |\n|---|---|---|")
    for v in ("full_logits", "supervised_chunked"):
        rs = [r for r in results if r["variant"] == v]
        peaks = " / ".join(f"{r['peak_mib']:.0f}" for r in rs)
        print(f"| {v} | {peaks} | {rs[0]['loss']:.4f} |")


if __name__ == "__main__":
    main()
