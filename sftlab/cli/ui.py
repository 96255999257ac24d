"""`sftlab ui [DIR ...]`: the local web app over runs, evals, datasets, reviews and served models."""

from __future__ import annotations

from pathlib import Path

import typer

from sftlab.cli.apps import app


@app.command("ui")
def ui(paths: list[Path] | None = typer.Argument(None, help="Run dirs, eval dirs, data files, or folders holding them "
                                                 "(default: the current directory)."),
       host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs "
                                "--auth-token."),
       port: int = typer.Option(7860, "--port", min=1, max=65535),
       auth_token: str | None = typer.Option(None, "--auth-token", envvar="SFTLAB_UI_TOKEN",
                                             help="Require this token (open the URL with ?token=... once)."),
       endpoint: list[str] = typer.Option([], "--endpoint", help="OpenAI-compatible base URL for the chat "
                                          "playground, e.g. http://127.0.0.1:8000/v1 (repeatable)."),
       endpoint_key_env: str = typer.Option("OPENAI_API_KEY", "--endpoint-key-env",
                                            help="Environment variable holding the endpoints' API key."),
       tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer (model dir) for data files given "
                                            "directly (runs use their own)."),
       fixes: Path | None = typer.Option(None, "--fixes", help="Where fixes go: FIXES/sft.jsonl + FIXES/pairs.jsonl "
                                         "(default: fixes/ in the first DIR)."),
       ) -> None:
    """Watch runs, read evals, review replies blind and turn fixed bad cases into training data, in the browser."""
    from sftlab.ui.app import serve  # lazy: start-up
    from sftlab.ui.chat import normalize_url
    from sftlab.ui.workspace import Workspace

    roots = list(paths or [Path(".")])
    first_dir = next((p for p in roots if p.is_dir()), Path("."))
    ws = Workspace(paths=roots, fixes_dir=fixes or first_dir / "fixes", tokenizer=tokenizer,
                   endpoints=[normalize_url(e) for e in endpoint], endpoint_key_env=endpoint_key_env)
    typer.echo(f"sftlab ui on http://{'[' + host + ']' if ':' in host else host}:{port}/ "
               f"({', '.join(map(str, roots))}; fixes go to {ws.fixes_dir})")
    serve(ws, host=host, port=port, auth_token=auth_token)
