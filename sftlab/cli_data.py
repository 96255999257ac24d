"""`sftlab data inspect | render | convert` (foundation data commands)."""

from sftlab.cli_apps import data_app  # noqa: F401
