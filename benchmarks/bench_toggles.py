"""Exact step optimizations on / off, side by side in ONE process: the fused RMSNorm / rotary (`model.fused_ops`,
train/fused_ops.py) and the last layer's o_proj + MLP only where the loss reads (train/last_layer.py).

Worker processes of identical code differ by up to ±10 % on the project's machines, more than these effects, so the
comparison runs in ONE process on ONE model: every micro-batch of bench_batching.py's data is run forward + backward
with the optimization on, off, off, on, on, off (toggled in place), and the best of three per variant counts. Prints
the sum over micro-batches and the median per-micro-batch ratio. Everything else is as training runs it (the other
optimization stays on).

    .venv/bin/python benchmarks/bench_batching.py --groups large:longtail --no-trl --rounds 1 --steps 1  # data once
    .venv/bin/python benchmarks/bench_toggles.py --toggle fused_ops --groups large:longtail,tiny:longtail --mode pack
    .venv/bin/python benchmarks/bench_toggles.py --toggle last_layer --groups large:longtail,tiny:alpaca
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_batching as bb  # noqa: E402

from sftlab.train.fused_ops import install_fused_ops  # noqa: E402
from sftlab.train.last_layer import install_last_layer_skip  # noqa: E402
from sftlab.train.loss import supervised_token_loss, token_loss_scale  # noqa: E402


def last_layer_toggle(model: torch.nn.Module):  # noqa: ANN201
    """install_last_layer_skip, then a function that switches it on (True) and off."""
    install_last_layer_skip(model)
    decoder = model.get_decoder()
    read = decoder.sftlab_read_positions

    def use(on: bool) -> None:
        if on:
            decoder.sftlab_read_positions = read
        else:
            decoder.__dict__.pop("sftlab_read_positions", None)
    return use


def fused_ops_toggle(model: torch.nn.Module):  # noqa: ANN201
    """install_fused_ops, then a function that switches the model between fused (True) and transformers' code."""
    modeling = sys.modules[type(model.get_decoder().layers[0].self_attn).__module__]
    original = modeling.apply_rotary_pos_emb
    install_fused_ops(model)
    fused = modeling.apply_rotary_pos_emb
    norms = {m: m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__}

    def use(on: bool) -> None:
        modeling.apply_rotary_pos_emb = fused if on else original
        for m, fwd in norms.items():
            if on:
                m.forward = fwd
            else:
                m.__dict__.pop("forward", None)
    return use


def compare(workdir: Path, model_name: str, data: str, mode: str, n_steps: int, toggle: str) -> dict:
    a = argparse.Namespace(steps=n_steps, global_batch=16, micro=4, max_len=1024, loss_chunk=0, threads=1)
    samples = json.loads(bb.data_file(workdir, model_name, data).read_text())
    suffix = {"fused_ops": "_unfused", "last_layer": "_noskip"}[toggle]  # the runner without it; toggled on below
    runner = bb.OurRunner(workdir / model_name, samples, mode + suffix, a)
    model = runner.model
    use = fused_ops_toggle(model) if toggle == "fused_ops" else last_layer_toggle(model)
    micro = []
    for k in range(min(n_steps, len(samples) // 16)):
        glob = samples[k * 16:(k + 1) * 16]
        denom = sum(s["loss_denom"] for s in glob)
        micro += [(b, denom) for b in runner.batches(glob)]
    total = {True: 0.0, False: 0.0}
    ratios = []
    for b, denom in micro:
        t: dict[bool, list[float]] = {True: [], False: []}
        for on in (True, False, False, True, True, False):
            use(on)
            model.zero_grad(set_to_none=True)
            t0 = time.process_time()
            loss, _ = supervised_token_loss(model, b, token_loss_scale(b, denom), None)
            loss.backward()
            t[on].append(time.process_time() - t0)
        total[True] += min(t[True])
        total[False] += min(t[False])
        ratios.append(min(t[False]) / min(t[True]))
    return {"on_s": total[True], "off_s": total[False], "speedup": total[False] / total[True],
            "median_micro_speedup": statistics.median(ratios), "micro_batches": len(micro)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toggle", default="fused_ops", choices=["fused_ops", "last_layer"])
    p.add_argument("--groups", default="large:longtail,tiny:longtail,tiny:alpaca")
    p.add_argument("--mode", default="padfree", choices=["pad", "padfree", "pack"])
    p.add_argument("--steps", type=int, default=5, help="global batches of 16 samples (4 micro-batches each)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench"))
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"| group | mode | micro-batches | fwd+bwd s, {a.toggle} on | off | speedup | median per micro-batch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for group in a.groups.split(","):
        model_name, data = group.split(":")
        r = compare(a.workdir, model_name, data, a.mode, a.steps, a.toggle)
        print(f"| {group} | {a.mode} | {r['micro_batches']} | {r['on_s']:.2f} | {r['off_s']:.2f} | "
              f"{r['speedup']:.3f}x | {r['median_micro_speedup']:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
