"""The inference interface every backend implements (fixed: evaluation, synthesis and the server code against it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sftlab.errors import UserError


@dataclass
class GenerationParams:
    """Sampling parameters, named as in the OpenAI API (max_new_tokens is its max_tokens)."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] | None = None
    logprobs: bool = False


@dataclass
class Reply:
    """One generated assistant turn. completion_tokens counts every generated token, the end-of-turn token included."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None  # per generated token, when params.logprobs
    # OpenAI tool calls [{id, type, function: {name, arguments}}] an endpoint returned (finish_reason
    # "tool_calls"); the local backends return text only (no tool-call parser)
    tool_calls: list[dict] | None = None


@runtime_checkable
class Generator(Protocol):
    model_id: str

    def generate(self, conversations: list[list[dict]], params: GenerationParams,
                 tools: list[dict] | None = None) -> list[list[Reply]]:
        """One list of params.n replies per conversation, in input order; conversations end on a user/tool turn."""
        ...


def check_params(params: GenerationParams) -> None:
    """Reject impossible parameters with one clear line (shared by all backends)."""
    if params.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise UserError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.n < 1:
        raise UserError(f"n must be >= 1, got {params.n}")
    if params.stop is not None and not all(isinstance(s, str) and s for s in params.stop):
        raise UserError(f"stop must be a list of non-empty strings, got {params.stop!r}")


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded, as in the OpenAI API), and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop or []) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)
