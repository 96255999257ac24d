"""The Jinja2 templates of `sftlab ui` and the helpers every page uses (number formats, error pages)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from sftlab.ui.runs import format_eta

HERE = Path(__file__).parent


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for tables: 4 significant digits, '-' for missing."""
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def pct(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{100 * v:.1f}%"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(fmt=fmt, eta=format_eta, pct=pct)


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template with what every page needs (the workspace's notes about its paths)."""
    return templates.TemplateResponse(request, template, {"ws_notes": request.app.state.ws.notes, **context},
                                      status_code=status_code)


def error_response(request: Request, status: int, message: str) -> Response:
    """JSON {"error"} for the page scripts' /api/ calls, else the error page."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return page(request, "error.html", status_code=status, title="error", message=message, status=status)
