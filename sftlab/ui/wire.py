"""The JSON bodies the page scripts send (pydantic models: a bad body is a 400 naming the field)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FixIn(Body):
    """A fix: an edited reply, or which of two replies to keep (the other becomes the rejected side of the pair)."""

    eval: str | None = Field(None, description="eval dir id (the prediction's)")
    other: str | None = Field(None, description="side by side: the other eval dir id (its reply is B)")
    review: str | None = Field(None, description="review id (then `id` is the review's item)")
    id: str = Field(..., min_length=1, description="prediction id, or the review item")
    reply: str | None = Field(None, description="the corrected reply")
    keep: Literal["A", "B"] | None = Field(None, description="keep the better of two replies")
    annotator: str | None = Field(None, max_length=64)


class ReviewIn(Body):
    """A new review of an eval dir's predictions: A/B against `baseline` (another eval dir) or the eval's own
    baseline replies, else single-grade 1-10."""

    eval: str = Field(..., min_length=1)
    baseline: str | None = None
    grading: Literal["auto", "single"] = Field("auto", description="auto: A/B when there are two replies")
    dimensions: str = Field("overall", min_length=1, description="comma-separated")
    limit: int | None = Field(None, ge=1, description="review a seeded sample of this many items")
    seed: int = 0
    name: str | None = Field(None, max_length=64)


class VoteIn(Body):
    annotator: str = Field(..., min_length=1, max_length=64)
    item: str = Field(..., min_length=1)
    dimension: str = Field(..., min_length=1)
    value: str = Field(..., min_length=1, max_length=3, description="A, B, C (tie) or 1-10")


class ChatIn(Body):
    endpoint: str = Field(..., min_length=1, description="base URL of an OpenAI-compatible server")
    model: str = Field(..., min_length=1)
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    max_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


class FeedbackIn(Body):
    endpoint: str = Field(..., min_length=1)
    id: str = Field(..., min_length=1, description="the chat completion's id")
    score: Literal[-1, 0, 1]
    comment: str | None = None
