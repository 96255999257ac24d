"""The chat-completions path: a validated request -> checks against the served model -> the batcher -> tool calls
split out of the text -> the response (JSON or SSE chunks) and one log row. Every function takes the server's
state explicitly (a ServeState), so each step can be called and tested on its own."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sftlab.errors import UserError
from sftlab.infer import GenerationParams, Generator, Reply
from sftlab.serve.batcher import Batcher
from sftlab.serve.log import RequestLog
from sftlab.serve.protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    check_conversation,
    conversation,
)
from sftlab.serve.tool_calls import Piece, ToolCallParser, ToolCallSplitter

MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS = 256


@dataclass
class ServeState:
    """Everything a request needs from the server; built once by create_app and kept in app.state.serve."""

    generator: Generator
    batcher: Batcher
    log: RequestLog | None
    model_id: str
    max_context: int | None
    system_fingerprint: str
    api_key: str | None = None
    upstream: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    tool_parser: ToolCallParser | None = None
    tool_call_errors: int = 0  # malformed tool-call blocks left as content, since start


@dataclass
class ChatJob:
    """A request as the generator and the log see it."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    params: GenerationParams
    stream: bool
    include_usage: bool
    parse_tools: bool  # split tool calls out of the text (tools given, tool_choice auto, a parser configured)
    extra: dict[str, Any] = field(default_factory=dict)  # request fields the log keeps beside the params


@dataclass
class Answer:
    """One choice as the client sees it and the log keeps it."""

    content: str
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str
    completion_tokens: int
    logprobs: list[float] | None = None
    malformed_tool_calls: int = 0


# ---- request -> job ----

def prepare(state: ServeState, req: ChatCompletionRequest) -> ChatJob:
    """Check what the schema cannot (the served model, its context, the conversation rules, unsupported options)."""
    if req.model != state.model_id:
        raise APIError(f"model {req.model!r} is not served here; this server serves {state.model_id!r}", "model",
                       "model_not_found")
    check_conversation(req.messages)
    _check_options(req)
    max_name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None and state.max_context and max_tokens > state.max_context:
        raise APIError(f"'{max_name}' is {max_tokens}, above the model's context of {state.max_context} tokens",
                       max_name, "invalid_value")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    params = GenerationParams(
        max_new_tokens=max_tokens or min(DEFAULT_MAX_TOKENS, state.max_context or DEFAULT_MAX_TOKENS),
        temperature=1.0 if req.temperature is None else float(req.temperature),  # OpenAI's default is 1
        top_p=1.0 if req.top_p is None else float(req.top_p),
        n=req.n or 1, seed=req.seed, stop=[req.stop] if isinstance(req.stop, str) else req.stop,
        logprobs=bool(req.logprobs))
    tool_choice = req.tool_choice or "auto"
    job = ChatJob(conversation(req.messages), tools, params, bool(req.stream),
                  bool(req.stream_options and req.stream_options.include_usage),
                  parse_tools=bool(tools) and tool_choice == "auto" and state.tool_parser is not None,
                  extra={"tool_choice": req.tool_choice} if req.tool_choice else {})
    _check_prompt(state, job)
    return job


def _check_options(req: ChatCompletionRequest) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError("'stream_options' is only allowed when 'stream' is true", "stream_options", "invalid_value")
    if req.tool_choice is not None and not req.tools:
        raise APIError("'tool_choice' is only allowed when 'tools' are given", "tool_choice", "invalid_value")
    if req.tool_choice is not None and req.tool_choice not in ("none", "auto"):
        shown = req.tool_choice if isinstance(req.tool_choice, str) else "a named function"
        raise APIError(f"'tool_choice' {shown!r} is not supported by this server (it cannot force a call without "
                       "constrained decoding); use 'auto' or 'none'", "tool_choice", "unsupported_parameter")
    if req.top_logprobs:
        raise APIError("'top_logprobs' is not supported by this server (logprobs of the chosen tokens only)",
                       "top_logprobs", "unsupported_parameter")


def _check_prompt(state: ServeState, job: ChatJob) -> None:
    prompt_ids = getattr(state.generator, "prompt_ids", None)
    if prompt_ids is None or not state.max_context:
        return
    try:
        n_prompt = len(prompt_ids(job.messages, job.tools))
    except UserError as e:
        raise APIError(str(e), "messages", "invalid_value") from None
    if n_prompt >= state.max_context:
        raise APIError(f"the prompt has {n_prompt} tokens, the model's context is {state.max_context} tokens; "
                       "shorten the messages", "messages", "context_length_exceeded")


# ---- job -> replies ----

async def generate(state: ServeState, job: ChatJob, request: Request,
                   on_text: Callable[[int, str], bool] | None = None) -> list[Reply] | None:
    """The replies, or None when the client went away first (its queued job is then dropped)."""
    work = asyncio.ensure_future(state.batcher.submit(job.messages, job.tools, job.params, on_text))
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (a streaming client went away)
        gone.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled() or not work.done():  # a job cancelled just now is only done at the loop's next step
        return None
    try:
        return work.result()
    except UserError as e:
        status = getattr(e, "status", 400)
        raise APIError(str(e), None, "upstream_error" if state.upstream else "invalid_value",
                       status=status if 400 <= status < 500 else 502) from None
    except Exception as e:  # the model failed on this request: a 500 naming the error, the server goes on
        raise APIError(f"generation failed: {type(e).__name__}: {e}", None, "internal_error", status=500,
                       type="server_error") from e


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- replies -> answers (tool calls split out) ----

class ChoiceStream:
    """One choice's text on its way out: the deltas to stream as text arrives, and the final Answer. The plain
    (non-streamed) path uses it too, with nothing streamed, so both split tool calls identically."""

    def __init__(self, parser: ToolCallParser | None) -> None:
        self.splitter = ToolCallSplitter(parser) if parser else None
        self.streamed = ""
        self.n_calls = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.streamed += text
        if self.splitter is None:
            return [{"content": text}] if text else []
        return self._deltas(self.splitter.feed(text))

    def finish(self, reply: Reply) -> tuple[list[dict[str, Any]], Answer]:
        """The deltas still to send (the text not streamed yet, held-back text, tool calls) and the Answer."""
        rest = reply.text[len(self.streamed):] if reply.text.startswith(self.streamed) else ""
        deltas = self.feed(rest)
        logprobs = [lp if math.isfinite(lp) else -9999.0 for lp in reply.logprobs] if reply.logprobs else None
        if reply.tool_calls:  # an upstream's parsed calls (gateway): whole, after the text
            deltas += [{"tool_calls": [{"index": j, **c}]} for j, c in enumerate(reply.tool_calls)]
            return deltas, Answer(reply.text, reply.tool_calls, reply.finish_reason, reply.completion_tokens,
                                  logprobs)
        if self.splitter is None:
            return deltas, Answer(reply.text, None, reply.finish_reason, reply.completion_tokens, logprobs)
        deltas += self._deltas(self.splitter.end())
        calls = self.splitter.calls or None
        return deltas, Answer(self.splitter.content, calls, "tool_calls" if calls else reply.finish_reason,
                              reply.completion_tokens, logprobs, self.splitter.malformed)

    def _deltas(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in pieces:
            if p.call is None:
                out.append({"content": p.text})
                continue
            fn = p.call["function"]  # OpenAI's order: id, type and name first, then the arguments
            out.append({"tool_calls": [{"index": self.n_calls, "id": p.call["id"], "type": "function",
                                        "function": {"name": fn["name"], "arguments": ""}}]})
            out.append({"tool_calls": [{"index": self.n_calls, "function": {"arguments": fn["arguments"]}}]})
            self.n_calls += 1
        return out


def usage(replies: list[Reply]) -> dict[str, int]:
    prompt = replies[0].prompt_tokens if replies else 0
    completion = sum(r.completion_tokens for r in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _message(a: Answer) -> dict[str, Any]:
    if a.tool_calls:
        return {"role": "assistant", "content": a.content if a.content.strip() else None, "tool_calls": a.tool_calls}
    return {"role": "assistant", "content": a.content}


def _logprobs(a: Answer) -> dict[str, Any] | None:
    if a.logprobs is None:
        return None
    return {"content": [{"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in a.logprobs]}


async def record_answers(state: ServeState, rid: str, t0: float, job: ChatJob, replies: list[Reply],
                         answers: list[Answer]) -> None:
    """Count the malformed tool-call blocks (/health) and write the request's log row."""
    state.tool_call_errors += sum(a.malformed_tool_calls for a in answers)
    if state.log is None:
        return
    counts = usage(replies)
    choices = [{"text": a.content, "finish_reason": a.finish_reason, "completion_tokens": a.completion_tokens,
                **({"tool_calls": a.tool_calls} if a.tool_calls else {}),
                **({"malformed_tool_calls": a.malformed_tool_calls} if a.malformed_tool_calls else {})}
               for a in answers]
    await asyncio.to_thread(
        state.log.add_request, response_id=rid, created=t0, latency_ms=(time.time() - t0) * 1000,
        model=state.model_id, messages=job.messages, tools=job.tools,
        params={**dataclasses.asdict(job.params), **job.extra}, choices=choices,
        prompt_tokens=counts["prompt_tokens"], completion_tokens=counts["completion_tokens"], stream=job.stream,
        upstream=state.upstream)


# ---- the endpoint ----

async def create_chat_completion(state: ServeState, req: ChatCompletionRequest, request: Request) -> Any:
    t0 = time.time()
    job = prepare(state, req)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(t0)
    if job.stream:
        return StreamingResponse(stream_chat(state, job, request, rid, t0), media_type="text/event-stream")
    replies = await generate(state, job, request)
    if replies is None:
        return Response(status_code=499)  # client closed the connection (nginx's code); nobody reads this
    parser = state.tool_parser if job.parse_tools else None
    answers = [ChoiceStream(parser).finish(r)[1] for r in replies]
    await record_answers(state, rid, t0, job, replies, answers)
    return ChatCompletion.model_validate({
        "id": rid, "created": created, "model": state.model_id, "system_fingerprint": state.system_fingerprint,
        "choices": [{"index": k, "message": _message(a), "finish_reason": a.finish_reason,
                     "logprobs": _logprobs(a)} for k, a in enumerate(answers)],
        "usage": usage(replies)})


def chunk_event(state: ServeState, rid: str, created: int, choices: list[dict[str, Any]],
                usage_counts: dict[str, int] | None = None) -> str:
    """One SSE event: a chat.completion.chunk (usage null except on the usage chunk, as OpenAI sends)."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_id,
            "system_fingerprint": state.system_fingerprint, "choices": choices, "usage": usage_counts}
    return f"data: {json.dumps(body)}\n\n"


async def stream_chat(state: ServeState, job: ChatJob, request: Request, rid: str, t0: float) -> AsyncIterator[str]:
    """SSE chunks: the role, each choice's text (and tool calls) as generated (hf backend; without stop strings),
    the rest and the finish reasons, optional usage, [DONE]. A client that leaves stops its rows (or drops its
    queued job)."""
    created, n = int(t0), job.params.n
    choices = [ChoiceStream(state.tool_parser if job.parse_tools else None) for _ in range(n)]

    def event(k: int, delta: dict[str, Any], finish: str | None = None) -> str:
        return chunk_event(state, rid, created, [{"index": k, "delta": delta, "finish_reason": finish}])

    yield chunk_event(state, rid, created, [{"index": k, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None} for k in range(n)])
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
    listening = [True]

    def on_text(k: int, text: str) -> bool:  # called on the batcher's thread
        if not listening[0]:
            return False
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, (k, text))
        except RuntimeError:  # the event loop is gone
            return False
        return True

    task = asyncio.ensure_future(generate(state, job, request, on_text))
    task.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece already scheduled
    try:
        while (item := await pieces.get()) is not None:
            for delta in choices[item[0]].feed(item[1]):
                yield event(item[0], delta)
        replies = task.result()
    except Exception as e:  # headers are sent: the error goes in the stream, as OpenAI does
        error = e if isinstance(e, APIError) else APIError(f"internal error: {type(e).__name__}", None,
                                                           "internal_error", status=500, type="server_error")
        yield f"data: {json.dumps(error.body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    finally:
        listening[0] = False
        task.cancel()
    if replies is None:
        return
    finished = [c.finish(r) for c, r in zip(choices, replies, strict=True)]
    # logged before the last chunks: a client leaving after the text loses no row
    await record_answers(state, rid, t0, job, replies, [a for _, a in finished])
    for k, (deltas, _) in enumerate(finished):
        for delta in deltas:
            yield event(k, delta)
    yield chunk_event(state, rid, created, [{"index": k, "delta": {}, "finish_reason": a.finish_reason}
                                            for k, (_, a) in enumerate(finished)])
    if job.include_usage:
        yield chunk_event(state, rid, created, [], usage(replies))
    yield "data: [DONE]\n\n"
