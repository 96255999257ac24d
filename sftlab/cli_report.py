"""`sftlab report RUN_DIR` (observability)."""

from sftlab.cli_apps import app  # noqa: F401
