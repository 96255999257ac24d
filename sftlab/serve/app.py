"""The FastAPI app: /v1/models, /v1/chat/completions (JSON or SSE), /v1/feedback, /health; and how to run it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sftlab.errors import UserError
from sftlab.infer import Generator, Reply
from sftlab.serve.batcher import Batcher
from sftlab.serve.log import RequestLog
from sftlab.serve.protocol import (
    APIError,
    ChatRequest,
    chunk_body,
    completion_body,
    new_response_id,
    parse_chat_request,
    usage,
)

MAX_BODY_BYTES = 1 << 20


def create_app(generator: Generator, log: RequestLog | None = None, *, max_batch_size: int = 32,
               max_wait_ms: float = 5.0, api_key: str | None = None, upstream: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """An OpenAI-compatible app over one generator. Requests are batched by a Batcher; every answered request
    (and its feedback) goes to `log`."""
    batcher = Batcher(generator, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
    max_context = getattr(generator, "max_context", None)
    model_id = generator.model_id

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="sftlab serve", lifespan=lifespan)
    app.state.batcher, app.state.log, app.state.generator = batcher, log, generator

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def authorize(request: Request) -> None:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError("invalid or missing API key (send Authorization: Bearer <key>)", None, "invalid_api_key",
                           status=401)

    async def read_json(request: Request) -> Any:
        # Read to the end even when too large (answering before the client finished sending breaks its pipe),
        # keeping at most max_body_bytes in memory.
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size <= max_body_bytes:
                chunks.append(chunk)
        if size > max_body_bytes:
            raise APIError(f"request body of {size} bytes is above the limit of {max_body_bytes}", None,
                           "request_too_large")
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON: {e}", None, "invalid_json") from None

    def check_prompt(req: ChatRequest) -> None:
        prompt_ids = getattr(generator, "prompt_ids", None)
        if prompt_ids is None or not max_context:
            return
        try:
            n_prompt = len(prompt_ids(req.messages, req.tools))
        except UserError as e:
            raise APIError(str(e), "messages", "invalid_value") from None
        if n_prompt >= max_context:
            raise APIError(f"the prompt has {n_prompt} tokens, the model's context is {max_context} tokens; "
                           "shorten the messages", "messages", "context_length_exceeded")

    async def answer(req: ChatRequest, request: Request, on_text: Any = None) -> list[Reply] | None:
        """The replies, or None when the client went away first (its queued job is then dropped)."""
        job = asyncio.ensure_future(batcher.submit(req.messages, req.tools, req.params, on_text))
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled (a streaming client went away)
            gone.cancel()
            if not job.done():
                job.cancel()
        if job.cancelled() or not job.done():  # a job cancelled just now is only done at the loop's next step
            return None
        try:
            return job.result()
        except UserError as e:
            status = getattr(e, "status", 400)
            raise APIError(str(e), None, "upstream_error" if upstream else "invalid_value",
                           status=status if 400 <= status < 500 else 502) from None

    async def write_log(rid: str, t0: float, req: ChatRequest, replies: list[Reply]) -> None:
        if log is None:
            return
        counts = usage(replies)
        choices = [{"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens,
                    **({"tool_calls": r.tool_calls} if r.tool_calls else {})} for r in replies]
        await asyncio.to_thread(
            log.add_request, response_id=rid, created=t0, latency_ms=(time.time() - t0) * 1000, model=model_id,
            messages=req.messages, tools=req.tools, params=dataclasses.asdict(req.params), choices=choices,
            prompt_tokens=counts["prompt_tokens"], completion_tokens=counts["completion_tokens"], stream=req.stream,
            upstream=upstream)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "waiting": batcher.waiting(), "batches": batcher.batches,
                "rows": batcher.rows}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "sftlab",
                                            "max_model_len": max_context}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        t0 = time.time()
        authorize(request)
        req = parse_chat_request(await read_json(request), model_id, max_context)
        check_prompt(req)
        rid, created = new_response_id(), int(t0)
        if req.stream:
            return StreamingResponse(stream(rid, created, t0, req, request), media_type="text/event-stream")
        replies = await answer(req, request)
        if replies is None:
            return Response(status_code=499)  # client closed the connection (nginx's code); nobody reads this
        await write_log(rid, t0, req, replies)
        return completion_body(rid, created, model_id, replies)

    async def stream(rid: str, created: int, t0: float, req: ChatRequest, request: Request) -> AsyncIterator[str]:
        """SSE chunks: the role, then each choice's text as it is generated (hf backend; without stop strings),
        the rest of the text and the finish reasons, optional usage, [DONE]. A client that leaves stops its
        rows (or drops its queued job)."""
        def event(choices: list[dict[str, Any]], counts: dict[str, int] | None = None) -> str:
            return f"data: {json.dumps(chunk_body(rid, created, model_id, choices, counts))}\n\n"

        def piece(k: int, text: str) -> str:
            return event([{"index": k, "delta": {"content": text}, "finish_reason": None}])

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        listening = True

        def on_text(k: int, text: str) -> bool:  # called on the batcher's thread
            if not listening:
                return False
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, (k, text))
            except RuntimeError:  # the event loop is gone
                return False
            return True

        n = req.params.n
        yield event([{"index": k, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for k in range(n)])
        task = asyncio.ensure_future(answer(req, request, on_text))
        task.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece already scheduled
        streamed = [""] * n
        try:
            while (item := await pieces.get()) is not None:
                streamed[item[0]] += item[1]
                yield piece(*item)
            replies = task.result()
        except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
            error = e if isinstance(e, APIError) else APIError(f"internal error: {type(e).__name__}: {e}", None,
                                                               "internal_error", status=500, type="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        finally:
            listening = False
            task.cancel()
        if replies is None:
            return
        await write_log(rid, t0, req, replies)  # before the last chunks: a client leaving after the text loses no row
        for k, r in enumerate(replies):
            rest = r.text[len(streamed[k]):] if r.text.startswith(streamed[k]) else ""
            if rest:
                yield piece(k, rest)
            if r.tool_calls:  # an upstream's tool calls, whole, in one delta (OpenAI streams them with an index)
                yield event([{"index": k, "delta": {"tool_calls": [{"index": j, **c} for j, c in
                                                                   enumerate(r.tool_calls)]}, "finish_reason": None}])
        yield event([{"index": k, "delta": {}, "finish_reason": r.finish_reason} for k, r in enumerate(replies)])
        if req.include_usage:
            yield event([], usage(replies))
        yield "data: [DONE]\n\n"

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        authorize(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object", None, "invalid_json")
        rid, score, comment = body.get("id"), body.get("score"), body.get("comment")
        if not isinstance(rid, str) or not rid:
            raise APIError("'id' must be the id of a chat completion from this server", "id", "invalid_value")
        if isinstance(score, bool) or score not in (-1, 0, 1):
            raise APIError(f"'score' must be -1, 0 or 1, got {score!r}", "score", "invalid_value")
        if comment is not None and not isinstance(comment, str):
            raise APIError("'comment' must be a string", "comment", "invalid_type")
        if log is None:
            raise APIError("this server keeps no request log, so feedback cannot be stored", None, "no_log")
        score = int(score)
        if not await asyncio.to_thread(log.add_feedback, rid, score, comment):
            raise APIError(f"no logged chat completion has id {rid!r}", "id", "not_found")
        return {"id": rid, "object": "feedback", "score": score, "comment": comment}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        # unknown paths (e.g. /v1/completions) and methods: OpenAI's error object, not FastAPI's {"detail"}
        return JSONResponse(APIError(f"{request.method} {request.url.path}: {e.detail}", None,
                                     "not_found" if e.status_code == 404 else None, status=e.status_code).body(),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(APIError(f"internal error: {type(e).__name__}: {e}", None, "internal_error",
                                     status=500, type="server_error").body(), status_code=500)

    return app


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> tuple[str, Any]:
    """Run the app with uvicorn in a daemon thread (tests, benchmarks). Returns (base_url ending in /v1, server);
    set server.should_exit = True to stop it. port=0 picks a free port."""
    import socket

    import uvicorn

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
