"""train.eval_generate: generation metrics per task_type logged at every eval, next to the channel losses."""

from __future__ import annotations

import json

import torch
import yaml

from sftlab.cli import main
from sftlab.data.records import write_jsonl


def test_eval_generate_logs_per_task_metrics(tmp_path, tiny_model_dir, small_records, capsys):
    data = tmp_path / "train.jsonl"
    write_jsonl(small_records, data)
    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(data)], "eval": [str(data)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "max_steps": 4,
                     "eval_steps": 2, "report_to": [], "learning_rate": 1e-3,
                     "eval_generate": {"max_samples": 6, "max_new_tokens": 4, "metrics": ["exact_match", "rouge"]}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["train", str(path)])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        for task in ("math/add", "text/repeat"):
            assert f"eval_loss/{task}" in r  # next to the channel losses
            for m in ("exact_match", "rouge1", "rougeL"):
                assert 0.0 <= r[f"eval_gen/{task}/{m}"] <= 1.0
        assert "eval_gen/rougeL" in r
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3, 4]  # training went on after generating (model back in train mode)


def test_eval_generate_needs_eval_data(tmp_path, tiny_model_dir, small_records, capsys):
    import pytest

    data = tmp_path / "train.jsonl"
    write_jsonl(small_records, data)
    cfg = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": [str(data)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "report_to": [],
                     "eval_generate": {"max_samples": 2}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        main(["train", str(path)])
    assert e.value.code == 2 and "train.eval_generate needs data.eval" in capsys.readouterr().err


def test_lora_in_bf16_trains_and_generates_with_a_half_frozen_base(tmp_path, tiny_model_dir, small_records,
                                                                   capsys, monkeypatch):
    """LoRA under bf16 autocast stores the frozen base in bf16 (load_model); training, evaluation and the
    generation during training (outside the training forward) all run on it."""
    from sftlab.train import model as model_mod

    monkeypatch.setattr(model_mod, "bf16_native", lambda device: (True, "forced by the test"))
    seen = {}
    real_load = model_mod.load_model

    def spy(*args, **kwargs):
        m = real_load(*args, **kwargs)
        seen.update({n: p.dtype for n, p in m.named_parameters()})
        return m

    monkeypatch.setattr("sftlab.train.loop.load_model", spy)
    data = tmp_path / "train.jsonl"
    write_jsonl(small_records, data)
    cfg = {"model": {"name_or_path": str(tiny_model_dir), "dtype": "bf16", "lora": {"r": 4, "alpha": 8}},
           "data": {"train": [str(data)], "eval": [str(data)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "max_steps": 2,
                     "eval_steps": 2, "report_to": [], "learning_rate": 1e-3,
                     "eval_generate": {"max_samples": 4, "max_new_tokens": 4, "metrics": ["exact_match"]}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["train", str(path)])
    assert "precision: bf16 autocast" in capsys.readouterr().out
    assert any(d == torch.bfloat16 for n, d in seen.items() if "base_layer" in n)
    assert all(d == torch.float32 for n, d in seen.items() if "lora_" in n)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "eval_loss" in r][-1]
    assert ev["step"] == 2 and 0.0 <= ev["eval_gen/exact_match"] <= 1.0
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


def test_eval_loss_per_task_type_includes_task_types_only_the_eval_set_has(tmp_path, tiny_model_dir, small_records,
                                                                           capsys):
    """The eval split used the training channels only: a task type found only in data.eval had no eval_loss/<task>."""
    data, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(small_records, data)
    write_jsonl([{**r, "task_type": "heldout/add"} for r in small_records[:4]] + small_records[4:8], held)
    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(data)], "eval": [str(held)], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "max_steps": 1,
                     "eval_steps": 1, "report_to": [], "learning_rate": 1e-3}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["train", str(path)])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ev = next(r for r in rows if "eval_loss" in r)
    for task in ("math/add", "text/repeat", "heldout", "heldout/add"):
        assert ev[f"eval_loss/{task}"] > 0, (task, ev)
    assert ev["eval_loss/heldout"] == ev["eval_loss/heldout/add"]
    assert not any(k.startswith("loss/heldout") for r in rows if "loss" in r for k in r)


def test_eval_generate_skips_a_prompt_that_fills_the_context(tiny_model_dir, small_records):
    """Training cuts a long eval record to max_length; generation cannot: such a prompt stopped the run at its
    first eval ('the prompt has 2160 tokens, the model's context is 2048'). It is skipped and counted."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.eval.during_training import eval_generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = {"id": "long", "task_type": "math/add",
            "messages": [{"role": "user", "content": "one two three " * 1000}, {"role": "assistant", "content": "x"}]}
    cfg = SimpleNamespace(train=SimpleNamespace(eval_generate=SimpleNamespace(
        batch_size=4, max_new_tokens=2, metrics=["exact_match"])))
    out = eval_generate(model, tok, [small_records[0], long], cfg)
    assert out["eval_gen/skipped_too_long"] == 1.0 and "eval_gen/exact_match" in out
    assert eval_generate(model, tok, [long], cfg) == {"eval_gen/skipped_too_long": 1.0}
