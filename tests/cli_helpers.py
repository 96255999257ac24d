"""Shared by the CLI tests: run `sftlab` in-process (exit code + output), write and read JSONL inputs, write a small
training config, read metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sftlab.cli import main


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sftlab ARGS`; a user error is exit 2, never a traceback."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def run_sftlab(capsys, *argv) -> tuple[int, str, str]:
    """run_cli with the arguments inline, for bad-input tests: no traceback ever reaches the user."""
    code, out, err = run_cli(list(argv), capsys)
    assert "Traceback" not in out + err
    return code, out, err


def write_lines(path: Path, rows: list) -> Path:
    """A JSONL file: dicts as JSON, strings as they are (a malformed line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_config(tmp_path: Path, model: Path | str, train_file: Path, eval_set: bool = True, **train) -> Path:
    """A 6-step training config on the tiny model (train_file doubles as the eval set unless eval_set=False)."""
    cfg = {"model": {"name_or_path": str(model)},
           "data": {"train": [str(train_file)], "max_length": 64, **({"eval": [str(train_file)]} if eval_set else {})},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "max_steps": 6, "logging_steps": 1,
                     "seed": 3, "report_to": [], **train}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
