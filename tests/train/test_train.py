"""End-to-end training through the CLI on the tiny model: run dir layout, exact resume, HF/PEFT loading,
LoRA merge, and one-line errors for bad configs."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import read_metrics, run_cli, write_config
from safetensors.torch import load_file

from sftlab.io import write_jsonl

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


def test_train_writes_hf_layout_and_exact_resume(tmp_path, tiny_model_dir, train_file, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, eval_steps=3)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "data_summary.json", "final/model.safetensors",
                 "final/tokenizer.json", "final/chat_template.jinja", "checkpoints/step-3/training_state.pt"):
        assert (run / name).exists(), name
    full = [m for m in read_metrics(run) if "loss" in m]
    assert [m["step"] for m in full] == [1, 2, 3, 4, 5, 6]
    for key in ("epoch", "grad_norm", "lr", "supervised_tokens", "tokens_per_s", "padding_ratio",
                "loss/math", "loss/math/add", "loss/text/repeat"):
        assert key in full[0], key
    assert any("eval_loss" in m for m in read_metrics(run))
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert "<|im_start|>" in tok.chat_template and model.config.vocab_size == len(tok)

    # interrupted after step 3: keep the checkpoint and the metrics up to it, resume, compare
    run2 = tmp_path / "run2"
    (run2 / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints/step-3", run2 / "checkpoints/step-3")
    (run2 / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in read_metrics(run) if m["step"] <= 3))
    code, out, err = run_cli(["train", cfg, f"train.output_dir={run2}", "train.resume=auto"], capsys)
    assert code == 0, err
    assert "resumed from" in out
    resumed = [m for m in read_metrics(run2) if "loss" in m]
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1, a["loss"]), (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-6 * max(1, a["grad_norm"])


def test_lora_adapter_loads_and_merge_matches(tmp_path, tiny_model_dir, train_file, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = write_config(tmp_path, tiny_model_dir, train_file, learning_rate=1e-2)
    code, _, err = run_cli(["train", cfg, "model.lora.r=4", "model.lora.alpha=8"], capsys)
    assert code == 0, err
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, final)
    code, _, err = run_cli(["export", final, "-o", tmp_path / "merged", "--merge"], capsys)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        a = with_adapter(input_ids=ids).logits
        b = merged(input_ids=ids).logits
        c = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert (a - b).abs().max() <= 1e-4
    assert (a - c).abs().max() > 1e-3  # the adapter really changed the model

    # the run dir instead of its final/: one line naming the model dirs inside (was an internal ValueError)
    capsys.readouterr()
    code, out, err = run_cli(["export", tmp_path / "run", "-o", tmp_path / "x"], capsys)
    assert code == 2 and "is not a model directory" in err and "final" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()

    # an output dir holding an adapter (e.g. the source itself) would keep loading as that adapter: refused
    for out_dir, message in [(final, "is the source directory"), (tmp_path / "adapter-copy", "holds a LoRA adapter")]:
        if not out_dir.exists():
            shutil.copytree(final, out_dir)
        code, out, err = run_cli(["export", final, "-o", out_dir, "--merge"], capsys)
        assert code == 2 and message in err and not (out_dir / "model.safetensors").exists(), err


def test_saved_models_stop_at_the_turn_end_not_only_at_eos(tmp_path, tiny_model_dir, train_file, capsys):
    """A base model whose eos is <|endoftext|> trained on ChatML: final/ (full) and a merged LoRA export kept
    generation_config.eos_token_id = <|endoftext|>, so plain transformers / vLLM generation ran past <|im_end|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    for name, key, value in [("generation_config.json", "eos_token_id", 0), ("config.json", "eos_token_id", 0),
                             ("tokenizer_config.json", "eos_token", "<|endoftext|>")]:
        data = json.loads((base / name).read_text())
        data[key] = value
        (base / name).write_text(json.dumps(data))
    im_end = AutoTokenizer.from_pretrained(base).convert_tokens_to_ids("<|im_end|>")
    cfg = write_config(tmp_path, base, train_file, eval_set=False, max_steps=1)
    for extra, out in [([], "full"), (["model.lora.r=4"], "lora")]:
        assert run_cli(["train", cfg, f"train.output_dir={tmp_path / out}", *extra], capsys)[0] == 0
    assert run_cli(["export", tmp_path / "lora" / "final", "-o", tmp_path / "merged", "--merge"], capsys)[0] == 0
    for model_dir in (tmp_path / "full" / "final", tmp_path / "merged"):
        eos = AutoModelForCausalLM.from_pretrained(model_dir).generation_config.eos_token_id
        assert im_end in (eos if isinstance(eos, list) else [eos]), (model_dir, eos)


@pytest.mark.parametrize("override, message", [
    ("train.bogus_key=1", "unknown key 'train.bogus_key'"),
    ("train.global_batch_size=7", "global_batch_size=7"),
    ("model.name_or_path=/nonexistent/model", "directory not found: /nonexistent/model"),
    ("train.output_dir=/proc/forbidden", "cannot write to /proc/forbidden"),
    ("data.max_length=abc", "data.max_length"),
    ("data.eval=", "key 'data.eval': Input should be a valid list (got None)"),  # was an internal TypeError
    ("data.train=5", "key 'data.train': Input should be a valid list (got 5)"),
    ("train.device=gpu", "train.device='gpu': use cpu, cuda or cuda:N"),  # was torch's RuntimeError
    # was found after config.yaml and metrics were written, so the corrected rerun was refused as 'not empty'
    ("train.health.abort_on=[nan_loss]", "key 'train.health.abort_on': unknown health alarm(s): nan_loss (known: "),
])
def test_bad_config_is_one_line_error(tmp_path, tiny_model_dir, train_file, capsys, override, message):
    cfg = write_config(tmp_path, tiny_model_dir, train_file)
    code, out, err = run_cli(["train", cfg, override], capsys)
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--hidden-size", "130"], "130: must be a positive multiple of 8"),  # was an internal error from transformers
    (["--hidden-size", "12"], "12: must be a positive multiple of 8"),  # was written, then failed at generation
    (["--hidden-size", "-4"], "-4: must be a positive multiple of 8"),
    (["--num-layers", "0"], "0: must be at least 1"),
])
def test_tiny_model_refuses_shapes_it_cannot_build(tmp_path, capsys, args, message):
    code, out, err = run_cli(["tiny-model", tmp_path / "m", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


def test_lora_target_modules_typo_is_one_line_and_leaves_no_run(tmp_path, tiny_model_dir, train_file, capsys):
    """peft's NoMatchingPeftModuleError was an internal error, raised after config.yaml was written (so the
    corrected rerun was refused as 'not empty')."""
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=1)
    code, out, err = run_cli(["train", cfg, "model.lora.target_modules=[q_prj]"], capsys)
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err
    assert "model.lora.target_modules: ['q_prj'] matches no module" in err and "q_proj" in err, err
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert run_cli(["train", cfg, "model.lora.target_modules=[q_proj, v_proj]"], capsys)[0] == 0


@pytest.mark.parametrize("text, message", [
    ("{bad", "line 1, column 2: invalid JSON"),  # was an internal JSONDecodeError
    ('{"role": "user", "content": "hi"}', "expected a JSON list of messages"),
    ('[{"role": "user"}]', "message 0: needs a string 'role' and a string 'content'"),  # was generated from
])
def test_generate_chat_file_errors_are_one_line(tmp_path, tiny_model_dir, capsys, text, message):
    chat = tmp_path / "chat.json"
    chat.write_text(text)
    code, out, err = run_cli(["generate", "--model", tiny_model_dir, "--chat", chat], capsys)
    assert code == 2 and err.strip().startswith(f"error: {chat}: {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    """The message was the parser's first line only ('while parsing a block mapping'), with no line number."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name_or_path: m}\ndata:\n  train: [x.jsonl]\n   max_length: 3\n")
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{cfg}: line 4, column 4: invalid YAML: expected <block end>" in err, err


def test_nonfinite_loss_stops_with_emergency_checkpoint(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, learning_rate=1e30, max_grad_norm=0)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code != 0
    assert "non-finite" in err and "samples r" in err and "emergency-step-" in err
    assert list((tmp_path / "run" / "checkpoints").glob("emergency-step-*/model.safetensors"))


def test_diverging_run_raises_alarm(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, learning_rate=2.0, max_grad_norm=0,
                       lr_scheduler_type="constant", warmup_ratio=0, max_steps=4)
    code, out, err = run_cli(["train", cfg, "data.eval=[]"], capsys)
    assert code == 0, err
    alarms = [m for m in read_metrics(tmp_path / "run") if "alarm" in m]
    assert [a["alarm"] for a in alarms][:1] == ["diverged"], alarms
    assert "learning rate" in alarms[0]["message"]
    assert "warning [diverged]" in out


def test_early_stopping_keeps_best(tmp_path, tiny_model_dir, train_file, capsys):
    # eval_loss falls while training, so with mode=max the first eval is the best and the metric gets
    # "worse" at every later eval: patience 2 stops at the third eval (step 3).
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_steps=1, save_steps=1, max_steps=8,
                       early_stopping={"metric": "eval_loss", "patience": 2, "mode": "max"})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    evals = [m for m in read_metrics(run) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [1, 2, 3]
    assert evals[0]["eval_loss"] > evals[1]["eval_loss"] > evals[2]["eval_loss"]
    assert "early stopping" in out and "best step 1" in out
    best = load_file(run / "best" / "model.safetensors")
    step1 = load_file(run / "checkpoints" / "step-1" / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert all((best[k] == step1[k]).all() for k in step1)
    assert any((best[k] != final[k]).any() for k in final)


def test_early_stopping_metric_typo_fails_before_training(tmp_path, tiny_model_dir, train_file, capsys):
    """A mistyped metric failed only at the first eval, after training steps (hours on a real run)."""
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_steps=3, max_steps=6,
                       early_stopping={"metric": "eval_los"})
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "train.early_stopping.metric 'eval_los' is not an eval metric" in err, err
    assert "eval_loss/math/add" in err and "step 1/" not in out
    # what the failed start wrote (data_cache.json) does not make the dir another run's
    code, out, err = run_cli(["train", cfg, "train.early_stopping.metric=eval_gen/exact_match"], capsys)
    assert code == 2 and "needs train.eval_generate" in err, err
    assert run_cli(["train", cfg, "train.early_stopping.metric=eval_loss/math/add"], capsys)[0] == 0


@pytest.mark.parametrize("batching, attn", [("padfree", "sdpa"), ("pack", "eager")])
def test_padfree_and_pack_train_end_to_end(tmp_path, tiny_model_dir, train_file, capsys, batching, attn):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, eval_steps=2)
    code, _, err = run_cli(["train", cfg, f"data.batching={batching}", f"model.attn_implementation={attn}"], capsys)
    assert code == 0, err
    train = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(train) == 2 and all(m["padding_ratio"] < 0.3 for m in train)
    assert any("eval_loss" in m for m in read_metrics(tmp_path / "run"))


def test_backend_that_cannot_isolate_is_refused(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file)
    code, out, err = run_cli(["train", cfg, "data.batching=padfree", "model.attn_implementation=flash_attention_2"],
                             capsys)
    assert code != 0 and "flash_attention_2" in err and "Traceback" not in err


# -- runs never lose work or silently do something else (the training audit, issue 16) ------------------------


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_new_run_refuses_a_dir_holding_a_run_and_overwrite_replaces_it(tmp_path, tiny_model_dir, train_file,
                                                                              capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=3, max_steps=6)
    run = tmp_path / "run"
    assert run_cli(["train", cfg], capsys)[0] == 0
    n_lines, final = len(read_metrics(run)), weights(run / "final")

    code, out, err = run_cli(["train", cfg, "train.max_steps=3"], capsys)
    assert code == 2 and "is not empty" in err and "train.overwrite_output_dir=true" in err and len(err.splitlines()) == 1
    assert len(read_metrics(run)) == n_lines  # nothing of the old run was touched
    assert all(torch.equal(v, weights(run / "final")[k]) for k, v in final.items())
    assert (run / "checkpoints/step-3").is_dir()

    code, out, err = run_cli(["train", cfg, "train.max_steps=3", "train.overwrite_output_dir=true"], capsys)
    assert code == 0, err
    assert "removed the previous run" in out
    assert not (run / "checkpoints/step-3").exists()  # no stale checkpoint of the other run is left to resume
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2, 3]
    # resume=auto now finds no checkpoint (the old run's step-3 is gone): it must not resume anything
    shutil.rmtree(run / "final")
    code, out, err = run_cli(["train", cfg, "train.max_steps=3", "train.resume=auto"], capsys)
    assert code == 0, err
    assert "resumed from" not in out and "done: 3 steps" in out
    assert "train.resume=auto: no complete checkpoint in" in out and "training starts at step 0" in out


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, tiny_model_dir, train_file, capsys):
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


def test_resume_refuses_changed_lr_and_applies_resumable_changes(tmp_path, tiny_model_dir, train_file, capsys):
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
    steps = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert steps == [1, 2, 3, 4, 6, 8]
    assert all(m["lr"] == pytest.approx(1e-3) for m in read_metrics(run) if "loss" in m)
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["max_steps"], saved["logging_steps"], saved["learning_rate"]) == (8, 2, 1e-3)


def test_raised_max_steps_stretches_the_lr_schedule_from_the_resumed_step(tmp_path, tiny_model_dir, train_file,
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
    logged = {m["step"]: m["lr"] for m in read_metrics(run) if "loss" in m}
    assert [logged[s] for s in range(3, 9)] == pytest.approx(expected[2:], rel=1e-12)


def test_resume_from_the_runs_own_config_yaml(tmp_path, tiny_model_dir, train_file, capsys):
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


def test_save_total_limit_is_validated_and_keeps_the_newest(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, save_steps=2, max_steps=7)
    code, out, err = run_cli(["train", cfg, "train.save_total_limit=-1"], capsys)
    assert code == 2 and "save_total_limit" in err and "-1" in err
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(["train", cfg, "train.save_total_limit=1"], capsys)
    assert code == 0, err
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert ckpts == ["step-6"] and (tmp_path / "run/checkpoints/step-6/training_state.pt").exists()


def test_settings_that_cannot_take_effect_error_or_warn(tmp_path, tiny_model_dir, train_file, capsys):
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


def test_fp16_on_cpu_fails_before_the_run_dir_is_written(tmp_path, tiny_model_dir, train_file, capsys):
    """fp16 on CPU failed at the first step, after config.yaml / metrics were written: the corrected rerun into
    the same output_dir was then refused as 'not empty'."""
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=1)
    code, out, err = run_cli(["train", cfg, "model.dtype=fp16", "train.device=cpu"], capsys)
    assert code == 2 and err.strip() == "error: model.dtype=fp16 is not supported on CPU; use bf16 or fp32", err
    assert not any((tmp_path / "run").iterdir())
    assert run_cli(["train", cfg, "train.device=cpu"], capsys)[0] == 0


def test_resume_auto_ignores_half_written_checkpoints(tmp_path, tiny_model_dir, train_file, capsys):
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


def test_flash_attention_without_the_package_is_one_line(tmp_path, tiny_model_dir, train_file, capsys):
    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=1)
    code, out, err = run_cli(["train", cfg, "model.attn_implementation=flash_attention_2"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "needs the 'flash_attn' package" in err and "available here: eager, sdpa" in err


def test_adapter_records_absolute_base_and_loads_in_plain_peft(tmp_path, tiny_model_dir, train_file, capsys,
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


def test_adapter_with_an_unreachable_base_is_one_line(tmp_path, capsys):
    adapter = tmp_path / "old-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "model", "peft_type": "LORA"}))
    code, out, err = run_cli(["export", adapter, "-o", tmp_path / "out", "--merge"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "the adapter's base model: 'model' is not a local directory" in err and "adapter_config.json" in err


def test_mistyped_local_path_and_unreachable_hub_fail_at_once(tmp_path, train_file, capsys, monkeypatch):
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


def test_config_records_used_values_and_warmup_starts_above_zero(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, eval_set=False, max_steps=4, warmup_steps=2,
                       lr_scheduler_type="constant")
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())["train"]
    assert (saved["weight_decay"], saved["global_batch_size"], saved["warmup_steps"]) == (0.01, 4, 2)
    lrs = [m["lr"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # lr/warmup first, never a wasted lr-0 step


def test_eval_on_start_logs_a_step_0_baseline(tmp_path, tiny_model_dir, train_file, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, train_file, max_steps=2, eval_steps=2, eval_on_start=True)
    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    evals = [m for m in read_metrics(tmp_path / "run") if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 2] and evals[0]["eval_loss"] > evals[1]["eval_loss"]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (sha256 of its bytes) and directory under `root`, by relative path."""
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
