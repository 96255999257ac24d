"""`sftlab serve`: an OpenAI-compatible server over a model dir (or a logging gateway in front of another server),
and `sftlab serve export-log` (the request log → canonical records for `sftlab data ...`)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from sftlab.cli.apps import app
from sftlab.errors import UserError

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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
          max_model_len: int | None = typer.Option(None, help="Context length to serve (prompt + reply tokens; "
                                                   "default: the model's)."),
          tool_call_parser: str = typer.Option("auto", help="How tool calls are read from the model's text: "
                                               "hermes (<tool_call> JSON, sftlab's and Qwen2.5's layout) | none; "
                                               "auto = hermes for --model, none for --upstream."),
          api_key: str | None = typer.Option(None, "--api-key", envvar="SFTLAB_SERVE_API_KEY",
                                             help="Require Authorization: Bearer KEY.")) -> None:
    """Serve --model (or front --upstream): GET /v1/models, POST /v1/chat/completions (stream too),
    POST /v1/feedback, GET /health; the contract is at /openapi.json (docs at /docs)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn  # lazy: start-up

    from sftlab.infer import load_generator  # lazy: start-up
    from sftlab.serve.app import create_app
    from sftlab.serve.log import RequestLog
    from sftlab.serve.tool_calls import TOOL_CALL_PARSERS

    if (model is None) == (upstream is None):
        raise UserError("give exactly one of --model DIR or --upstream URL")
    if upstream and (served_model_name or backend != "hf" or max_model_len):  # silently ignored in gateway mode
        raise UserError("--served-model-name, --backend and --max-model-len apply to --model; in gateway mode "
                        "clients use the upstream's model name (choose it with --upstream-model)")
    if tool_call_parser not in ("auto", "none", *TOOL_CALL_PARSERS):
        raise UserError(f"--tool-call-parser {tool_call_parser!r}: known parsers are "
                        f"{', '.join(('auto', 'none', *TOOL_CALL_PARSERS))}")
    if upstream:
        generator = load_generator({"base_url": upstream, "model": upstream_model,
                                    "api_key_env": upstream_api_key_env, "concurrency": max(1, max_batch_size)})
    else:
        options = {"batch_size": max_batch_size, "max_context": max_model_len} if backend == "hf" else (
            {"max_model_len": max_model_len} if max_model_len else {})
        generator = load_generator(model, backend=backend, model_id=served_model_name or str(model), **options)
    log_path = log or default_log_path(model)
    request_log = RequestLog(log_path)
    typer.echo(f"serving {generator.model_id!r} on http://{host}:{port}/v1 "
               f"({'gateway to ' + upstream if upstream else backend}; log {log_path}; "
               f"max batch {max_batch_size})")
    if host not in LOOPBACK and not api_key:
        typer.echo(f"warning: --host {host} without --api-key: anyone who can reach port {port} can use the model "
                   f"and write to the request log and its feedback ({log_path})", err=True)
    uvicorn.run(create_app(generator, request_log, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                           api_key=api_key, upstream=upstream,
                           tool_call_parser=None if tool_call_parser == "none" else tool_call_parser),
                host=host, port=port, log_level="info")


@serve_app.command("export-log")
def export_log(db: Path = typer.Argument(..., help="The server's SQLite request log."),
               out: Path = typer.Option(..., "-o", "--out", help="Output JSONL of canonical records; rows that "
                                        "cannot be records go to OUT.rejects.jsonl."),
               min_score: int | None = typer.Option(None, help="Only replies with feedback score >= this."),
               strict: bool = typer.Option(False, "--strict", help="Fail (exit 2, nothing written) if any row "
                                           "cannot be exported, instead of writing it to OUT.rejects.jsonl.")
               ) -> None:
    """Write the logged conversations + replies (+ tool calls, feedback and provenance in meta) as canonical
    records. Every good row is written; each row that cannot be a record is one line of OUT.rejects.jsonl."""
    from sftlab.data.records import write_jsonl  # lazy: start-up
    from sftlab.serve.log import export_records

    export = export_records(db, min_score=min_score)
    rejects_path = Path(str(out) + ".rejects.jsonl")
    if strict and export.rejects:
        first = export.rejects[0]
        raise UserError(f"{db}: {len(export.rejects)} rows cannot be exported (--strict; nothing written); "
                        f"first: row {first['row_id']}: {first['reason']}")
    n = write_jsonl(export.records, out)
    write_jsonl(export.rejects, rejects_path)  # even none, so an old file never lingers
    left = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in export.skipped.items() if v)
    typer.echo(f"wrote {n} records to {out}" + (f" (left out: {left})" if left else "")
               + f"; {len(export.rejects)} rows rejected -> {rejects_path}")
