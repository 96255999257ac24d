"""User-facing errors: the CLI prints their one-line message and exits non-zero (no traceback without --debug)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, data or configuration (not a bug in sftlab)."""

    exit_code = 2


class RecordError(UserError, ValueError):
    """A bad input record or line. Its message is one line naming file, line/index, field and reason."""

    def __init__(self, reason: str, *, file: str | None = None, index: int | None = None,
                 field: str | None = None, code: str | None = None, unit: str = "record") -> None:
        self.reason = reason
        self.unit = unit  # "line" for JSONL line numbers (1-based), "record" for 0-based indices
        self.file = file
        self.index = index
        self.field = field
        self.code = code or reason.split(":")[0].strip().replace(" ", "_")[:40]
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.index is not None:
            where.append(f"{self.unit} {self.index}")
        if self.field:
            where.append(f"field '{self.field}'")
        return (": ".join([", ".join(where), self.reason]) if where else self.reason)

    def located(self, file: str | None = None, index: int | None = None) -> RecordError:
        """The same error with file/index filled in where they were unknown."""
        return RecordError(self.reason, file=self.file or file,
                           index=self.index if self.index is not None else index,
                           field=self.field, code=self.code, unit=self.unit)
