"""`sftlab data clean | dedup | stats | select | mix | split | pipeline` (curation commands)."""

from sftlab.cli_apps import data_app  # noqa: F401
