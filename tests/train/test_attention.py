"""The Σ len² attention kernel (sdpa_varlen), kernel choice per device / batching mode, precision by hardware."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from sftlab.train import attention
from sftlab.train import model as model_mod
from sftlab.train.attention import register_attention_kernels, resolve_attention
from sftlab.train.batching import collate, pack_samples, verify_isolation

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


def _samples(lengths: list[int], seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 200, (n,), generator=gen).numpy()
        out.append({"input_ids": ids, "labels": ids.copy(), "loss_coef": [1.0] * n, "num_tokens": n})
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    register_attention_kernels()
    load = lambda impl: AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl,  # noqa: E731
                                                             dtype=torch.float32).eval()
    return {"sdpa": load("sdpa"), "sdpa_varlen": load("sdpa_varlen")}


def _forward(model, batch, **extra) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     attention_mask=batch["attention_mask"], use_cache=False, **extra).logits


@pytest.mark.parametrize("mode", ["padfree", "pack"])
def test_every_sample_of_a_varlen_row_gets_its_solo_logits(models, mode):
    samples = _samples([5, 17, 3, 12, 9, 1])
    rows = pack_samples(samples, 24) if mode == "pack" else None
    batch = collate(samples, mode, 0, attn_implementation="sdpa_varlen", rows=rows)
    assert batch["attention_mask"] is None and batch["input_ids"].shape[0] == 1  # no [T, T] mask, one row
    assert batch["cu_seq_lens_q"].tolist()[-1] == batch["tokens"]
    with_bounds = _forward(models["sdpa_varlen"], batch, cu_seq_lens_q=batch["cu_seq_lens_q"],
                           cu_seq_lens_k=batch["cu_seq_lens_k"], max_length_q=batch["max_length_q"],
                           max_length_k=batch["max_length_k"])[0]
    from_positions = _forward(models["sdpa_varlen"], batch)[0]  # no bounds given: found from position ids
    start = 0
    flat = [samples[i] for i in (range(len(samples)) if rows is None else [i for r in rows for i in r])]
    for s in flat:
        alone = models["sdpa"](input_ids=torch.as_tensor(s["input_ids"])[None], use_cache=False).logits[0]
        for got in (with_bounds, from_positions):
            assert (got[start:start + s["num_tokens"]] - alone).abs().max().item() <= 1e-5
        start += s["num_tokens"]


def test_several_rows_without_bounds_are_split_row_by_row(models):
    """A caller may hand the kernel several packed rows with position ids only (e.g. the doc_ids layout)."""
    from sftlab.train.batching import collate_rows

    samples = _samples([4, 6, 7, 2, 5])
    batch = collate_rows(samples, [[0, 1], [2, 3, 4]], 0, layout="doc_ids")
    got = _forward(models["sdpa_varlen"], batch)
    ref = collate_rows(samples, [[0, 1], [2, 3, 4]], 0, layout="bool_mask")
    want = _forward(models["sdpa"], ref)
    real = batch["input_ids"] != 0
    assert (got - want)[real].abs().max().item() <= 1e-5


def test_kernel_costs_sum_of_squares_and_one_sample_rows_are_plain_sdpa(models, monkeypatch):
    """Each sdpa call sees one sample span (causal, no mask): attention work Σ len², not T²."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[2], attn_mask is None, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    lengths = [7, 3, 11, 5]
    batch = collate(_samples(lengths), "padfree", 0, attn_implementation="sdpa_varlen")
    _forward(models["sdpa_varlen"], batch, cu_seq_lens_q=batch["cu_seq_lens_q"])
    layers = models["sdpa"].config.num_hidden_layers
    assert calls == [(n, True, True) for n in lengths] * layers
    calls.clear()
    one = collate(_samples([13]), "padfree", 0, attn_implementation="sdpa_varlen")
    a = _forward(models["sdpa_varlen"], one)
    assert calls == [(13, True, True)] * layers  # the fallback: one causal call, exactly what sdpa does
    b = _forward(models["sdpa"], collate(_samples([13]), "pad", 0))
    assert torch.equal(a, b)


def test_padding_masks_and_generation_are_plain_sdpa(models):
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = models["sdpa_varlen"](input_ids=ids, attention_mask=mask).logits
        b = models["sdpa"](input_ids=ids, attention_mask=mask).logits
        gen_a = models["sdpa_varlen"].generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        gen_b = models["sdpa"].generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-6)
    assert torch.equal(gen_a, gen_b)
    assert verify_isolation(models["sdpa_varlen"], "varlen") < 1e-6


def test_auto_picks_a_kernel_per_mode_and_device(monkeypatch):
    assert resolve_attention("auto", "pad", "cpu") == "sdpa"
    assert resolve_attention("auto", "padfree", "cpu") == "sdpa_varlen"
    assert resolve_attention("auto", "pack", "cpu") == "sdpa_varlen"
    assert resolve_attention("sdpa", "padfree", "cpu") == "sdpa"  # a named kernel is the override
    assert resolve_attention("sdpa_varlen", "pad", "cpu") == "sdpa"  # same kernel, padding mask
    monkeypatch.setattr(attention, "flash_available", lambda d: torch.device(d).type == "cuda")
    assert resolve_attention("auto", "padfree", "cuda") == "flash_attention_2"
    monkeypatch.setattr(attention, "flash_available", lambda d: False)
    assert resolve_attention("auto", "padfree", "cuda") == "flex_attention"
    assert attention.check_attention_isolation("sdpa_varlen", "pack", "cpu") == "varlen"


def test_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(model_mod, "bf16_native", lambda d: (False, "CPU lacks AVX512-BF16 and AMX"))
    dtype, why = model_mod.resolve_precision("bf16", torch.device("cpu"))
    assert dtype == "fp32" and "lacks" in why  # never the emulated bf16 path
    assert model_mod.resolve_precision("auto", torch.device("cpu"))[0] == "fp32"
    monkeypatch.setattr(model_mod, "bf16_native", lambda d: (True, "CPU has AMX"))
    assert model_mod.resolve_precision("auto", torch.device("cpu")) == ("bf16", "bf16 autocast, fp32 master "
                                                                        "weights (CPU has AMX)")
    assert model_mod.resolve_precision("fp32", torch.device("cpu"))[0] == "fp32"


def test_real_cpu_bf16_check_names_the_feature():
    ok, why = model_mod.bf16_native(torch.device("cpu"))
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        speedup = model_mod.cpu_bf16_matmul_speedup()
        assert speedup > 0 and f"{speedup:.2f}x" in why
        assert ok == (speedup >= model_mod.BF16_MIN_SPEEDUP)
    else:
        assert not ok and "lacks" in why


def test_cpu_bf16_follows_the_measured_speed_not_the_flags(monkeypatch):
    """AVX512-BF16 without AMX can be slower than fp32: auto must then stay fp32 and say why."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(model_mod, "cpu_bf16_matmul_speedup", lambda: 0.55)
    dtype, why = model_mod.resolve_precision("auto", torch.device("cpu"))
    assert dtype == "fp32" and "AVX512-BF16 without AMX" in why and "0.55x" in why
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(model_mod, "cpu_bf16_matmul_speedup", lambda: 3.0)
    assert model_mod.resolve_precision("auto", torch.device("cpu"))[0] == "bf16"


def test_train_logs_the_kernel_and_records_it(tmp_path, tiny_model_dir, small_records, capsys):
    from sftlab.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in small_records))
    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(data)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 1, "max_steps": 2, "report_to": []}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml")])
    out = capsys.readouterr().out
    assert "attention kernel: sdpa_varlen (padfree batching)" in out and "precision: fp32" in out
    assert "fused ops: LlamaRMSNorm x5, modeling_llama.apply_rotary_pos_emb" in out  # model.fused_ops: auto on CPU
    assert "only where the loss reads: layers[1].self_attn.o_proj, layers[1].mlp" in out  # train/last_layer.py
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["attn_implementation"] == "sdpa_varlen" and saved["data"]["batching"] == "padfree"
    final = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert final.get("_attn_implementation", "sdpa") != "sdpa_varlen"  # checkpoints load without sftlab
