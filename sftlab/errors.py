"""User-facing errors: the CLI prints their one-line message and exits non-zero (no traceback without --debug)."""


class UserError(Exception):
    """A problem with the user's input, data or configuration (not a bug in sftlab)."""

    exit_code = 2
