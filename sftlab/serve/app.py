"""The FastAPI app: the routes (routes.py) over one ServeState, the error handlers that turn every failure into
OpenAI's error object, the published schema; and how to run it in a thread (tests, benchmarks)."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import sftlab
from sftlab.infer import Generator
from sftlab.serve import routes
from sftlab.serve.batcher import Batcher
from sftlab.serve.chat import MAX_BODY_BYTES, ServeState
from sftlab.serve.log import RequestLog
from sftlab.serve.protocol import APIError, validation_error
from sftlab.serve.tool_calls import get_parser

logger = logging.getLogger("sftlab.serve")


def create_app(generator: Generator, log: RequestLog | None = None, *, max_batch_size: int = 32,
               max_wait_ms: float = 5.0, api_key: str | None = None, upstream: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, tool_call_parser: str | None = "auto") -> FastAPI:
    """An OpenAI-compatible app over one generator. Requests are batched by a Batcher; every answered request
    (and its feedback) goes to `log`. tool_call_parser: a name from sftlab.serve.tool_calls, None for none;
    "auto" is hermes (sftlab's chat template layout) for a local model and none in gateway mode (the upstream
    parses its own)."""
    if tool_call_parser == "auto":
        tool_call_parser = None if upstream else "hermes"
    state = ServeState(
        generator=generator, batcher=Batcher(generator, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms),
        log=log, model_id=generator.model_id, max_context=getattr(generator, "max_context", None),
        system_fingerprint=fingerprint(generator.model_id, upstream), api_key=api_key, upstream=upstream,
        max_body_bytes=max_body_bytes, tool_parser=get_parser(tool_call_parser))
    app = FastAPI(title="sftlab serve", version=sftlab.__version__, lifespan=_lifespan,
                  description="OpenAI-compatible chat completions over a model trained with sftlab, with a "
                              "request/feedback log for the data flywheel.")
    app.state.serve = state
    app.include_router(routes.public)
    app.include_router(routes.api)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.serve.batcher.close()


def fingerprint(model_id: str, upstream: str | None) -> str:
    """OpenAI's system_fingerprint: changes when what answers changes (sftlab's version, model, upstream)."""
    text = f"sftlab {sftlab.__version__} {model_id} {upstream or 'local'}"
    return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:10]


async def api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def request_validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400, `param` naming the field."""
    error = validation_error(list(e.errors()), e.body, request.app.state.serve.model_id)
    return JSONResponse(error.body(), status_code=400)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    # unknown paths (e.g. /v1/completions) and methods: OpenAI's error object, not FastAPI's {"detail"}
    return JSONResponse(APIError(f"{request.method} {request.url.path}: {e.detail}", None,
                                 "not_found" if e.status_code == 404 else None, status=e.status_code).body(),
                        status_code=e.status_code, headers=getattr(e, "headers", None))


async def server_error(request: Request, e: Exception) -> JSONResponse:
    """The last resort: a bug, not a bad request. Logged with its traceback; the client gets no internals."""
    logger.error("%s %s: unhandled %s", request.method, request.url.path, type(e).__name__, exc_info=e)
    return JSONResponse(APIError("internal server error (logged on the server)", None, "internal_error",
                                 status=500, type="server_error").body(), status_code=500)


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, less its 422 (validation errors are answered as 400s), plus the stream chunk model
    (no route returns it as JSON), with the served model id as the only `model` and an example request."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        for model in routes.EXTRA_SCHEMAS:
            extra = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            components.update(extra.pop("$defs", {}))
            components[model.__name__] = extra
        model_id = app.state.serve.model_id
        request = components["ChatCompletionRequest"]
        request["properties"]["model"]["enum"] = [model_id]
        request["examples"] = [{"model": model_id, "messages": [{"role": "user", "content": "Say hi."}],
                                "max_tokens": 8}]
        app.openapi_schema = schema
    return app.openapi_schema


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> tuple[str, Any]:
    """Run the app with uvicorn in a daemon thread (tests, benchmarks). Returns (base_url ending in /v1, server);
    set server.should_exit = True to stop it. port=0 picks a free port."""
    import uvicorn  # lazy: only the thread runner needs it

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name="sftlab-serve", daemon=True).start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError(f"the server did not start within {timeout:.0f} s")
        time.sleep(0.02)
    return f"http://{host}:{port}/v1", server
