"""The FastAPI app of `sftlab ui`: server-rendered pages (Jinja2) plus a few JSON endpoints the page scripts poll;
every asset is inside the package (no CDN, works offline).

Access: the app binds 127.0.0.1 by default and then answers only requests addressed to a loopback name (a page on
another site cannot reach it through DNS rebinding). With `--auth-token` every request needs the token (header
`Authorization: Bearer T`, or once `?token=T`, which sets a cookie); compared in constant time. Requests that change
something are JSON POSTs: a form on another site cannot send them.

Errors: a user error is the page (or JSON) saying what is wrong, never a traceback; anything unexpected is logged
with its traceback and answered 500 — the server keeps serving either way.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sftlab.errors import UserError
from sftlab.ui import pages_chat, pages_data, pages_eval, pages_review, pages_runs
from sftlab.ui.templating import HERE
from sftlab.ui.templating import error_response as _error
from sftlab.ui.workspace import NotFound, Workspace

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
COOKIE = "sftlab_ui_token"


def create_app(ws: Workspace, *, auth_token: str | None = None, loopback_only: bool = True) -> FastAPI:
    """The app over a workspace. loopback_only: answer only requests whose Host is a loopback name."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ws.close()

    app = FastAPI(title="sftlab ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ws = ws
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (pages_runs, pages_data, pages_eval, pages_review, pages_chat):
        app.include_router(module.router)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if loopback_only and host not in LOOPBACK:
            return JSONResponse({"error": f"host {host!r} refused: this server answers on 127.0.0.1 / localhost"},
                                status_code=403)
        if auth_token:
            sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or \
                request.cookies.get(COOKIE) or request.query_params.get("token") or ""
            if not hmac.compare_digest(sent.encode(), auth_token.encode()):
                return _error(request, 401, "this sftlab ui needs its token: open the URL with ?token=... once, or "
                              "send Authorization: Bearer <token>")
        if request.method == "POST" and not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, status_code=415)
        response = await call_next(request)
        if auth_token and request.query_params.get("token"):
            response.set_cookie(COOKIE, auth_token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError) -> Response:
        return _error(request, 404 if isinstance(e, NotFound) else 400, str(e))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path"))
        return _error(request, 400, f"field '{where}': {first.get('msg', 'invalid')}" if where else
                      f"invalid request: {first.get('msg', e)}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _error(request, e.status_code, f"{request.url.path}: {e.detail}")

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Response:  # uvicorn logs the traceback
        return _error(request, 500, f"internal error: {type(e).__name__}: {e} (the traceback is in the server log)")

    @app.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/runs")

    return app


def serve(ws: Workspace, host: str = "127.0.0.1", port: int = 7860, auth_token: str | None = None) -> None:
    """Run the app with uvicorn until Ctrl-C."""
    import uvicorn  # lazy: only the command that serves needs it

    loopback = host in LOOPBACK
    if not loopback and not auth_token:
        raise UserError(f"--host {host}: anyone who can reach this address could read your runs and write data; "
                        "give --auth-token TOKEN (or bind 127.0.0.1 and use an SSH tunnel)")
    ws.scan(force=True)
    app = create_app(ws, auth_token=auth_token, loopback_only=loopback)
    uvicorn.run(app, host=host, port=port, log_level="warning")
