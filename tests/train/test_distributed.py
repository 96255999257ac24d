"""Multi-process training on CPU (gloo, 2 processes through torchrun): the loss contract across ranks.

2 ranks x accumulation 2 must log the same per-step loss, grad norm and channel losses as 1 rank x
accumulation 4 on the same global batches, export the same weights, and resume exactly. The 1-rank
reference runs in-process; the 2-rank runs go through the real launch line
(`python -m torch.distributed.run --nproc_per_node 2 -m sftlab train cfg.yaml ...`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from sftlab.cli import main
from sftlab.data.records import write_jsonl

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

REL = 1e-5  # the contract's tolerance (fp32)


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture()
def data_files(tmp_path, small_records) -> tuple[Path, Path]:
    """The shared 24 train records; 5 eval records, so the eval shards are uneven."""
    recs = small_records
    train, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(recs, train)
    write_jsonl(recs[:5], ev)
    return train, ev


def write_config(tmp_path: Path, model_dir: Path, files: tuple[Path, Path], **train) -> Path:
    cfg = {"model": {"name_or_path": str(model_dir)},
           "data": {"train": [str(files[0])], "eval": [str(files[1])], "max_length": 64},
           "train": {"output_dir": str(tmp_path / "run1"), "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 4, "learning_rate": 1e-3, "max_steps": 4, "logging_steps": 1,
                     "eval_steps": 2, "seed": 3, "report_to": [], **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_one_rank(cfg: Path, *overrides: str) -> None:
    """The reference: one process, in this interpreter (no torch.distributed)."""
    try:
        main(["train", str(cfg), *overrides])
    except SystemExit as e:
        assert not e.code, f"1-rank training failed with exit code {e.code}"


def torchrun(cfg: Path, *overrides: str, nproc: int = 2) -> str:
    """`torchrun --standalone` (a free port: parallel tests never collide) -> `sftlab train`; returns stdout.
    A hang (a collective that one rank never joins) fails on the timeout instead of blocking the suite."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sftlab", "train", str(cfg), *overrides, "--debug"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    return res.stdout


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(ref: Path, other: Path, min_steps: int = 4, evals: bool = True) -> None:
    """Per-step loss, grad norm, channel losses (loss/<task>) and eval losses equal within REL; token counts exact."""
    a, b = read_metrics(ref), read_metrics(other)
    a_steps, b_steps = [m for m in a if "loss" in m], [m for m in b if "loss" in m]
    assert [m["step"] for m in a_steps] == [m["step"] for m in b_steps]
    assert len(a_steps) >= min_steps
    for x, y in zip(a_steps, b_steps, strict=True):
        keys = {k for k in x if k in ("loss", "grad_norm") or k.startswith("loss/")}
        assert keys == {k for k in y if k in ("loss", "grad_norm") or k.startswith("loss/")}
        assert {"loss/math/add", "loss/text/repeat"} <= keys
        for k in keys:
            assert abs(x[k] - y[k]) <= REL * abs(x[k]), (x["step"], k, x[k], y[k])
        assert (x["supervised_tokens"], x["tokens"]) == (y["supervised_tokens"], y["tokens"])
    a_eval, b_eval = [m for m in a if "eval_loss" in m], [m for m in b if "eval_loss" in m]
    assert [m["step"] for m in a_eval] == [m["step"] for m in b_eval] and (a_eval or not evals)
    for x, y in zip(a_eval, b_eval, strict=True):
        for k in x:
            if k.startswith("eval_loss"):
                assert abs(x[k] - y[k]) <= REL * abs(x[k]), (x["step"], k, x[k], y[k])


def assert_same_weights(ref: Path, other: Path, base: Path) -> None:
    """Both exports load with from_pretrained and hold the same weights, which really moved from `base`."""
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(ref).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    init = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3


# -------------------------------------------------------------------------------------------- tests


def test_fsdp_two_ranks_match_one_rank_and_resume(tmp_path, tiny_model_dir, data_files, capsys):
    """FSDP2, turn loss: same metrics and final weights as one rank; sharded optimizer state per rank; resume
    from step 2 reproduces the uninterrupted 2-rank run; resuming with another world size is a clear error."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, loss="turn", save_steps=2)
    train_one_rank(cfg)
    run2 = tmp_path / "run2"
    out = torchrun(cfg, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", "train.parallel=fsdp")
    assert "micro 2 x accumulation 2 x world 2" in out
    assert_same_metrics(tmp_path / "run1", run2)
    final = run2 / "final"
    assert sorted(p.name for p in final.glob("*.safetensors")) == ["model.safetensors"]
    assert_same_weights(tmp_path / "run1" / "final", final, tiny_model_dir)
    ckpt = run2 / "checkpoints" / "step-2"
    shards = sorted(p.name for p in ckpt.glob("optimizer*.pt"))
    assert shards == ["optimizer.rank0.pt", "optimizer.rank1.pt"]
    # AdamW keeps two fp32 tensors per parameter: a full copy would be ~2x the weights, a half shard ~1x
    weights = (ckpt / "model.safetensors").stat().st_size
    assert all((ckpt / name).stat().st_size < 1.5 * weights for name in shards)

    # interrupted after step 2: keep the checkpoint and the metrics up to it, resume with 2 ranks, compare
    run3 = tmp_path / "run3"
    (run3 / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt, run3 / "checkpoints" / "step-2")
    (run3 / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in read_metrics(run2) if m["step"] <= 2))
    out = torchrun(cfg, f"train.output_dir={run3}", "train.gradient_accumulation_steps=2", "train.parallel=fsdp",
                   "train.resume=auto")
    assert "resumed from" in out and "at step 2" in out
    a = [m for m in read_metrics(run2) if "loss" in m]
    b = [m for m in read_metrics(run3) if "loss" in m]
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * x["loss"], (x["step"], x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-6 * x["grad_norm"], (x["step"], x["grad_norm"], y["grad_norm"])
    assert_same_weights(final, run3 / "final", tiny_model_dir)

    # the same checkpoint under one process: refused with a one-line error naming both world sizes
    with pytest.raises(SystemExit):
        main(["train", str(cfg), f"train.output_dir={run3}", "train.resume=auto"])
    err = capsys.readouterr().err
    assert "world size 2" in err and "this run has 1" in err


def fsdp_settings(reshard: bool, offload: str) -> list[str]:
    return ["train.parallel=fsdp", f"train.fsdp.reshard_after_forward={str(reshard).lower()}",
            f"train.fsdp.offload={offload}"]


def test_fsdp_zero2_with_optimizer_offload_matches_one_rank_and_resumes(tmp_path, tiny_model_dir, data_files):
    """Issue 35 item 7, the seeds' ZeRO-2 + adam_offload in FSDP2 terms (reshard_after_forward false, AdamW's
    states and step on the CPU): the 1-rank metrics and weights, AdamW's state in the per-rank optimizer files,
    and a resume from step 2 that reproduces the uninterrupted run."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, save_steps=2)
    train_one_rank(cfg)
    run2, run3 = tmp_path / "run2", tmp_path / "run3"
    zero2 = fsdp_settings(False, "optimizer")
    torchrun(cfg, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", *zero2)
    assert_same_metrics(tmp_path / "run1", run2)
    assert_same_weights(tmp_path / "run1" / "final", run2 / "final", tiny_model_dir)
    shard = torch.load(run2 / "checkpoints" / "step-2" / "optimizer.rank1.pt", weights_only=False)
    assert {"exp_avg", "exp_avg_sq"} <= set(shard["state"][0]) and shard["state"][0]["exp_avg"].device.type == "cpu"

    (run3 / "checkpoints").mkdir(parents=True)
    shutil.copytree(run2 / "checkpoints" / "step-2", run3 / "checkpoints" / "step-2")
    (run3 / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in read_metrics(run2) if m["step"] <= 2))
    torchrun(cfg, f"train.output_dir={run3}", "train.gradient_accumulation_steps=2", *zero2, "train.resume=auto")
    a = [m for m in read_metrics(run2) if "loss" in m]
    b = [m for m in read_metrics(run3) if "loss" in m]
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * x["loss"], (x["step"], x["loss"], y["loss"])
    assert_same_weights(run2 / "final", run3 / "final", tiny_model_dir)


@pytest.mark.parametrize("reshard, offload", [
    (True, "params"),
    pytest.param(False, "none", marks=pytest.mark.slow),
    pytest.param(True, "optimizer", marks=pytest.mark.slow),
    pytest.param(False, "params", marks=pytest.mark.slow),
])
def test_fsdp_settings_match_one_rank(tmp_path, tiny_model_dir, data_files, reshard, offload):
    """Every train.fsdp setting trains what one rank trains (FSDP2's CPUOffloadPolicy for offload: params)."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, eval_steps=0)
    train_one_rank(cfg)
    run2 = tmp_path / "run2"
    torchrun(cfg, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", *fsdp_settings(reshard, offload))
    assert_same_metrics(tmp_path / "run1", run2, evals=False)
    assert_same_weights(tmp_path / "run1" / "final", run2 / "final", tiny_model_dir)


def test_deepspeed_settings_are_refused_with_the_fsdp2_equivalent(tmp_path, tiny_model_dir, data_files, capsys):
    """The seeds' OpenRLHF / DeepSpeed vocabulary gets one line naming sftlab's setting, not "unknown key"."""
    from cli_helpers import run_cli

    cfg = write_config(tmp_path, tiny_model_dir, data_files)
    for override, use in [("train.zero_stage=2", "use train.parallel=fsdp train.fsdp.reshard_after_forward=false"),
                          ("train.zero_stage=3", "use train.parallel=fsdp (train.fsdp.reshard_after_forward=true"),
                          ("train.adam_offload=true", "use train.parallel=fsdp train.fsdp.offload=optimizer"),
                          ("offload=true", "use train.parallel=fsdp train.fsdp.offload=params"),
                          ("train.deepspeed=ds_z2.json", "use train.parallel=fsdp with train.fsdp.")]:
        code, out, err = run_cli(["train", cfg, override], capsys)
        key = override.split("=")[0]
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"{key} is a DeepSpeed / OpenRLHF setting; sftlab shards with FSDP2: {use}" in err, err
    code, out, err = run_cli(["train", cfg, "train.fsdp.offload=params"], capsys)
    assert code == 2 and "train.fsdp applies to FSDP2: set train.parallel=fsdp (it is 'none')" in err, err
    assert not (tmp_path / "run1").exists()


def test_ddp_two_ranks_match_one_rank_token_loss(tmp_path, tiny_model_dir, data_files):
    """DDP, token loss: same metrics and final weights as one rank; optimizer state saved once (replicated)."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, loss="token", save_steps=2)
    train_one_rank(cfg)
    run2 = tmp_path / "run2"
    torchrun(cfg, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", "train.parallel=ddp")
    assert_same_metrics(tmp_path / "run1", run2)
    assert_same_weights(tmp_path / "run1" / "final", run2 / "final", tiny_model_dir)
    assert sorted(p.name for p in (run2 / "checkpoints" / "step-2").glob("optimizer*.pt")) == ["optimizer.pt"]


def test_ddp_early_stopping_on_a_generation_metric(tmp_path, tiny_model_dir, data_files):
    """train.eval_generate runs on rank 0 only: every rank must still see its eval_gen/... metrics, or early stopping
    on one fails on rank 1 ('is not an eval metric') at the first eval."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, parallel="ddp", gradient_accumulation_steps=2,
                       eval_generate={"max_samples": 2, "max_new_tokens": 4, "metrics": ["exact_match"]},
                       early_stopping={"metric": "eval_gen/exact_match", "patience": 1, "mode": "max"})
    out = torchrun(cfg)
    evals = [m for m in read_metrics(tmp_path / "run1") if "eval_loss" in m]
    assert evals and all("eval_gen/exact_match" in m for m in evals)
    assert "early stopping: eval_gen/exact_match did not improve" in out and (tmp_path / "run1" / "best").is_dir()


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """--nproc 2 on a 1-GPU node: local rank 1 has no GPU; one line instead of CUDA's 'invalid device ordinal'."""
    from sftlab.errors import UserError
    from sftlab.train import parallel

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("process group started"))
    with pytest.raises(UserError, match=r"local rank 1 has no GPU: this node has 1 visible GPU\(s\) for 2 processes"):
        parallel.init_distributed(torch.device("cuda"))


def test_fsdp_refuses_4bit_qlora(tiny_model_dir):
    """FSDP2 cannot shard bitsandbytes 4-bit weights here: a clear error instead of a crash deep in torch."""
    from transformers import AutoModelForCausalLM

    from sftlab.errors import UserError
    from sftlab.train import parallel
    from sftlab.train.loss import SupervisedTokenNLL

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.is_loaded_in_4bit = True
    with pytest.raises(UserError, match="QLoRA"):
        parallel.wrap_model(SupervisedTokenNLL(model), "fsdp", parallel.DistInfo(rank=0, world_size=2))


def test_nproc_user_error_is_one_line_with_the_workers_exit_code(tmp_path, tiny_model_dir, data_files):
    """`sftlab train --nproc 2` on a bad record: the worker's one-line error and its exit code (2), not torchrun's
    ChildFailedError traceback and exit 1 after it."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "hi"}]')
    cfg = write_config(tmp_path, tiny_model_dir, data_files)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SFTLAB_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg), "--nproc", "2", f"data.train=[{bad}]"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-4000:]
    assert f"error: {bad}, index 0, field 'output': missing field" in res.stderr
    assert "Traceback" not in res.stderr and "ChildFailedError" not in res.stderr, res.stderr[-4000:]
    assert "sftlab: rank 0 failed (exit 2); its error is above" in res.stderr


def nproc_train(cfg: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`sftlab train CFG --nproc 2 OVERRIDES` as a user runs it (no --debug)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SFTLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "sftlab", "train", str(cfg), "--nproc", "2", *overrides],
                          env=env, capture_output=True, text=True, timeout=300)


def test_nproc_user_error_is_printed_once(tmp_path, tiny_model_dir, data_files):
    """Issue 35 item 6: an error every rank hits (a run dir that holds another run) is one line, not one per rank,
    and torchrun's per-worker log lines stay out of it (test_first_to_report_claims_each_message_once: the claim)."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "metrics.jsonl").write_text("{}\n")
    res = nproc_train(cfg, f"train.output_dir={taken}")
    assert res.returncode == 2, res.stderr[-4000:]
    lines = [x for x in res.stderr.splitlines() if x.strip() and "Writing model shards" not in x]
    assert lines[0] == (f"error: train.output_dir: {taken} is not empty (metrics.jsonl); continue that run with "
                        "train.resume=auto, replace it with train.overwrite_output_dir=true, or choose another "
                        "train.output_dir"), res.stderr
    assert len(lines) == 2 and lines[1].startswith("sftlab: rank ") and lines[1].endswith(
        "failed (exit 2); its error is above"), res.stderr


@pytest.mark.slow
def test_nproc_ranks_whose_errors_differ_each_print_theirs(tmp_path, tiny_model_dir, data_files):
    """Each rank probes the run dir with its own file: rank 0's is a directory, rank 1's a link into nowhere."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files)
    odd = tmp_path / "odd"
    (odd / ".write-test-0").mkdir(parents=True)
    (odd / ".write-test-1").symlink_to(tmp_path / "nowhere" / "file")
    res = nproc_train(cfg, f"train.output_dir={odd}")
    assert res.returncode == 2, res.stderr[-4000:]
    errors = sorted(x for x in res.stderr.splitlines() if x.startswith("error: "))
    assert errors == [f"error: train.output_dir: cannot write to {odd}: Is a directory",
                      f"error: train.output_dir: cannot write to {odd}: No such file or directory"], res.stderr


def test_first_to_report_claims_each_message_once(tmp_path, monkeypatch):
    """The claim behind it: the first worker of a launch to report a message prints it, later ones do not; another
    message is claimed afresh; outside a launch, or under --debug, every worker prints."""
    from sftlab.train.launch import ERRORS_DIR, first_to_report

    monkeypatch.delenv("SFTLAB_DEBUG", raising=False)
    monkeypatch.delenv(ERRORS_DIR, raising=False)
    assert first_to_report("a") and first_to_report("a")
    monkeypatch.setenv(ERRORS_DIR, str(tmp_path))
    assert first_to_report("a") and not first_to_report("a") and first_to_report("b") and not first_to_report("b")
    monkeypatch.setenv("SFTLAB_DEBUG", "1")
    assert first_to_report("a")


@pytest.mark.parametrize("args", [["train", "CFG", "--nproc", "0"], ["train", "CFG", "--nproc", "-2"],
                                  ["data", "render-cache", "CFG", "--num-proc", "0"]])
def test_process_counts_below_one_are_refused(args, tmp_path, tiny_model_dir, data_files, capsys, monkeypatch):
    """--nproc 0 / -2 used to train in one process and --num-proc 0 to render on every core, silently."""
    from cli_helpers import run_cli

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("launched torchrun"))
    cfg = write_config(tmp_path, tiny_model_dir, data_files, max_steps=1)
    code, out, err = run_cli([str(cfg) if a == "CFG" else a for a in args], capsys)
    assert code == 2 and "greater than or equal to 1" in err, (code, out[-2000:], err[-2000:])
    assert not (tmp_path / "run1").exists()


def test_nproc_hands_debug_to_the_workers(tmp_path, tiny_model_dir, data_files, monkeypatch):
    """`--debug` is removed from the arguments by the CLI: under --nproc it reaches the workers as SFTLAB_DEBUG=1."""
    launched = {}

    def fake_exec(path, args, env=None):
        launched.update(args=args, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(os, "execve", fake_exec)
    monkeypatch.delenv("SFTLAB_DEBUG", raising=False)
    cfg = write_config(tmp_path, tiny_model_dir, data_files)
    argv = ["train", str(cfg), "--nproc", "2", "train.max_steps=2", "--debug"]
    monkeypatch.setattr(sys, "argv", ["sftlab", *argv])
    with pytest.raises(SystemExit):
        main(argv)
    assert launched["args"][-2:] == [str(cfg), "train.max_steps=2"]
    assert (launched["env"] or {}).get("SFTLAB_DEBUG") == "1"


# ----------------------------------------------------------------------------- slow: the rest of the matrix


@pytest.mark.slow
@pytest.mark.parametrize("mode, loss", [("fsdp", "token"), ("ddp", "turn"), ("fsdp", "sequence")])
def test_other_layouts_match_one_rank(tmp_path, tiny_model_dir, data_files, mode, loss):
    cfg = write_config(tmp_path, tiny_model_dir, data_files, loss=loss)
    train_one_rank(cfg)
    run2 = tmp_path / "run2"
    torchrun(cfg, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", f"train.parallel={mode}")
    assert_same_metrics(tmp_path / "run1", run2)
    assert_same_weights(tmp_path / "run1" / "final", run2 / "final", tiny_model_dir)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_lora_two_ranks_match_one_rank(tmp_path, tiny_model_dir, data_files, mode):
    """LoRA (peft) under DDP and FSDP2: same metrics and the same adapter as one rank; the adapter loads."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = write_config(tmp_path, tiny_model_dir, data_files, learning_rate=1e-2)
    lora = ["model.lora.r=4", "model.lora.alpha=8"]
    train_one_rank(cfg, *lora)
    run2 = tmp_path / "run2"
    torchrun(cfg, *lora, f"train.output_dir={run2}", "train.gradient_accumulation_steps=2", f"train.parallel={mode}")
    assert_same_metrics(tmp_path / "run1", run2)
    a = load_file(tmp_path / "run1" / "final" / "adapter_model.safetensors")
    b = load_file(run2 / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4
    assert max(b[k].abs().max().item() for k in b if "lora_B" in k) > 1e-3  # B starts at zero: it trained
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run2 / "final")


@pytest.mark.slow
def test_ddp_resume_with_dropout_restores_each_ranks_rng(tmp_path, tiny_model_dir, data_files):
    """With LoRA dropout every rank draws its own masks: resume must restore each rank's RNG, not rank 0's."""
    cfg = write_config(tmp_path, tiny_model_dir, data_files, learning_rate=1e-2, save_steps=2,
                       gradient_accumulation_steps=2, parallel="ddp")
    lora = ["model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.3"]
    run2, run3 = tmp_path / "run2", tmp_path / "run3"
    torchrun(cfg, *lora, f"train.output_dir={run2}")
    (run3 / "checkpoints").mkdir(parents=True)
    shutil.copytree(run2 / "checkpoints" / "step-2", run3 / "checkpoints" / "step-2")
    (run3 / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in read_metrics(run2) if m["step"] <= 2))
    torchrun(cfg, *lora, f"train.output_dir={run3}", "train.resume=auto")
    a = [m for m in read_metrics(run2) if "loss" in m]
    b = [m for m in read_metrics(run3) if "loss" in m]
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * x["loss"], (x["step"], x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-6 * x["grad_norm"], (x["step"], x["grad_norm"], y["grad_norm"])


@pytest.mark.slow
def test_fsdp_bf16_mixed_precision(tmp_path, tiny_model_dir, data_files):
    """bf16 under FSDP2 (MixedPrecisionPolicy: bf16 compute, fp32 reduction and master weights): the losses
    follow the 1-rank bf16 run to bf16 precision and the export keeps fp32 weights."""
    from safetensors.torch import load_file

    cfg = write_config(tmp_path, tiny_model_dir, data_files, eval_steps=0)
    train_one_rank(cfg, "model.dtype=bf16")
    run2 = tmp_path / "run2"
    torchrun(cfg, "model.dtype=bf16", f"train.output_dir={run2}", "train.gradient_accumulation_steps=2",
             "train.parallel=fsdp")
    a = [m for m in read_metrics(tmp_path / "run1") if "loss" in m]
    b = [m for m in read_metrics(run2) if "loss" in m]
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-2 * x["loss"], (x["step"], x["loss"], y["loss"])
    weights = load_file(run2 / "final" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
