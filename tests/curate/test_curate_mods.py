"""MoDS end to end: `select mods --base-model` fine-tunes the seed model with sftlab's training loop, answers the
other high-quality instructions with it, and augments the seed set with the ones it still answers badly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from record_helpers import rec

from sftlab.cli import main
from sftlab.curate.embed import save_embeddings
from sftlab.curate.files import load_records
from sftlab.curate.mods import _with_answer, generate_answers
from sftlab.curate.reward import load_reward_model, reward_scores
from sftlab.curate.scoring import load_generation_model, train_seed_model
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_labels = 1
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("reward")
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _records() -> list[dict]:
    return [rec(f"r{i}", f"what is {i} plus {i % 4}?", f"{i} plus {i % 4} is {i + i % 4}") for i in range(12)]


def test_mods_trains_seed_model_and_augments(tmp_path, tiny_model_dir, reward_dir, capsys):
    records = _records()
    write_jsonl(records, tmp_path / "in.jsonl")
    save_embeddings(tmp_path / "e.npz", [r["id"] for r in records], np.eye(len(records), dtype=np.float32))
    (tmp_path / "seed_run.yaml").write_text(yaml.safe_dump({"data": {"max_length": 64},
                                                            "train": {"learning_rate": 1e-3, "seed": 5}}))
    out = tmp_path / "mods.jsonl"
    main([str(a) for a in ["data", "select", "mods", tmp_path / "in.jsonl", "-o", out, "--reward-model", reward_dir,
                           "--alpha", "-1000", "--seed-k", "4", "--beta", "1000", "--aug-k", "3",
                           "--embeddings", tmp_path / "e.npz", "--base-model", tiny_model_dir,
                           "--train-config", tmp_path / "seed_run.yaml", "--train-set", "train.max_steps=2",
                           "--set", "max_new_tokens=8"]])
    text = capsys.readouterr().out
    kept = load_records(out)
    stages = [r["meta"]["mods_stage"] for r in kept]
    assert stages.count("seed") == 4 and stages.count("augmented") == 3
    assert "quality: 12 of 12" in text and "coverage: 4 seed" in text
    assert "necessity: 8 answered by the seed model, 8 with generated reward < 1000 (not_necessary: 0)" in text
    assert "augmented: 3 (K-Center; not_selected: 5)" in text and "output: 7 = seed + augmented" in text
    dropped = [json.loads(x) for x in (tmp_path / "mods.dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == 5 and all(d["reason"] == "not_selected" and "generated_reward" in d for d in dropped)

    # the seed model was trained here, on exactly the seed records, with the given config + overrides
    work = tmp_path / "mods.mods"
    assert [r["id"] for r in load_records(work / "seed.jsonl")] == [r["id"] for r in kept if
                                                                    r["meta"]["mods_stage"] == "seed"]
    used = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert used["train"]["max_steps"] == 2 and used["train"]["learning_rate"] == 1e-3
    assert used["data"]["max_length"] == 64 and used["model"]["name_or_path"] == str(tiny_model_dir)
    # ... and the generated rewards are those of its answers
    model, tok = load_generation_model(work / "run" / "final")
    rm, rtok = load_reward_model(str(reward_dir))
    aug = [r for r in kept if r["meta"]["mods_stage"] == "augmented"]
    src = {r["id"]: r for r in records}
    answers = generate_answers([src[r["id"]] for r in aug], model, tok, max_new_tokens=8)
    scores = reward_scores([_with_answer(src[r["id"]], a) for r, a in zip(aug, answers, strict=True)], rm, rtok)
    np.testing.assert_allclose(scores, [r["meta"]["mods_generated_reward"] for r in aug], atol=1e-5)


def test_seed_training_config_errors(tmp_path):
    with pytest.raises(UserError, match="needs a base model"):
        train_seed_model([], tmp_path)
    with pytest.raises(UserError, match="'data.train' is set by the command"):
        train_seed_model([], tmp_path, base_model="m", train_config={"data": {"train": ["x.jsonl"]}})
    with pytest.raises(UserError, match="unknown key 'train.bogus'"):
        train_seed_model([], tmp_path, base_model="m", overrides=["train.bogus=1"])


def test_mods_command_option_conflicts(tmp_path, reward_dir, capsys):
    write_jsonl(_records(), tmp_path / "in.jsonl")
    with pytest.raises(SystemExit) as e:
        main(["data", "select", "mods", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--reward-model",
              str(reward_dir), "--seed-k", "2", "--necessity-model", "x", "--base-model", "y"])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the seed run's config is checked before any scoring
        main(["data", "select", "mods", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--reward-model",
              "/nonexistent", "--seed-k", "2", "--base-model", "y", "--train-set", "train.bogus=1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown key 'train.bogus'" in err and len(err.strip().splitlines()) == 1
