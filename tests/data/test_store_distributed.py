"""Two torchrun ranks (gloo, CPU) on a cold store cache: local rank 0 renders, rank 1 waits and memory-maps the
same store; nothing is rendered twice on the node."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist
import yaml

from sftlab.data.records import write_jsonl

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@pytest.mark.slow  # ~30 s on a quiet 2-core machine (two interpreters importing torch + transformers)
def test_two_ranks_render_once_and_share_the_store(tmp_path, tiny_model_dir, small_records):
    train = tmp_path / "train.jsonl"
    write_jsonl([dict(r, id=f"{r['id']}-{k}") for k in range(100) for r in small_records], train)  # 2400: 3 chunks
    cfg = {"model": {"name_or_path": str(tiny_model_dir)},
           "data": {"train": [str(train)], "eval": [str(train)], "max_length": 64, "cache_dir": str(tmp_path / "cache"),
                    "num_proc": 2},
           "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "max_steps": 1, "report_to": [], "seed": 3}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sftlab", "train", str(path), "--debug"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"torchrun failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    lines = res.stdout.splitlines()
    stores = list((tmp_path / "cache").iterdir())
    assert len(stores) == 1  # train and eval are the same file: one store
    rendering = [x for x in lines if "rendering" in x]
    assert len(rendering) == 1 and "2 processes" in rendering[0], res.stdout  # once on the node, in parallel
    mapped = [x for x in lines if "rank 1: memory-mapped" in x]
    assert len(mapped) == 2 and all(str(stores[0]) in x for x in mapped), res.stdout  # train and eval
    used = json.loads((tmp_path / "run" / "data_cache.json").read_text())
    assert used["train"][0]["store"] == str(stores[0]) and used["train"][0]["hit"] is False
    assert used["eval"][0]["hit"] is True
