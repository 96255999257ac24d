"""Step options as pydantic models, so a wrong type or range in a CLI flag or a pipeline YAML is one clear line."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sftlab.errors import UserError

T = TypeVar("T", bound=BaseModel)


class StepConfig(BaseModel):
    """Base of every step's options: unknown keys and wrong types are refused (no silent coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_config(cls: type[T], step: str, values: dict[str, Any] | None = None) -> T:
    """Build a step config; a validation error becomes a one-line UserError naming the option."""
    try:
        return cls(**(values or {}))
    except ValidationError as e:
        err = e.errors()[0]
        if not err["loc"]:  # a check across options (a model validator): its message names them; no "got {...}"
            raise UserError(f"{step}: {err['msg'].removeprefix('Value error, ')}") from None
        loc = ".".join(str(x) for x in err["loc"])
        got = err.get("input")
        got_s = f", got {got!r} ({type(got).__name__})" if err["type"] != "extra_forbidden" else ""
        raise UserError(f"{step}: option '{loc}': {err['msg']}{got_s}") from None
