"""Choosing a backend: a local directory → hf (or vllm), a {base_url, model} dict → an OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.infer.api import Generator

BACKENDS = ("auto", "hf", "vllm", "openai")


def load_generator(model: str | Path | dict, backend: str = "auto", **options: Any) -> Generator:
    """Build a Generator. `model` is a local model dir (full model, LoRA adapter dir or merged export) or a dict
    {"base_url", "model", "api_key_env"?, "concurrency"?, "max_retries"?, "timeout"?}. `auto` takes hf for a
    directory and openai for a dict; vllm is only chosen when asked for (backend="vllm")."""
    if backend not in BACKENDS:
        raise UserError(f"unknown inference backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if isinstance(model, dict) or backend == "openai":
        from sftlab.infer.openai_api import OpenAIGenerator  # lazy: the openai client takes ~0.5 s to import

        cfg = dict(model) if isinstance(model, dict) else {"base_url": str(model)}
        cfg.update(options)
        return OpenAIGenerator(**cfg)
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"model directory not found: {path} (give a local model dir, or a dict with base_url "
                        f"and model for an OpenAI-compatible endpoint)")
    if backend == "vllm":
        from sftlab.infer.vllm_engine import VLLMGenerator  # lazy: the vllm backend imports torch

        return VLLMGenerator(path, **options)
    from sftlab.infer.hf import HFGenerator  # lazy: the hf backend imports torch and transformers

    return HFGenerator.from_dir(path, **options)
