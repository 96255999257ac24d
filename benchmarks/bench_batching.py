"""Training-step throughput of sftlab's pad / padfree / pack layouts, side by side with TRL's SFTTrainer.

    .venv/bin/python benchmarks/bench_batching.py                # the full run (see benchmarks/README.md)
    .venv/bin/python benchmarks/bench_batching.py --groups tiny:longtail --rounds 1 --steps 2   # a quick look
    .venv/bin/python benchmarks/bench_batching.py --groups qwen:longtail,qwen:alpaca   # the real Qwen2.5 vocabulary

What is measured, per (model, data set, mode): non-padding tokens per second of whole optimizer steps
(forward + backward + AdamW step, data collation included: time between consecutive step ends, the
first step of every run excluded as warm-up) per CPU second of the single-threaded worker (the headline:
robust on a shared machine) and per wall second, the padding ratio (padding / computed positions), and the
peak RSS of the process. Every mode runs in its own worker process (so peak RSS is per mode), the workers
of a group stay alive and the parent alternates them run by run (A B C ... A B C ...), so machine noise
hits every mode alike; the table gives medians over all measured steps of all runs.

Same model weights, data, max_len, order of samples and effective batch (global batch of G samples =
micro-batch × accumulation) everywhere. TRL runs with its sequential sampler, gradient checkpointing off
(like ours), fused AdamW, lr 1e-5, max_grad_norm 1 (ours clips too). TRL packing packs the run's whole
sample list up front (not per global batch), one packed row per micro-batch, and accumulates as many rows
per step as the global batches pack to on average (so about the same tokens per step).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OURS = ("pad", "padfree", "pack")
# opt-in variants: padfree / pack on the dense 4-D block mask (the old CPU path), or with torch.compile
OURS_EXTRA = ("padfree_mask", "pack_mask", "padfree_compile", "pack_compile", "padfree_notrim", "pack_notrim",
              "padfree_unfused", "pack_unfused", "padfree_noskip", "pack_noskip")
TRL = ("trl_pad", "trl_padfree", "trl_pack")
MODELS = {  # name -> build_tiny_model kwargs (qwen: qwen_vocab.build_qwen_model, the real 151,936 vocabulary)
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384},
    "large": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1536},
    "qwen": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "intermediate_size": 1536},
}
PHASES = ("collate", "model_fwd", "head_fwd", "head_bwd", "model_bwd", "optimizer")
MARK = "@@BENCH "
# shared/ beside the checkout (main: /work/main -> /work/shared; a worktree sits one level deeper)
ALPACA = next((p / "shared" / "data" / "real" / "alpaca_en_demo.json" for p in Path(__file__).resolve().parents[1:4]
               if (p / "shared" / "data" / "real" / "alpaca_en_demo.json").exists()),
              Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "alpaca_en_demo.json")


# ----------------------------------------------------------------------------------------------- data
def alpaca_records(path: Path) -> list[dict]:
    """alpaca rows -> canonical records (user = instruction + "\\n" + input, assistant = output)."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    recs = []
    for i, r in enumerate(rows):
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        recs.append({"id": f"alpaca-{i}", "task_type": "alpaca", "source": "alpaca_en_demo", "meta": {},
                     "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]})
    random.Random(0).shuffle(recs)
    return recs


def longtail_records(n: int, seed: int = 0) -> list[dict]:
    """Synthetic chats whose answer lengths are log-normal: mostly short, a few very long (the SFT mix
    where padding hurts most). Median answer ~35 words, 1% above ~350."""
    from sftlab.tiny import builtin_texts

    rng = random.Random(seed)
    words = " ".join(builtin_texts(300, seed=seed)).split()
    recs = []
    for i in range(n):
        q = rng.randint(4, 40)
        a = max(1, int(rng.lognormvariate(3.5, 1.1)))
        recs.append({"id": f"lt-{i}", "task_type": "longtail", "source": "synthetic", "meta": {},
                     "messages": [{"role": "user", "content": " ".join(rng.choices(words, k=q))},
                                  {"role": "assistant", "content": " ".join(rng.choices(words, k=a))}]})
    return recs


def data_file(workdir: Path, model: str, data: str) -> Path:
    """Rendered samples of a data set for a model's tokenizer (the tiny models share one, qwen has its own)."""
    return workdir / (f"{data}-qwen.json" if model == "qwen" else f"{data}.json")


def prepare(workdir: Path, groups: list[tuple[str, str]], n_samples: int, max_len: int) -> None:
    """Build the models (one BPE trained on both corpora for tiny/large; Qwen's own) and render the data once
    per tokenizer."""
    from sftlab.data.render import load_tokenizer, render_records
    from sftlab.tiny import build_tiny_model, builtin_texts

    texts = builtin_texts()
    if ALPACA.exists():
        texts += [m["content"] for r in alpaca_records(ALPACA) for m in r["messages"]]
    for model in sorted({m for m, _ in groups}):
        if (workdir / model / "config.json").exists():
            continue
        if model == "qwen":
            from sftlab.qwen_vocab import build_qwen_model

            build_qwen_model(workdir / model, max_position_embeddings=max_len, **MODELS[model])
        else:
            build_tiny_model(workdir / model, texts, vocab_size=2048, max_position_embeddings=max_len,
                             **MODELS[model])
    for model, data in groups:
        out = data_file(workdir, model, data)
        if out.exists() and len(json.loads(out.read_text())) >= n_samples:
            continue
        tok = load_tokenizer(str(workdir / model))
        recs = alpaca_records(ALPACA) if data == "alpaca" else longtail_records(4 * n_samples)
        samples, _ = render_records(recs[: 4 * n_samples], tok, max_length=max_len)
        keep = [{k: s[k] for k in ("input_ids", "labels", "turn_index", "turn_weights", "num_tokens")}
                for s in samples[:n_samples]]
        out.write_text(json.dumps(keep))


# -------------------------------------------------------------------------------------------- workers
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OurRunner:
    """sftlab's step: collate -> supervised_token_loss (fused head, token scale c_i / global D) -> backward; AdamW.

    The attention kernel is the one training picks (`resolve_attention("auto", ...)`: sdpa for pad,
    sdpa_varlen for padfree / pack on CPU); the `*_mask` modes force the dense block mask instead. Hooks on the
    decoder time the step's phases (model forward / backward vs everything else) for the profile table.
    `*_compile` compiles the decoder (train.torch_compile; the compilation falls in the excluded warm-up step);
    `*_notrim` leaves out the heap trim before the embedding's backward that `load_model` installs on CPU;
    `*_unfused` keeps transformers' own RMSNorm and rotary (no `install_fused_ops`, which training does on CPU);
    `*_noskip` runs the last layer's o_proj and MLP at every position (no `install_last_layer_skip`)."""

    def __init__(self, model_dir: Path, samples: list[dict], mode: str, a: argparse.Namespace) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from sftlab.train.attention import register_attention_kernels, resolve_attention
        from sftlab.train.fused_ops import install_fused_ops
        from sftlab.train.last_layer import install_last_layer_skip
        from sftlab.train.loss import attach_loss_coefficients
        from sftlab.train.model import trim_heap_before_embedding_grad

        self.torch, self.a = torch, a
        self.mode = mode.split("_")[0]  # pad / padfree / pack; the suffix says what changes (below)
        self.impl = "sdpa" if mode.endswith("_mask") else resolve_attention("auto", self.mode, "cpu")
        register_attention_kernels()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=self.impl,
                                                          dtype=torch.float32).train()
        if not mode.endswith("_notrim"):
            trim_heap_before_embedding_grad(self.model)  # as load_model does on CPU
        if not mode.endswith("_unfused"):
            install_fused_ops(self.model)  # as training does on CPU
        if not mode.endswith("_noskip"):
            install_last_layer_skip(self.model)  # as training does
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
        attach_loss_coefficients(samples, "turn")
        self.samples = samples
        self.pad_id = 0
        self.marks: dict[str, float] = {}
        if mode.endswith("_compile"):  # no phase hooks inside a compiled module
            self.model.get_decoder().compile(dynamic=True)
        else:
            self._hook_phases()

    def _hook_phases(self) -> None:
        """Time stamps: decoder forward start / end, and the moment the loss head's backward hands the
        gradient of the hidden states to the decoder (so backward splits into head and model parts)."""
        marks = self.marks

        def pre(module, args, kwargs):  # noqa: ANN001
            marks["fwd_start"] = time.perf_counter()

        def post(module, args, kwargs, out):  # noqa: ANN001
            marks["fwd_end"] = time.perf_counter()
            if out.last_hidden_state.requires_grad:
                out.last_hidden_state.register_hook(lambda g: marks.__setitem__("head_bwd_end", time.perf_counter()))

        dec = self.model.get_decoder()
        dec.register_forward_pre_hook(pre, with_kwargs=True)
        dec.register_forward_hook(post, with_kwargs=True)

    def batches(self, glob: list[dict]) -> list[dict]:
        from sftlab.train.batching import collate, packed_micro_batch, plan_packed_micro_batches

        a = self.a
        if self.mode == "pack":
            out = []
            for rows in plan_packed_micro_batches(glob, a.max_len, a.global_batch // a.micro):
                micro, local = packed_micro_batch(glob, rows)
                out.append(collate(micro, "pack", self.pad_id, attn_implementation=self.impl, rows=local))
            return out
        return [collate(glob[i:i + a.micro], self.mode, self.pad_id, attn_implementation=self.impl)
                for i in range(0, len(glob), a.micro)]

    def run(self) -> dict:
        from sftlab.train.loss import supervised_token_loss, token_loss_scale

        torch, a, m = self.torch, self.a, self.marks
        clock = time.perf_counter
        ends, cpu, toks, padded = [clock()], [time.process_time()], [], []
        phases: list[dict[str, float]] = []
        for step in range(a.steps + 1):
            ph = dict.fromkeys(PHASES, 0.0)
            glob = self.samples[step * a.global_batch:(step + 1) * a.global_batch]
            denom = sum(s["loss_denom"] for s in glob)
            t = p = 0
            t0 = clock()
            batches = self.batches(glob)
            ph["collate"] += clock() - t0
            for b in batches:
                loss, _ = supervised_token_loss(self.model, b, token_loss_scale(b, denom), a.loss_chunk or None)
                t_loss = clock()
                loss.backward()
                t_bwd = clock()
                if m:
                    ph["model_fwd"] += m["fwd_end"] - m["fwd_start"]
                    ph["head_fwd"] += t_loss - m["fwd_end"]
                    ph["head_bwd"] += m["head_bwd_end"] - t_loss
                    ph["model_bwd"] += t_bwd - m["head_bwd_end"]
                t, p = t + b["tokens"], p + b["padded_tokens"]
            t0 = clock()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            ph["optimizer"] += clock() - t0
            ends.append(clock())
            cpu.append(time.process_time())
            toks.append(t)
            padded.append(p)
            ph["step"] = ends[-1] - ends[-2]
            phases.append(ph)
        return dict(step_stats(ends, cpu, toks, padded), phases=phases[1:] if m else [])


def step_stats(ends: list[float], cpu: list[float], toks: list[int], padded: list[int]) -> dict:
    """Per-step rates, warm-up step (the first) excluded: per wall second, and per CPU second of the
    (single-threaded) worker, which other processes on a shared machine disturb much less."""
    dts = [b - a for a, b in zip(ends[1:-1], ends[2:], strict=True)]
    cts = [b - a for a, b in zip(cpu[1:-1], cpu[2:], strict=True)]
    return {"rates": [t / dt for t, dt in zip(toks[1:], dts, strict=True)],
            "cpu_rates": [t / dt for t, dt in zip(toks[1:], cts, strict=True)],
            "tokens": sum(toks[1:]), "padded": sum(padded[1:]), "seconds": sum(dts), "peak_rss_mb": rss_mb()}


class TrlRunner:
    """TRL SFTTrainer on the same pre-tokenized samples (input_ids + completion_mask)."""

    def __init__(self, model_dir: Path, samples: list[dict], mode: str, a: argparse.Namespace) -> None:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        from sftlab.train.batching import pack_samples

        n = (a.steps + 1) * a.global_batch
        samples = samples[:n]
        data = Dataset.from_dict({"input_ids": [s["input_ids"] for s in samples],
                                  "completion_mask": [[int(x != -100) for x in s["labels"]] for s in samples]})
        accum, per_device = a.global_batch // a.micro, a.micro
        if mode == "trl_pack":  # one packed row per micro-batch, as many rows per step as a global batch packs to
            per_device, accum = 1, max(1, round(len(pack_samples(samples, a.max_len)) / (a.steps + 1)))
        cfg = SFTConfig(
            output_dir=str(a.workdir / "trl_out"), report_to="none", use_cpu=True, bf16=False,
            per_device_train_batch_size=per_device, gradient_accumulation_steps=accum, max_steps=a.steps + 1,
            learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
            gradient_checkpointing=False, logging_steps=10_000, save_strategy="no", disable_tqdm=True,
            train_sampling_strategy="sequential", completion_only_loss=True, dataloader_num_workers=0,
            max_length=None if mode == "trl_padfree" else a.max_len,
            padding_free=mode == "trl_padfree", packing=mode == "trl_pack", packing_strategy="bfd",
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(model_dir)
        counts = {"tokens": 0, "padded": 0}
        self.ends: list[float] = []
        self.cpu: list[float] = []
        self.toks: list[int] = []
        self.padded: list[int] = []
        runner = self

        class Counting(SFTTrainer):
            def compute_loss(self, model, inputs, *args, **kwargs):  # noqa: ANN001
                am = inputs.get("attention_mask")
                counts["tokens"] += int(am.sum()) if am is not None else int(inputs["input_ids"].numel())
                counts["padded"] += int(inputs["input_ids"].numel())
                return super().compute_loss(model, inputs, *args, **kwargs)

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
                runner.ends, runner.cpu = [time.perf_counter()], [time.process_time()]
                runner.toks, runner.padded = [], []
                counts.update(tokens=0, padded=0)

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                runner.ends.append(time.perf_counter())
                runner.cpu.append(time.process_time())
                runner.toks.append(counts["tokens"])
                runner.padded.append(counts["padded"])
                counts.update(tokens=0, padded=0)

        self.trainer = Counting(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Clock()])

    def run(self) -> dict:
        self.trainer.train()
        return step_stats(self.ends, self.cpu, self.toks, self.padded)


def worker(a: argparse.Namespace) -> None:
    """Serve `run` requests on stdin for one (model, data, mode); answer JSON lines prefixed with MARK."""
    import torch

    torch.set_num_threads(a.threads)
    samples = json.loads(data_file(a.workdir, a.model, a.data).read_text())
    cls = TrlRunner if a.mode.startswith("trl") else OurRunner
    runner = cls(a.workdir / a.model, samples, a.mode, a)
    print(MARK + json.dumps({"ready": True, "setup_rss_mb": rss_mb()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(MARK + json.dumps(runner.run()), flush=True)


# --------------------------------------------------------------------------------------------- parent
def read_reply(proc: subprocess.Popen) -> dict:
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"worker exited (code {proc.wait()}) without answering: see its log in --workdir")


def run_group(a: argparse.Namespace, model: str, data: str) -> dict[str, dict]:
    modes = [m for m in a.modes if not m.startswith("trl") or not a.no_trl]
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--data", data, "--workdir", str(a.workdir),
           "--threads", str(a.threads), "--steps", str(a.steps), "--global-batch", str(a.global_batch),
           "--micro", str(a.micro), "--max-len", str(a.max_len), "--loss-chunk", str(a.loss_chunk)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(a.threads))
    def start(m: str) -> subprocess.Popen:
        return subprocess.Popen(cmd + ["--mode", m], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                stderr=None if a.verbose else open(a.workdir / f"{model}-{data}-{m}.log", "w"),  # noqa: SIM115 (lives as long as the worker)
                                env=env)

    if a.one_at_a_time:  # low-memory machines: one worker alive at a time, each runs all its rounds
        res = {}
        for m in modes:
            p = start(m)
            res[m] = {"setup_rss_mb": read_reply(p)["setup_rss_mb"], "runs": []}
            for _ in range(a.rounds):
                p.stdin.write("run\n")
                p.stdin.flush()
                res[m]["runs"].append(read_reply(p))
                print(f"  {model}/{data} {m}: {statistics.median(res[m]['runs'][-1]['cpu_rates']):,.0f} tok/CPU-s",
                      file=sys.stderr, flush=True)
            p.stdin.close()
            p.wait()
        return res
    procs = {m: start(m) for m in modes}
    res: dict[str, dict] = {}
    for m, p in procs.items():
        res[m] = {"setup_rss_mb": read_reply(p)["setup_rss_mb"], "runs": []}
    for r in range(a.rounds):
        order = modes if r % 2 == 0 else modes[::-1]  # A B C, C B A: no mode always runs first
        for m in order:
            procs[m].stdin.write("run\n")
            procs[m].stdin.flush()
            res[m]["runs"].append(read_reply(procs[m]))
            last = res[m]["runs"][-1]
            print(f"  {model}/{data} round {r + 1} {m}: {statistics.median(last['rates']):,.0f} tok/s wall, "
                  f"{statistics.median(last['cpu_rates']):,.0f} tok/CPU-s", file=sys.stderr, flush=True)
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return res


def summarize(res: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for m, r in res.items():
        rates = [x for run in r["runs"] for x in run["rates"]]
        cpu_rates = [x for run in r["runs"] for x in run["cpu_rates"]]
        tokens = sum(run["tokens"] for run in r["runs"])
        padded = sum(run["padded"] for run in r["runs"])
        out[m] = {"tok_s": statistics.median(rates), "tok_cpu_s": statistics.median(cpu_rates),
                  "padding": 1 - tokens / padded,
                  "peak_rss_mb": max(run["peak_rss_mb"] for run in r["runs"]), "setup_rss_mb": r["setup_rss_mb"],
                  "n_steps": len(rates)}
        steps = [ph for run in r["runs"] for ph in run.get("phases", [])]
        if steps:  # seconds per step, summed over all measured steps (shares are ratios of sums)
            out[m]["phases"] = {k: sum(ph[k] for ph in steps) / len(steps) for k in (*PHASES, "step")}
    return out


def profile_table(summary: dict[str, dict[str, dict]]) -> str:
    """Where a step's time goes (sftlab modes): the model's own forward + backward vs everything else."""
    lines = ["| model | data | mode | step ms | model fwd | model bwd | loss head fwd+bwd | collate | optimizer | "
             "other | outside model fwd+bwd |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group, s in summary.items():
        model, data = group.split(":")
        for m, v in s.items():
            ph = v.get("phases")
            if not ph:
                continue
            step = ph["step"]
            other = step - sum(ph[k] for k in PHASES)
            share = lambda x, step=step: f"{x / step:.1%}"  # noqa: E731
            lines.append(f"| {model} | {data} | {m} | {1e3 * step:,.0f} | {share(ph['model_fwd'])} | "
                         f"{share(ph['model_bwd'])} | {share(ph['head_fwd'] + ph['head_bwd'])} | "
                         f"{share(ph['collate'])} | {share(ph['optimizer'])} | {share(other)} | "
                         f"**{share(step - ph['model_fwd'] - ph['model_bwd'])}** |")
    return "\n".join(lines)


def table(summary: dict[str, dict[str, dict]]) -> str:
    """Throughput and peak RSS per mode; "vs TRL best" = against TRL's fastest mode of the group (tok/CPU-s),
    and the peak RSS against that same mode's."""
    lines = ["| model | data | mode | non-pad tok/CPU-s | vs our pad | vs TRL best | non-pad tok/s wall | padding | "
             "peak RSS MB (after setup) | RSS vs TRL best |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group, s in summary.items():
        model, data = group.split(":")
        trl = {m: v for m, v in s.items() if m.startswith("trl")}
        best = max(trl.values(), key=lambda v: v["tok_cpu_s"]) if trl else None

        def ratio(a: float, b: float | None) -> str:
            return f"{a / b:.2f}x" if b else "–"

        for m, v in s.items():
            lines.append(f"| {model} | {data} | {m} | {v['tok_cpu_s']:,.0f} | "
                         f"{ratio(v['tok_cpu_s'], s['pad']['tok_cpu_s'] if 'pad' in s else None)} | "
                         f"{ratio(v['tok_cpu_s'], best and best['tok_cpu_s'])} | {v['tok_s']:,.0f} | "
                         f"{v['padding']:.1%} | {v['peak_rss_mb']:,.0f} ({v['setup_rss_mb']:,.0f}) | "
                         f"{ratio(v['peak_rss_mb'], best and best['peak_rss_mb'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", default="tiny:alpaca,tiny:longtail,large:longtail,qwen:longtail,qwen:alpaca",
                   help="comma-separated model:data pairs (models: tiny, large, qwen; data: alpaca, longtail)")
    p.add_argument("--modes", default=",".join(OURS + TRL))
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="measured steps per run (one more warm-up step)")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sftlab-bench"))
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--loss-chunk", type=int, default=0, help="sftlab's train.loss_chunk_size (supervised "
                   "positions per logits chunk of the fused head; 0 = auto, ~64 MiB of logits)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="one worker process alive at a time (less memory; no interleaving of modes)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    a.modes = a.modes.split(",")
    groups = [tuple(g.split(":")) for g in a.groups.split(",")]
    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(a.workdir, groups, (a.steps + 1) * a.global_batch, a.max_len)
    summary = {}
    for model, data in groups:
        summary[f"{model}:{data}"] = summarize(run_group(a, model, data))
        print(table({f"{model}:{data}": summary[f"{model}:{data}"]}), file=sys.stderr, flush=True)
        if a.out:
            a.out.write_text(json.dumps(summary, indent=1))
    print(table(summary))
    print("\n" + profile_table(summary))
    print(f"\n{a.rounds} rounds x {a.steps} measured steps, global batch {a.global_batch} = micro {a.micro} x "
          f"accumulation {a.global_batch // a.micro}, max_len {a.max_len}, {a.threads} thread(s); "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
