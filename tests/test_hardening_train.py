"""Issue 16: training runs never lose work or silently do something else. One test per numbered item of the
issue (items 1-10 through the CLI on the tiny model); the signal tests are in test_hardening_train_signals.py."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import read_metrics as metrics
from cli_helpers import run_cli, write_config
from safetensors.torch import load_file

from sftlab.data.records import write_jsonl


@pytest.fixture()
def train_file(tmp_path, small_records) -> Path:
    path = tmp_path / "train.jsonl"
    write_jsonl(small_records, path)
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


# ------------------------------------------------------------------- 1. run-dir ownership


def test_item1_new_run_refuses_a_dir_holding_a_run_and_overwrite_replaces_it(tmp_path, tiny_model_dir, train_file,
                                                                              capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, max_steps=6)
    run = tmp_path / "run"
    assert run_cli(["train", cfg], capsys)[0] == 0
    n_lines, final = len(metrics(run)), weights(run / "final")

    code, out, err = run_cli(["train", cfg, "train.max_steps=3"], capsys)
    assert code == 2 and "is not empty" in err and "train.overwrite_output_dir=true" in err and len(err.splitlines()) == 1
    assert len(metrics(run)) == n_lines  # nothing of the old run was touched
    assert all(torch.equal(v, weights(run / "final")[k]) for k, v in final.items())
    assert (run / "checkpoints/step-3").is_dir()

    code, out, err = run_cli(["train", cfg, "train.max_steps=3", "train.overwrite_output_dir=true"], capsys)
    assert code == 0, err
    assert "removed the previous run" in out
    assert not (run / "checkpoints/step-3").exists()  # no stale checkpoint of the other run is left to resume
    assert [m["step"] for m in metrics(run) if "loss" in m] == [1, 2, 3]
    # resume=auto now finds no checkpoint (the old run's step-3 is gone): it must not resume anything
    shutil.rmtree(run / "final")
    code, out, err = run_cli(["train", cfg, "train.max_steps=3", "train.resume=auto"], capsys)
    assert code == 0, err
    assert "resumed from" not in out and "done: 3 steps" in out
    assert "train.resume=auto: no complete checkpoint in" in out and "training starts at step 0" in out


def test_item1_resume_refuses_a_checkpoint_of_another_run(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, max_steps=6)
    assert run_cli(["train", cfg], capsys)[0] == 0
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.seed=4"], capsys)
    assert code == 2 and "belongs to a run with other settings (train.seed: 3 -> 4)" in err, err
    other = tmp_path / "other.jsonl"
    other.write_text(train_file.read_text().replace("plus", "minus"))
    code, out, err = run_cli(["train", cfg, "train.resume=auto", f"data.train={other}"], capsys)
    assert code == 2 and "data.train[0].sha256: content changed" in err, err
    # a 2-step plan cannot resume a step-3 checkpoint (the audit saw "done: 10 steps" on a 3-step plan)
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.max_steps=2"], capsys)
    assert code == 2 and "is at step 3, past the end of this run (2 steps)" in err, err



def tree_digest(root: Path) -> dict[str, str]:
    """Every file (sha256 of its bytes) and directory under `root`, by relative path."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_refused_resumes_leave_the_run_dir_byte_identical(tmp_path, tiny_model_dir, small_records, capsys):
    """Issue 35 item 5: a resume refused for a changed setting or data file, a checkpoint past the end of the plan,
    or another world size changes nothing in the run dir: not the rejects of the first run (they were rewritten
    with the new data's), not data_cache.json, not what a kill left in checkpoints/ (tidied only once a resume
    goes ahead)."""
    data = tmp_path / "train.jsonl"
    write_jsonl(small_records + [{"id": "bad-1", "messages": [{"role": "user", "content": "no answer"}]}], data)
    cfg = write_config(tmp_path, tiny_model_dir, data, save_steps=3, max_steps=6)
    skip = "data.on_error=skip"
    run = tmp_path / "run"
    assert run_cli(["train", cfg, skip], capsys)[0] == 0
    assert "bad-1" in (run / "rejects-train.jsonl").read_text()
    shutil.rmtree(run / "final")  # as if killed while re-saving step 3 (its previous copy left as step-3.old) ...
    (run / "checkpoints" / "step-3").rename(run / "checkpoints" / "step-3.old")
    (run / "checkpoints" / "step-7.tmp").mkdir()  # ... or while saving step 7
    other = tmp_path / "other.jsonl"
    write_jsonl(small_records[:20] + [{"id": "bad-2", "messages": [{"role": "user", "content": "nor here"}]}], other)
    before = tree_digest(run)

    refusals = [([f"data.train={other}"], "data.train[0].sha256: content changed"),
                (["train.seed=4"], "train.seed: 3 -> 4"),
                (["train.max_steps=2"], "past the end of this run (2 steps)")]
    for overrides, reason in refusals:
        code, out, err = run_cli(["train", cfg, skip, "train.resume=auto", *overrides], capsys)
        assert code == 2 and reason in err, err
        assert tree_digest(run) == before, overrides
    # the same checkpoint as written by 2 processes: refused in one
    state_file = run / "checkpoints" / "step-3.old" / "training_state.pt"
    state = torch.load(state_file, weights_only=False)
    torch.save({**state, "world_size": 2}, state_file)
    before = tree_digest(run)
    code, out, err = run_cli(["train", cfg, skip, "train.resume=auto"], capsys)
    assert code == 2 and "written with world size 2, this run has 1" in err, err
    assert tree_digest(run) == before

    torch.save(state, state_file)  # the resume that goes ahead tidies checkpoints/ and records its data
    code, out, err = run_cli(["train", cfg, skip, "train.resume=auto"], capsys)
    assert code == 0, err
    assert "removed step-7.tmp" in out and "restored step-3 from step-3.old" in out and "at step 3" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]


# ------------------------------------------------------------------- 2. changed settings on resume


def test_item2_resume_refuses_changed_lr_and_applies_resumable_changes(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, max_steps=6, lr_scheduler_type="constant",
                       warmup_ratio=0)
    run = tmp_path / "run"
    assert run_cli(["train", cfg], capsys)[0] == 0
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.learning_rate=1e-5"], capsys)
    assert code == 2 and "train.learning_rate: 0.001 -> 1e-05" in err and len(err.splitlines()) == 1, err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 1e-3  # not rewritten

    # max_steps / logging_steps may change (documented): they take effect and are what config.yaml records
    # ... and so may the micro-batch / accumulation split of the same global batch (e.g. after an OOM)
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.max_steps=8", "train.logging_steps=2",
                              "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=4"], capsys)
    assert code == 0, err
    assert "resumed from" in out and "checkpoints/step-3" in out
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == [1, 2, 3, 4, 6, 8]
    assert all(m["lr"] == pytest.approx(1e-3) for m in metrics(run) if "loss" in m)
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["max_steps"], saved["logging_steps"], saved["learning_rate"]) == (8, 2, 1e-3)


def test_item2_raised_max_steps_stretches_the_lr_schedule_from_the_resumed_step(tmp_path, tiny_model_dir, train_file,
                                                                                 capsys):
    """The first step after a resume with another length used the checkpoint's lr (the old schedule's)."""
    from sftlab.train.optim import build_scheduler

    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, save_steps=2, max_steps=4,
                       warmup_ratio=0)
    run = tmp_path / "run"
    assert run_cli(["train", cfg], capsys)[0] == 0
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.max_steps=8"], capsys)
    assert code == 0, err
    assert "step-2 at step 2" in out
    from sftlab.config import load_config

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = build_scheduler(optimizer, load_config(cfg, ["train.max_steps=8"]), 8)
    expected = []
    for _ in range(8):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    logged = {m["step"]: m["lr"] for m in metrics(run) if "loss" in m}
    assert [logged[s] for s in range(3, 9)] == pytest.approx(expected[2:], rel=1e-12)


def test_item2_resume_from_the_runs_own_config_yaml(tmp_path, tiny_model_dir, train_file, capsys):
    """RUN/config.yaml records derived values (warmup_steps from warmup_ratio, weight_decay): a resume from it was
    refused ('train.warmup_steps: 0 -> 1; train.weight_decay: None -> 0.01') although the run used exactly those."""
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, save_steps=3, max_steps=6,
                       warmup_ratio=0.1)
    run = tmp_path / "run"
    assert run_cli(["train", cfg, "train.max_steps=4"], capsys)[0] == 0  # stopped after step 4, checkpoint step-3
    saved = tmp_path / "saved.yaml"
    shutil.copy(run / "config.yaml", saved)
    assert yaml.safe_load(saved.read_text())["train"]["warmup_steps"] == 1
    code, out, err = run_cli(["train", saved, "train.resume=auto", "train.max_steps=6"], capsys)
    assert code == 0, err
    assert "step-3 at step 3" in out
    code, out, err = run_cli(["train", saved, "train.resume=auto", "train.max_steps=6", "train.warmup_steps=2"],
                             capsys)
    assert code == 2 and "train.warmup_steps: 0 -> 2" in err, err  # a real change is still refused


# ------------------------------------------------------------------- 3. save_total_limit


def test_item3_save_total_limit_is_validated_and_keeps_the_newest(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=2, max_steps=7)
    code, out, err = run_cli(["train", cfg, "train.save_total_limit=-1"], capsys)
    assert code == 2 and "save_total_limit" in err and "-1" in err
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(["train", cfg, "train.save_total_limit=1"], capsys)
    assert code == 0, err
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert ckpts == ["step-6"] and (tmp_path / "run/checkpoints/step-6/training_state.pt").exists()


# ------------------------------------------------------------------- 4. report_to


def _fake_module(name: str, calls: list) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def rec(fn: str, result=None):
        return lambda *a, **k: (calls.append((fn, a, k)), result)[1]

    if name == "mlflow":
        run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))
        for fn in ("set_tracking_uri", "set_experiment", "log_params", "log_metrics", "end_run"):
            setattr(mod, fn, rec(fn))
        mod.start_run = rec("start_run", run)
    else:
        run = types.SimpleNamespace(id="w1", log=rec("log"), finish=rec("finish"))
        mod.init = rec("init", run)
    return mod


def test_item4_wandb_and_mlflow_get_the_metrics_or_a_one_line_error(tmp_path, tiny_model_dir, train_file, capsys,
                                                                     monkeypatch):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, eval_steps=2)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    code, out, err = run_cli(["train", cfg, "train.report_to=[wandb]"], capsys)
    assert code == 2 and err.strip() == ("error: train.report_to: wandb is not installed here: pip install wandb "
                                         "(or remove wandb from train.report_to)")

    mlflow_calls, wandb_calls = [], []
    monkeypatch.setitem(sys.modules, "mlflow", _fake_module("mlflow", mlflow_calls))
    monkeypatch.setitem(sys.modules, "wandb", _fake_module("wandb", wandb_calls))
    code, out, err = run_cli(["train", cfg, "train.report_to=[wandb, mlflow]", "train.wandb={mode: offline}"], capsys)
    assert code == 0, err
    logged = {k for fn, a, _ in mlflow_calls if fn == "log_metrics" for k in a[0]}
    assert {"loss", "grad_norm", "lr", "eval_loss", "loss/math/add"} <= logged
    params = next(a[0] for fn, a, _ in mlflow_calls if fn == "log_params")
    assert params["train.learning_rate"] == "0.001"
    init = next(k for fn, _, k in wandb_calls if fn == "init")
    assert init["mode"] == "offline" and init["config"]["train"]["learning_rate"] == 1e-3
    assert {"loss", "eval_loss"} <= {k for fn, a, _ in wandb_calls if fn == "log" for k in a[0]}
    assert [fn for fn, _, _ in mlflow_calls][-1] == "end_run" and [fn for fn, _, _ in wandb_calls][-1] == "finish"


# ------------------------------------------------------------------- 5. settings that cannot take effect


def test_item5_settings_that_cannot_take_effect_error_or_warn(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=2)
    code, out, err = run_cli(["train", cfg, "train.early_stopping={patience: 2}"], capsys)
    assert code == 2 and "train.early_stopping needs an eval set" in err
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, warmup_steps=5,
                       per_device_train_batch_size=30, gradient_accumulation_steps=1)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert "warning: the train set has 24 samples, fewer than one global batch (30): every step uses all 24" in out
    assert "warning: data.eval is set but train.eval_steps=0: no evaluation will run" in out
    assert "warning: train.warmup_steps=5 is longer than the run (2 steps)" in out


def test_item6_fp16_on_cpu_fails_before_the_run_dir_is_written(tmp_path, tiny_model_dir, train_file, capsys):
    """fp16 on CPU failed at the first step, after config.yaml / metrics were written: the corrected rerun into
    the same output_dir was then refused as 'not empty'."""
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=1)
    code, out, err = run_cli(["train", cfg, "model.dtype=fp16", "train.device=cpu"], capsys)
    assert code == 2 and err.strip() == "error: model.dtype=fp16 is not supported on CPU; use bf16 or fp32", err
    assert not any((tmp_path / "run").iterdir())
    assert run_cli(["train", cfg, "train.device=cpu"], capsys)[0] == 0


# ------------------------------------------------------------------- 7. leftovers of a kill while saving


def test_item7_resume_auto_ignores_half_written_checkpoints(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, max_steps=6)
    run = tmp_path / "run"
    assert run_cli(["train", cfg], capsys)[0] == 0
    ref = weights(run / "final")
    ckpts = run / "checkpoints"
    (ckpts / "step-10.tmp").mkdir()  # a save killed half-way: no state file
    (ckpts / "step-10.tmp" / "model.safetensors").write_bytes(b"half")
    (ckpts / "step-3").rename(ckpts / "step-3.old")  # killed between the two renames of a re-save
    shutil.rmtree(run / "final")
    code, out, err = run_cli(["train", cfg, "train.resume=auto"], capsys)
    assert code == 0, err
    assert "removed step-10.tmp" in out and "restored step-3 from step-3.old" in out
    assert "resumed from" in out and "step-3 at step 3" in out
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-3"]
    assert all(torch.equal(v, weights(run / "final")[k]) for k, v in ref.items())


# ------------------------------------------------------------------- 8. attention backend without its package


def test_item8_flash_attention_without_the_package_is_one_line(tmp_path, tiny_model_dir, train_file, capsys):
    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=1)
    code, out, err = run_cli(["train", cfg, "model.attn_implementation=flash_attention_2"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "needs the 'flash_attn' package" in err and "available here: eager, sdpa" in err


# ------------------------------------------------------------------- 9. adapters: base path, resized embeddings


def test_item9_adapter_records_absolute_base_and_loads_in_plain_peft(tmp_path, tiny_model_dir, train_file, capsys,
                                                                     monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlab.train.export import load_for_inference

    monkeypatch.chdir(tiny_model_dir.parent)  # the base given as a relative path, as users type it
    cfg = write_config(tmp_path, tiny_model_dir.name, train_file, eval_set=False, max_steps=2)
    code, out, err = run_cli(["train", cfg, "model.lora={r: 4, alpha: 8}", "model.special_tokens=['<tool>']"], capsys)
    assert code == 0, err
    final = tmp_path / "run" / "final"
    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_model_dir.resolve())

    monkeypatch.chdir(tmp_path)  # another directory: generate must still find the base
    code, out, err = run_cli(["generate", "--model", final, "--prompt", "hi", "--max-new-tokens", "3"], capsys)
    assert code == 0, err

    # the documented plain-peft load of an adapter trained with added tokens: resize, then load
    tok = AutoTokenizer.from_pretrained(final)
    plain = AutoModelForCausalLM.from_pretrained(base)
    plain.resize_token_embeddings(len(tok))
    plain = PeftModel.from_pretrained(plain, final).eval()
    ours = load_for_inference(final).eval()
    ids = torch.tensor([tok.encode("hi <tool> there")])
    assert tok.convert_tokens_to_ids("<tool>") in ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- 10. mistyped model path fails at once


def test_item10_mistyped_local_path_and_unreachable_hub_fail_at_once(tmp_path, train_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    cfg = write_config(tmp_path, "models/tiyn-model", train_file, max_steps=1)
    t0 = time.perf_counter()
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "model.name_or_path: directory not found: models/tiyn-model" in err, err
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    cfg = write_config(tmp_path, "some-org/some-model", train_file, max_steps=1)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "the hub (http://127.0.0.1:9) is unreachable" in err, err
    assert time.perf_counter() - t0 < 15
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ------------------------------------------------------------------- 11. resolved config, alarms, warmup


def test_item11_config_records_used_values_and_warmup_starts_above_zero(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=4, warmup_steps=2,
                       lr_scheduler_type="constant")
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["train"]
    assert (saved["weight_decay"], saved["global_batch_size"], saved["warmup_steps"]) == (0.01, 4, 2)
    lrs = [m["lr"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # lr/warmup first, never a wasted lr-0 step


def test_item11_grad_spike_alarms_are_rate_limited():
    from sftlab.train.health import HealthConfig, HealthMonitor

    monitor = HealthMonitor(HealthConfig(grad_spike_every=50))
    fired = []
    for step in range(1, 201):  # near zero loss: the median is tiny, every other step a relative spike
        g = 1e-4 if step % 2 else 5e-3
        fired += [a for a in monitor.update({"step": step, "loss": 1e-4, "grad_norm": g}) if a.name == "grad_spike"]
    assert 1 <= len(fired) <= 4  # was one alarm every other step (~95)


# ------------------------------------------------------------------- 12. eval_on_start


def test_item12_eval_on_start_logs_a_step_0_baseline(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, eval_steps=2, eval_on_start=True)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    evals = [m for m in metrics(tmp_path / "run") if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 2] and evals[0]["eval_loss"] > evals[1]["eval_loss"]


def test_item9_adapter_with_an_unreachable_base_is_one_line(tmp_path, capsys):
    adapter = tmp_path / "old-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "model", "peft_type": "LORA"}))
    code, out, err = run_cli(["export", adapter, "-o", tmp_path / "out", "--merge"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the adapter's base model: 'model' is not a local directory" in err and "adapter_config.json" in err
