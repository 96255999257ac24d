"""Chat: a playground against `sftlab serve` or any OpenAI-compatible endpoint, two models side by side, thumbs
up/down sent to the endpoint's /v1/feedback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sftlab.ui.chat import complete, list_models, normalize_url, send_feedback
from sftlab.ui.templating import page
from sftlab.ui.wire import ChatIn, FeedbackIn
from sftlab.ui.workspace import Workspace

router = APIRouter()


@router.get("/chat", response_class=HTMLResponse)
def chat_page(request: Request) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    return page(request, "chat.html", title="Chat", nav="chat", endpoints=ws.endpoints)


@router.get("/api/chat/models")
def models_api(request: Request, endpoint: str) -> dict[str, Any]:
    ws: Workspace = request.app.state.ws
    return {"endpoint": normalize_url(endpoint), "models": list_models(endpoint, ws.endpoint_key_env)}


@router.post("/api/chat")
def chat_api(request: Request, body: ChatIn) -> dict[str, Any]:
    ws: Workspace = request.app.state.ws
    return complete(body.endpoint, body.model, body.messages, max_tokens=body.max_tokens,
                    temperature=body.temperature, key_env=ws.endpoint_key_env)


@router.post("/api/chat/feedback")
def feedback_api(request: Request, body: FeedbackIn) -> dict[str, Any]:
    ws: Workspace = request.app.state.ws
    return send_feedback(body.endpoint, body.id, body.score, body.comment, key_env=ws.endpoint_key_env)
