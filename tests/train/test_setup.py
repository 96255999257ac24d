"""Start-up of a run (sftlab/train/setup.py): every choice resolved once into a frozen Run, the caller's config
never changed, and RUN/config.yaml holding the resolved values."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from sftlab.config import build_config
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError
from sftlab.train.loop import train
from sftlab.train.setup import setup


def _config(tmp_path, tiny_model_dir, small_records, **train):
    data = tmp_path / "train.jsonl"
    write_jsonl(small_records, data)
    return build_config({"model": {"name_or_path": str(tiny_model_dir), "dtype": "auto"},
                         "data": {"train": [str(data)], "max_length": 64},
                         "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4,
                                   "max_steps": 2, "report_to": [], **train}})


def test_setup_resolves_the_auto_choices_without_changing_the_config(tmp_path, tiny_model_dir, small_records):
    cfg = _config(tmp_path, tiny_model_dir, small_records)
    before = cfg.model_dump()
    run = setup(cfg)
    assert cfg.model_dump() == before  # batching, kernel and dtype were rewritten in place before
    assert (cfg.data.batching, cfg.model.attn_implementation, cfg.model.dtype) == ("auto", "auto", "auto")
    # CPU: padfree with the isolating Σ len² kernel; auto dtype becomes a concrete one
    assert (run.config.data.batching, run.config.model.attn_implementation) == ("padfree", "sdpa_varlen")
    assert run.config.model.dtype in ("fp32", "bf16")
    assert run.total_steps == 2 and run.global_batch == 4 and len(run.plan.steps[0]) == 4
    assert run.resolved == {"train.weight_decay": 0.01, "train.per_device_train_batch_size": 4,
                            "train.gradient_accumulation_steps": 1, "train.global_batch_size": 4,
                            "train.warmup_steps": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.micro_batch = 8


def test_run_config_yaml_records_the_resolved_choices(tmp_path, tiny_model_dir, small_records):
    cfg = _config(tmp_path, tiny_model_dir, small_records)
    train(cfg)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["batching"] == "padfree" and saved["model"]["attn_implementation"] == "sdpa_varlen"
    assert saved["model"]["dtype"] in ("fp32", "bf16")
    assert saved["train"]["weight_decay"] == 0.01 and saved["train"]["global_batch_size"] == 4
    assert cfg.data.batching == "auto"


def test_eval_generate_needs_the_callers_generation_eval(tmp_path, tiny_model_dir, small_records):
    """Training does not import sftlab.eval: a caller that sets train.eval_generate without passing the function
    gets one line saying so, before anything is loaded."""
    cfg = _config(tmp_path, tiny_model_dir, small_records, eval_steps=1, eval_generate={"max_samples": 2})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": cfg.data.train})})
    with pytest.raises(UserError, match="passed no generation_eval"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()
