"""Task-mixing strategies as multi-stage run plans: stage datasets from `data mix --strategy`, plan validation,
and a 2-stage plan on the tiny model whose second stage starts from the first stage's final weights."""

from __future__ import annotations

import re

import pytest
import yaml
from cli_helpers import read_metrics, run_cli
from record_helpers import rec

from sftlab.config import ConfigError
from sftlab.curate.files import load_records
from sftlab.curate.mix import strategy_stages
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError
from sftlab.train.plan import plan_configs


def _records() -> tuple[list[dict], list[dict]]:
    special = [rec(f"m{i}", f"what is {i} plus {i % 3}?", str(i + i % 3), task_type="math/add") for i in range(20)]
    special += [rec(f"c{i}", f"repeat {i}", f"{i} {i}", task_type="code") for i in range(12)]
    general = [rec(f"g{i}", f"say hello {i}", f"hello {i}", task_type="general") for i in range(8)]
    return special, general


def _sizes(stages) -> list[tuple[str, int]]:
    return [(name, len(rs)) for name, rs in stages]


def test_strategy_stage_counts():
    special, general = _records()
    assert _sizes(strategy_stages(special, general, "multitask")) == [("multitask", 40)]
    assert _sizes(strategy_stages(special, general, "sequential")) == [("math_add", 20), ("code", 12), ("general", 8)]
    assert _sizes(strategy_stages(special, [], "sequential")) == [("math_add", 20), ("code", 12)]
    assert _sizes(strategy_stages(special, general, "mixed_sequential")) == [("specialised", 32), ("general", 8)]
    dmt = strategy_stages(special, general, "dmt", k=0.25, seed=1)
    assert _sizes(dmt) == [("specialised", 32), ("general_mix", 8 + 5 + 3)]  # round(20/4), round(12/4)
    second = dmt[1][1]
    assert [r["id"] for r in second[:8]] == [f"g{i}" for i in range(8)]
    assert {r["meta"]["mix_stage"] for r in second} == {"general_mix"}
    assert sum(r["task_type"] == "math/add" for r in second) == 5
    assert _sizes(strategy_stages(special, general, "dmt", k=1.0))[1] == ("general_mix", 40)


def test_dmt_subsample_is_seeded():
    special, general = _records()
    ids = [[r["id"] for r in strategy_stages(special, general, "dmt", k=0.5, seed=s)[1][1]] for s in (3, 3, 4)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "dmt", "k": 0.3}, "dmt_k"),
    ({"strategy": "interleaved"}, "strategy"),
    ({"strategy": "mixed_sequential", "general": []}, "needs general records"),
])
def test_strategy_errors(kwargs, message):
    special, general = _records()
    kwargs = {"general": general, **kwargs}
    with pytest.raises(UserError, match=message):
        strategy_stages(special, kwargs.pop("general"), kwargs.pop("strategy"), **kwargs)


def test_mix_strategy_command_writes_stages_and_plan(tmp_path, capsys):
    special, general = _records()
    write_jsonl(special + general, tmp_path / "all.jsonl")
    for n in (1, 2):
        code, out, err = run_cli(["data", "mix", tmp_path / "all.jsonl", "-o", tmp_path / f"o{n}", "--strategy", "dmt",
                                  "--dmt-k", "0.5", "--general-task", "general", "--seed", "2"], capsys)
        assert code == 0, err
    assert "32 specialised + 8 general" in out and "1. specialised 32, 2. general_mix 24" in out
    plan = yaml.safe_load((tmp_path / "o1" / "plan.yaml").read_text())["stages"]
    assert [s["name"] for s in plan] == ["specialised", "general_mix"]
    assert len(load_records(plan[1]["data"]["train"][0])) == 24
    for name in ("stage-1-specialised.jsonl", "stage-2-general_mix.jsonl"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
    code, _, err = run_cli(["data", "mix", tmp_path / "all.jsonl", "-o", tmp_path / "o3", "--strategy", "dmt",
                            "--total", "5"], capsys)
    assert code != 0 and "--strategy does not sample" in err


@pytest.mark.parametrize("strategy", ["multitask", "sequential", "mixed_sequential", "dmt"])
def test_strategy_stream_writes_what_the_list_path_writes(tmp_path, strategy):
    from sftlab.curate.files import iter_record_chunks
    from sftlab.curate.mix import write_strategy, write_strategy_stream

    special, general = _records()
    mixed = special[:10] + general[:4] + special[10:] + general[4:6]  # general-task records between the others
    write_jsonl(mixed, tmp_path / "in.jsonl")
    write_jsonl(general[6:], tmp_path / "general.jsonl")
    is_general = [r["task_type"] == "general" for r in mixed]
    gen = [r for r, g in zip(mixed, is_general, strict=True) if g] + general[6:]
    spec = [r for r, g in zip(mixed, is_general, strict=True) if not g]
    write_strategy(strategy_stages(spec, gen, strategy, k=0.5, seed=4), tmp_path / "list")
    plan, sizes, n_spec, n_gen = write_strategy_stream(
        lambda: iter_record_chunks(tmp_path / "in.jsonl", chunk_size=3),
        lambda: iter_record_chunks(tmp_path / "general.jsonl", chunk_size=3),
        lambda r: r["task_type"] == "general", strategy, tmp_path / "stream", k=0.5, seed=4)
    assert (n_spec, n_gen) == (32, 8) and sum(n for _, n in sizes) >= 40
    names = sorted(p.name for p in (tmp_path / "list").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "stream").iterdir())
    for name in names:
        if name != "plan.yaml":
            assert (tmp_path / "stream" / name).read_bytes() == (tmp_path / "list" / name).read_bytes(), name
    assert plan.read_text().replace("/stream/", "/list/") == (tmp_path / "list" / "plan.yaml").read_text()


def test_mix_strategy_command_never_holds_the_records(tmp_path, capsys, monkeypatch):
    from sftlab.curate import files

    special, general = _records()
    write_jsonl(special + general, tmp_path / "all.jsonl")
    monkeypatch.setattr(files, "load_records", None)
    code, out, err = run_cli(["data", "mix", tmp_path / "all.jsonl", "-o", tmp_path / "o", "--strategy", "sequential",
                              "--general-task", "general"], capsys)
    assert code == 0, err
    assert "1. math_add 20, 2. code 12, 3. general 8" in out


def _plan(tmp_path, model_dir, stages, **train) -> dict:
    return {"model": {"name_or_path": str(model_dir)}, "data": {"max_length": 64},
            "train": {"output_dir": str(tmp_path / "plan"), "per_device_train_batch_size": 2,
                      "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "max_steps": 2, "seed": 3,
                      "report_to": [], **train},
            "stages": stages}


@pytest.mark.parametrize("stages, overrides, message", [
    ([{"name": "a", "data": {"train": ["x.jsonl"], "bogus": 1}}], [], "stages.0: unknown key 'data.bogus'"),
    ([{"name": "a", "data": {"train": ["x.jsonl"]}}, {"name": "b", "data": {"train": ["y.jsonl"]},
                                                       "train": {"learning_rate": -1}}], [],
     "stages.1: key 'train.learning_rate'"),
    ([{"name": "a", "data": {"train": ["x.jsonl"]}, "model": {}}], [], "stages.0: unknown key 'model'"),
    ([{"name": "a", "data": {"train": ["x.jsonl"]}, "train": {"output_dir": "elsewhere"}}], [], "set by the plan"),
    ([{"name": "a", "data": {"train": ["x.jsonl"]}}, {"name": "a", "data": {"train": ["x.jsonl"]}}], [], "duplicate"),
    ([{"name": "a"}], [], "stages.0: missing required key 'data.train'"),
    ([{"name": "a", "data": {"train": ["x.jsonl"]}}], ["stages.0.name=b"], "cannot be overridden"),
    ([], [], "non-empty list"),
])
def test_plan_validation_errors(tmp_path, stages, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_configs(_plan(tmp_path, "m", stages), overrides, source="plan.yaml")


def test_plan_chains_stages_and_applies_overrides(tmp_path):
    stages = [{"name": "one", "data": {"train": ["a.jsonl"]}},
              {"name": "two", "data": {"train": ["b.jsonl"]}, "train": {"learning_rate": 5e-4, "max_steps": 9}}]
    cfgs = plan_configs(_plan(tmp_path, "base", stages), ["train.max_steps=4"])
    (n1, c1), (n2, c2) = cfgs
    assert (n1, n2) == ("one", "two")
    assert c1.model.name_or_path == "base" and c2.model.name_or_path == str(tmp_path / "plan/stage-1-one/final")
    assert c2.train.output_dir == str(tmp_path / "plan/stage-2-two")
    assert (c1.train.learning_rate, c2.train.learning_rate) == (1e-3, 5e-4)
    assert c1.train.max_steps == c2.train.max_steps == 4  # the command line wins over stage values
    assert [s.path for s in c2.data.train] == ["b.jsonl"] and c2.data.max_length == 64


def test_two_stage_plan_starts_stage_two_from_stage_one_final(tmp_path, tiny_model_dir, capsys):
    special, general = _records()
    write_jsonl(special, tmp_path / "special.jsonl")
    write_jsonl(general, tmp_path / "general.jsonl")
    code, _, err = run_cli(["data", "mix", tmp_path / "special.jsonl", "-o", tmp_path / "mix", "--strategy",
                            "mixed_sequential", "--general", tmp_path / "general.jsonl"], capsys)
    assert code == 0, err
    stages = yaml.safe_load((tmp_path / "mix" / "plan.yaml").read_text())["stages"]
    stages[1]["train"] = {"learning_rate": 5e-4}
    cfg = tmp_path / "plan.yaml"
    cfg.write_text(yaml.safe_dump(_plan(tmp_path, tiny_model_dir, stages, max_steps=5)))
    code, out, err = run_cli(["train", cfg, "train.max_steps=2"], capsys)
    assert code == 0, err
    s1, s2 = tmp_path / "plan/stage-1-specialised", tmp_path / "plan/stage-2-general"
    assert (s1 / "final/model.safetensors").exists() and (s2 / "final/model.safetensors").exists()
    assert "plan: stage 2/2 'general' from" in out
    used = yaml.safe_load((s2 / "config.yaml").read_text())
    assert used["model"]["name_or_path"] == str(s1 / "final") and used["train"]["max_steps"] == 2

    # the same stage-2 job run by hand from stage 1's final model gives the same first-step loss ...
    direct = {**used, "train": {**used["train"], "output_dir": str(tmp_path / "direct"), "max_steps": 1}}
    (tmp_path / "direct.yaml").write_text(yaml.safe_dump(direct))
    code, _, err = run_cli(["train", tmp_path / "direct.yaml"], capsys)
    assert code == 0, err
    first = [m for m in read_metrics(s2) if "loss" in m][0]["loss"]
    assert first == pytest.approx([m for m in read_metrics(tmp_path / "direct") if "loss" in m][0]["loss"], rel=1e-6)
    # ... and not what the base model gives
    code, _, err = run_cli(["train", tmp_path / "direct.yaml", f"model.name_or_path={tiny_model_dir}",
                            f"train.output_dir={tmp_path / 'base'}"], capsys)
    assert code == 0, err
    assert abs([m for m in read_metrics(tmp_path / "base") if "loss" in m][0]["loss"] - first) > 1e-4

    # resume=auto skips the finished stages
    code, out, err = run_cli(["train", cfg, "train.max_steps=2", "train.resume=auto"], capsys)
    assert code == 0, err
    assert out.count("already done") == 2


def test_lora_plan_merges_previous_adapter(tmp_path, tiny_model_dir, capsys):
    special, general = _records()
    write_jsonl(special, tmp_path / "special.jsonl")
    write_jsonl(general, tmp_path / "general.jsonl")
    stages = [{"name": "a", "data": {"train": [str(tmp_path / "special.jsonl")]}},
              {"name": "b", "data": {"train": [str(tmp_path / "general.jsonl")]}}]
    cfg = _plan(tmp_path, tiny_model_dir, stages, max_steps=1, learning_rate=1e-2)
    cfg["model"]["lora"] = {"r": 4, "alpha": 8}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["train", tmp_path / "plan.yaml"], capsys)
    assert code == 0, err
    s2 = tmp_path / "plan/stage-2-b"
    assert (s2 / "init/model.safetensors").exists() and (s2 / "final/adapter_config.json").exists()
    assert yaml.safe_load((s2 / "config.yaml").read_text())["model"]["name_or_path"] == str(s2 / "init")
