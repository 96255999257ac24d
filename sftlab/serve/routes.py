"""The HTTP routes, thin: typed with the protocol models (so /openapi.json is the contract), each one a call into
the chat path or the log. `ServeRoute` checks the API key and decodes the body (body.py) before FastAPI validates
it, so no body can raise past the handler."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from sftlab.serve.body import decoded_request
from sftlab.serve.chat import ServeState, create_chat_completion
from sftlab.serve.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Feedback,
    FeedbackRequest,
    Health,
    ModelCard,
    ModelList,
    error_responses,
)


def serve_state(request: Request) -> ServeState:
    return request.app.state.serve


State = Annotated[ServeState, Depends(serve_state)]


def authorize(state: ServeState, header: str | None) -> None:
    """Bearer-key check in constant time (a timing side channel must not reveal the key)."""
    if state.api_key and not hmac.compare_digest((header or "").encode(), f"Bearer {state.api_key}".encode()):
        raise APIError("invalid or missing API key (send Authorization: Bearer <key>)", None, "invalid_api_key",
                       status=401)


class ServeRoute(APIRoute):
    """A route that checks the API key first, then reads and decodes the JSON body itself (size limit, depth,
    NaN/Infinity, lone surrogates, invalid UTF-8: each a 400/413 naming the field) before FastAPI validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        has_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            state: ServeState = request.app.state.serve
            authorize(state, request.headers.get("authorization"))
            if has_body:
                request = await decoded_request(request, state.max_body_bytes)
            return await handler(request)

        return checked


public = APIRouter()
api = APIRouter(route_class=ServeRoute)

# With `stream: true`: Server-Sent Events. As OpenAPI 3.1 reads an event-stream schema, it describes one event:
# its `data` is a ChatCompletionChunk (or, once headers are sent, an error object) as JSON, or `[DONE]` last.
SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "anyOf": [
        {"const": "[DONE]"},
        {"contentMediaType": "application/json", "contentSchema": {"anyOf": [
            {"$ref": "#/components/schemas/ChatCompletionChunk"}, {"$ref": "#/components/schemas/ErrorResponse"}]}},
    ]}}}}}


@public.get("/health", response_model=Health)
async def health(state: State) -> Health:
    return Health(model=state.model_id, waiting=state.batcher.waiting(), batches=state.batcher.batches,
                  rows=state.batcher.rows, tool_call_errors=state.tool_call_errors)


@api.get("/v1/models", response_model=ModelList, responses=error_responses(401))
async def models(state: State) -> ModelList:
    return ModelList(data=[ModelCard(id=state.model_id, max_model_len=state.max_context)])


@api.post("/v1/chat/completions", response_model=ChatCompletion,
          responses={200: {"content": SSE, "description": "The completion (JSON), or its chunks (SSE)"},
                     **error_responses(400, 401, 413, 500)})
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
    return await create_chat_completion(state, body, request)


@api.post("/v1/feedback", response_model=Feedback, responses=error_responses(400, 401, 413))
async def feedback(body: FeedbackRequest, state: State) -> Feedback:
    if state.log is None:
        raise APIError("this server keeps no request log, so feedback cannot be stored", None, "no_log")
    if not await asyncio.to_thread(state.log.add_feedback, body.id, body.score, body.comment):
        raise APIError(f"no logged chat completion has id {body.id!r}", "id", "not_found")
    return Feedback(id=body.id, score=body.score, comment=body.comment)


EXTRA_SCHEMAS = (ChatCompletionChunk,)  # published in components though no route returns them as JSON
