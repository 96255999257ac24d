"""`sftlab serve`: an OpenAI-compatible server over a model dir (or a logging gateway in front of another server),
and `sftlab serve export-log` (the request log → canonical records for `sftlab data ...`)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from sftlab.cli.apps import app

serve_app = typer.Typer(pretty_exceptions_enable=False, invoke_without_command=True,
                        help="Serve a model over the OpenAI API, with a request/feedback log.")
app.add_typer(serve_app, name="serve")


def default_log_path(model: Path | None) -> Path:
    """RUN/serve.db when serving a run's final/ or checkpoint dir (sftlab's RUN/checkpoints/step-N, HF's
    RUN/checkpoint-N), else ./serve.db."""
    if model is not None and model.parent.name == "checkpoints" and re.fullmatch(r"step-\d+", model.name):
        return model.parent.parent / "serve.db"
    if model is not None and (model.name == "final" or model.name.startswith("checkpoint-")):
        return model.parent / "serve.db"
    return Path("serve.db")


@serve_app.callback()
def serve(ctx: typer.Context,
          model: Path | None = typer.Option(None, "--model", help="Model dir (HF layout, LoRA adapter or merged "
                                            "export)."),
          host: str = typer.Option("127.0.0.1", help="Bind address (0.0.0.0 exposes the server to the network)."),
          port: int = typer.Option(8000),
          log: Path | None = typer.Option(None, "--log", help="SQLite request log (default: RUN/serve.db for a "
                                          "run's final/ dir, else ./serve.db)."),
          upstream: str | None = typer.Option(None, "--upstream", help="Gateway mode: forward to this "
                                              "OpenAI-compatible base URL (e.g. a vllm serve) and log."),
          upstream_model: str | None = typer.Option(None, help="Model name at the upstream (default: its only one)."),
          upstream_api_key_env: str | None = typer.Option(None, help="Env var with the upstream's API key."),
          backend: str = typer.Option("hf", help="hf | vllm (local model)."),
          served_model_name: str | None = typer.Option(None, help="Model id clients use (default: --model as "
                                                       "given)."),
          max_batch_size: int = typer.Option(32, help="Most rows per generate call (1 = one request at a time)."),
          max_wait_ms: float = typer.Option(5.0, help="How long a batch waits for more requests to join."),
          api_key: str | None = typer.Option(None, "--api-key", envvar="SFTLAB_SERVE_API_KEY",
                                             help="Require Authorization: Bearer KEY.")) -> None:
    """Serve --model (or front --upstream): GET /v1/models, POST /v1/chat/completions (stream too),
    POST /v1/feedback, GET /health."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from sftlab.errors import UserError
    from sftlab.infer import load_generator
    from sftlab.serve.app import create_app
    from sftlab.serve.log import RequestLog

    if (model is None) == (upstream is None):
        raise UserError("give exactly one of --model DIR or --upstream URL")
    if upstream and (served_model_name or backend != "hf"):  # would be silently ignored in gateway mode
        raise UserError("--served-model-name and --backend apply to --model; in gateway mode clients use the "
                        "upstream's model name (choose it with --upstream-model)")
    if upstream:
        generator = load_generator({"base_url": upstream, "model": upstream_model,
                                    "api_key_env": upstream_api_key_env, "concurrency": max(1, max_batch_size)})
    else:
        generator = load_generator(model, backend=backend, model_id=served_model_name or str(model),
                                   **({"batch_size": max_batch_size} if backend == "hf" else {}))
    log_path = log or default_log_path(model)
    request_log = RequestLog(log_path)
    typer.echo(f"serving {generator.model_id!r} on http://{host}:{port}/v1 "
               f"({'gateway to ' + upstream if upstream else backend}; log {log_path}; "
               f"max batch {max_batch_size})")
    uvicorn.run(create_app(generator, request_log, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                           api_key=api_key, upstream=upstream), host=host, port=port, log_level="info")


@serve_app.command("export-log")
def export_log(db: Path = typer.Argument(..., help="The server's SQLite request log."),
               out: Path = typer.Option(..., "-o", "--out", help="Output JSONL of canonical records."),
               min_score: int | None = typer.Option(None, help="Only replies with feedback score >= this.")) -> None:
    """Write the logged conversations + replies (+ feedback and provenance in meta) as canonical records."""
    from sftlab.data.records import write_jsonl
    from sftlab.serve.log import export_records

    records, skipped = export_records(db, min_score=min_score)
    n = write_jsonl(records, out)
    left = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v)
    typer.echo(f"wrote {n} records to {out}" + (f" (left out: {left})" if left else ""))
