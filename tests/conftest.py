"""Shared fixtures: the tiny local model (built once per test process, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"shared real data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from sftlab.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=2,
                            num_heads=4, intermediate_size=128)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from sftlab.data.render import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))
