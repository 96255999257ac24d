"""The estimator against measurement: parameter bytes equal the instantiated model's, activations match the
bytes autograd saves for backward (saved_tensors_hooks, deduplicated by storage)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from sftlab.config import LoraConfig, ModelConfig
from sftlab.train.batching import collate
from sftlab.train.estimate import (
    GIB,
    RunShape,
    estimate_activations,
    estimate_loss_head,
    estimate_memory,
    flops_per_token,
    matmul_params,
    mfu,
    parameter_bytes,
    peak_flops,
)
from sftlab.train.loss import supervised_token_nll
from sftlab.train.model import meta_model_from_config

SHAPES = {
    "tiny": LlamaConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=128),
    "512x8": LlamaConfig(vocab_size=4096, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=1376),
    "qwen2-gqa": Qwen2Config(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, intermediate_size=704),
}


def saved_bytes(model, batch: dict, decoder_only: bool) -> int:
    """Bytes saved for backward during one forward, each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if decoder_only:
            model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                attention_mask=batch.get("attention_mask"), use_cache=False)
        else:
            supervised_token_nll(model, batch)
    return sum(seen.values())


def fixed_length_batch(b: int, s: int, vocab: int, mode: str, attn: str) -> dict:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(b):
        ids = rng.integers(0, vocab, s)
        samples.append({"input_ids": ids, "labels": ids.copy(), "loss_coef": np.ones(s), "num_tokens": s})
    return collate(samples, mode, 0, attn_implementation=attn, max_len=s * b)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # a config copy per model: from_config records the attention backend on the config object it is given
    return {(name, attn): AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=attn).train()
            for name, cfg in SHAPES.items() for attn in ("sdpa", "eager")}


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_match_saved_tensors(models, name, attn, checkpointing):
    cfg, model = SHAPES[name], models[(name, attn)]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        # 512x8 is the slow one on CPU: fewer tokens (the formulas are per token, the shape is what matters)
        cases = [(1, 12, "pad"), (2, 16, "pad"), (2, 8, "padfree")] if name == "512x8" else \
            [(1, 24, "pad"), (3, 32, "pad"), (2, 16, "padfree")]
        for b, s, mode in cases:
            batch = fixed_length_batch(b, s, cfg.vocab_size, mode, attn)
            est = estimate_activations(cfg, b, s, checkpointing, attn, batching=mode)
            if b == 1:  # the decoder alone (embedding to final norm)
                measured = saved_bytes(model, batch, decoder_only=True)
                assert abs(est / measured - 1) <= 0.15, (name, attn, checkpointing, b, s, mode, est, measured)
            # with sftlab's loss head: supervised-only logits of every next token
            measured_all = saved_bytes(model, batch, decoder_only=False)
            head = estimate_loss_head(cfg, int(batch["targets"].numel()), fused=False)["saved"]
            assert abs((est + head) / measured_all - 1) <= 0.15, (name, attn, checkpointing, b, s, mode)
    finally:
        model.gradient_checkpointing_disable()


def test_activations_bf16_autocast_within_15_percent(models):
    """Under bf16 autocast the saved tensors also hold the half weight copies autocast keeps (a separate term)."""
    cfg, model = SHAPES["qwen2-gqa"], models[("qwen2-gqa", "sdpa")]
    batch = fixed_length_batch(4, 96, cfg.vocab_size, "pad", "sdpa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = saved_bytes(model, batch, decoder_only=True)
    copies = (matmul_params(cfg) - cfg.vocab_size * cfg.hidden_size) * 2
    est = estimate_activations(cfg, 4, 96, False, "sdpa", dtype="bf16") + copies
    assert abs(est / measured - 1) <= 0.15


def _real_bytes(model, optimizer=None) -> dict[str, int]:
    def nbytes(tensors) -> int:
        seen = {}
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    out = {"weights_bytes": nbytes(model.parameters()),
           "gradients_bytes": nbytes(p.grad for p in model.parameters() if p.grad is not None)}
    if optimizer is not None:
        out["optimizer_bytes"] = sum(
            (v.to_local() if hasattr(v, "to_local") else v).untyped_storage().nbytes()
            for st in optimizer.state.values() for v in st.values())
    return out


def _one_step(engine, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 12))
    batch = {"input_ids": ids, "position_ids": torch.arange(12).expand(2, 12),
             "target_pos": (torch.tensor([0, 1]), torch.tensor([3, 4])), "targets": torch.tensor([5, 6])}
    engine(batch).sum().backward()


@pytest.mark.parametrize("lora_r", [None, 8, 64])
def test_parameter_bytes_equal_instantiated_model(tiny_model_dir, tiny_tokenizer, lora_r):
    """Weights, gradients and AdamW states of the real run (sftlab's load_model + build_optimizer, one step)
    equal the estimate from the meta-device model, byte for byte."""
    from transformers import AutoConfig

    from sftlab.config import build_config
    from sftlab.train.loss import SupervisedTokenNLL
    from sftlab.train.model import load_model
    from sftlab.train.optim import build_optimizer

    lora = {"r": lora_r, "alpha": 16} if lora_r else None
    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir), "lora": lora},
                        "data": {"train": ["x.jsonl"]}, "train": {"output_dir": "unused"}})
    model = load_model(cfg.model, tiny_tokenizer, torch.device("cpu"))
    engine = SupervisedTokenNLL(model)
    optimizer = build_optimizer(engine, cfg, torch.device("cpu"))
    _one_step(engine, len(tiny_tokenizer))
    optimizer.step()
    real = _real_bytes(engine, optimizer)
    meta = meta_model_from_config(AutoConfig.from_pretrained(tiny_model_dir), cfg.model, len(tiny_tokenizer))
    est = parameter_bytes(meta)
    # optimizer: exp_avg + exp_avg_sq per trainable parameter, and one fp32 `step` scalar per tensor
    assert {k: est[k] for k in real} == real
    assert est["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("world", [2, 8])
def test_fsdp_shard_bytes_equal_instantiated_model(world):
    """FSDP2's per-rank shards (dim 0 padded to the world size), in one process on a fake process group."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from sftlab.train import parallel
    from sftlab.train.loss import SupervisedTokenNLL

    cfg = LlamaConfig(vocab_size=1001, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=130)  # odd sizes: shards need padding
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        engine = parallel.wrap_model(SupervisedTokenNLL(AutoModelForCausalLM.from_config(cfg)), "fsdp",
                                     parallel.DistInfo(rank=0, world_size=world), torch.float32)
        _one_step(engine, cfg.vocab_size)
        optimizer = torch.optim.AdamW(engine.parameters(), foreach=True)
        optimizer.step()
        real = _real_bytes(engine, optimizer)
    finally:
        dist.destroy_process_group()
    est = parameter_bytes(meta_model_from_config(cfg, ModelConfig(name_or_path="unused")), world, sharded=True)
    assert {k: est[k] for k in real} == real


QWEN25_7B = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                        tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6)


def qwen7b_table(length: int = 2048) -> dict[str, object]:
    """Full vs LoRA vs QLoRA on one 80 GB GPU and full fine-tuning with FSDP over 8 (bf16 autocast,
    gradient checkpointing, micro-batch 1 × `length`, answers half the tokens); docs/estimate.md prints it."""
    run = RunShape(micro_batch=1, length=length, supervised_per_sample=length / 2, basis="max_length", padded=False)
    h100 = int(79.1 * GIB)
    rows = {}
    for label, lora, parallel, world in [("full", None, "none", 1), ("lora r=16", LoraConfig(r=16), "none", 1),
                                         ("qlora r=16", LoraConfig(r=16, load_in_4bit=True), "none", 1),
                                         ("full, fsdp x 8", None, "fsdp", 8)]:
        mc = ModelConfig(name_or_path="Qwen/Qwen2.5-7B", dtype="bf16", lora=lora)
        rows[label] = estimate_memory(meta_model_from_config(QWEN25_7B, mc), QWEN25_7B, run, dtype="bf16",
                                      gradient_checkpointing=True, parallel=parallel, world_size=world,
                                      load_in_4bit=bool(lora and lora.load_in_4bit),
                                      memory_bytes=h100)
    return rows


def test_qwen25_7b_table():
    rows = qwen7b_table()
    full, lora, qlora, fsdp = rows.values()
    assert full.params == 7_615_616_512  # Qwen2.5-7B's published parameter count
    # fp32 master weights + fp32 grads + AdamW: 16 bytes per parameter before activations
    assert full.weights_bytes + full.gradients_bytes + full.optimizer_bytes >= 16 * full.params
    assert not full.fits and lora.fits and qlora.fits and fsdp.fits
    assert qlora.total_bytes < lora.total_bytes < full.total_bytes and fsdp.total_bytes < full.total_bytes
    assert fsdp.weights_bytes == pytest.approx(full.weights_bytes / 8, rel=0.01)
    assert 0 < lora.trainable_params < 0.01 * lora.params
    assert qlora.max_micro_batch > lora.max_micro_batch > 0 and full.max_micro_batch == 0


def test_flops_and_peak():
    cfg = QWEN25_7B
    # 6N dominates; attention adds 12 · L · H · s
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * matmul_params(cfg) + 12 * 28 * 3584 * 2048)
    assert 6 * 6.5e9 < flops_per_token(cfg, 0) < 6 * 7.7e9
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp32") == 156e12
    assert peak_flops("cpu") is None and peak_flops(None) is None
    # 4 H100s at 10k tokens/s each: MFU = tokens/s x FLOPs/token / (peak x devices)
    assert mfu(40_000, cfg, 2048, "NVIDIA H100 80GB HBM3", "bf16", 4) == pytest.approx(
        40_000 * flops_per_token(cfg, 2048) / (989e12 * 4))
    assert mfu(40_000, cfg, 2048, None, "bf16") is None


def test_report_shows_estimate_peak_and_mfu(tmp_path):
    from sftlab.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": s, "loss": 1.0 / s, "tokens_per_s": 1000.0, "memory_estimate_gb": 61.5,
             "memory_peak_gb": 58.0 + s, "mfu": 0.40 + 0.01 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    page = write_report(run).read_text()
    assert "61.500 / 60.000" in page and "41.5%" in page


def test_estimate_cli_json_and_table(tmp_path, tiny_model_dir, capsys):
    """`sftlab estimate CONFIG --json` gives the documented fields; the data's real lengths are the basis
    when the data is there; a memory size gives the largest micro-batch and a warning when it does not fit."""
    import yaml

    from sftlab.cli import main

    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"count to {i}"},
                          {"role": "assistant", "content": " ".join(str(j) for j in range(i))}]} for i in range(3, 30)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)},
                                   "data": {"train": [str(data)], "max_length": 256},
                                   "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4}}))
    main(["estimate", str(cfg), "--json", "--memory-gb", "0.01"])
    out = json.loads(capsys.readouterr().out)
    for key in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "loss_head_bytes",
                "total_bytes", "max_micro_batch", "basis"):
        assert key in out
    assert out["basis"].startswith("data:")
    assert out["max_micro_batch"] >= 1 and out["fits"] is True
    total = sum(out[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "margin_bytes"))
    total += max(sum(out[k] for k in ("activations_bytes", "loss_head_bytes", "recompute_bytes",
                                      "autocast_weights_bytes", "parallel_buffers_bytes")), out["optimizer_step_bytes"])
    assert out["total_bytes"] == total

    main(["estimate", str(cfg), "--no-data", "train.per_device_train_batch_size=64", "--memory-gb", "0.01"])
    text = capsys.readouterr().out
    assert "does not fit" in text and "max_length" in text

    with pytest.raises(SystemExit) as e:
        main(["estimate", str(cfg), "--gpu", "h100-81gb"])
    assert e.value.code == 2
    assert "h100-80gb" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:  # was "-1024.0 MiB: does NOT fit"
        main(["estimate", str(cfg), "--memory-gb", "-1"])
    assert e.value.code == 2
    assert "--memory-gb must be > 0 (got -1.0)" in capsys.readouterr().err


def test_estimate_resolves_dtype_and_device_as_training_will(tmp_path, tiny_model_dir, monkeypatch):
    """model.dtype auto was estimated as fp32 on every target (training uses bf16 on Ampere+), and the loss head's
    chunk was sized for CUDA on a CPU run unless train.device=cpu was written out."""
    import yaml

    from sftlab.config import load_config
    from sftlab.train import loss as loss_mod
    from sftlab.train.estimate import GIB, estimate_run

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir), "lora": {"r": 8}},
                                   "data": {"train": [str(tmp_path / "absent.jsonl")], "max_length": 512},
                                   "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4}}))

    def total(*overrides: str, **kw) -> int:
        return estimate_run(load_config(cfg, list(overrides)), **kw).total_bytes

    h100, v100 = {"memory_bytes": 80 * GIB, "gpu": "h100-80gb"}, {"memory_bytes": 32 * GIB, "gpu": "v100-32gb"}
    assert total("model.dtype=auto", **h100) == total("model.dtype=bf16", **h100) != total("model.dtype=fp32", **h100)
    assert total("model.dtype=auto", **v100) == total("model.dtype=bf16", **v100) == total("model.dtype=fp32", **v100)
    note = estimate_run(load_config(cfg, ["model.dtype=auto"]), **h100).notes
    assert "model.dtype auto: estimated as bf16, what training uses on h100-80gb" in note

    if torch.cuda.is_available():
        return
    # a CPU chunk smaller than the CUDA one, so the loss head's peak depends on the device it is sized for
    monkeypatch.setitem(loss_mod.AUTO_CHUNK_BYTES, "cpu", 4 * 1100 * 128)
    monkeypatch.setitem(loss_mod.AUTO_CHUNK_BYTES, "cuda", 4 * 1100 * 1024)
    assert total() == total("train.device=cpu") < total(memory_bytes=80 * GIB)
