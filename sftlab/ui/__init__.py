"""`sftlab ui`: the local web app over runs, data, evals, blind review, fixes and chat (docs/ui.md)."""
