"""The OpenAI chat-completions contract as pydantic models: what the server accepts, what it answers, and its error
object. The routes are typed with these models, so /openapi.json publishes exactly what is validated.

Rules beyond OpenAI's published schema that the models alone cannot express (a tool message answers a preceding
tool call, the last message is a user or tool turn) are in `check_conversation`. Every rejected field becomes an
APIError: HTTP 400 with OpenAI's error object {"error": {"message", "type", "param", "code"}} naming the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictStr
from starlette.exceptions import HTTPException

MAX_N = 16
MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(HTTPException):
    """An error answered with OpenAI's error object (an HTTPException, so FastAPI lets it through body parsing)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error") -> None:
        super().__init__(status_code=status, detail=message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _integral(value: Any) -> Any:
    """326.0 is the integer 326 (JSON Schema's reading of `integer`); 3.5, "3" and true stay errors."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


class Contract(BaseModel):
    """Every model of the contract: no NaN/Infinity, unknown fields ignored (as OpenAI-compatible servers do)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")


Integer = Annotated[int, Strict(), BeforeValidator(_integral)]
Number = Annotated[float, Strict()]  # an int is a number too; a bool or "1.5" is not
NonEmptyStr = Annotated[str, Strict(), Field(min_length=1)]


# ---- request ----

class TextPart(Contract):
    type: Literal["text"]
    text: StrictStr


TextContent = StrictStr | Annotated[list[TextPart], Field(min_length=1)]


class SystemMessage(Contract):
    role: Literal["system"]
    content: TextContent
    name: StrictStr | None = None


class DeveloperMessage(Contract):
    role: Literal["developer"]
    content: TextContent
    name: StrictStr | None = None


class UserMessage(Contract):
    role: Literal["user"]
    content: TextContent
    name: StrictStr | None = None


class FunctionCall(Contract):
    name: StrictStr
    arguments: StrictStr = Field(description="The arguments as JSON text, as the model wrote them.")


class ToolCall(Contract):
    id: StrictStr
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Contract):
    role: Literal["assistant"]
    content: TextContent | None = Field(None, description="Required unless tool_calls are given.")
    name: StrictStr | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None
    refusal: StrictStr | None = None


class ToolMessage(Contract):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: StrictStr = Field(description="The id of the assistant tool call this message answers.")


Message = Annotated[SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
                    Field(discriminator="role")]


class FunctionDefinition(Contract):
    name: Annotated[str, Strict(), Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema object.")
    strict: StrictBool | None = None


class Tool(Contract):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Contract):
    name: StrictStr


class NamedToolChoice(Contract):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Contract):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(Contract):
    """OpenAI's chat-completions body. Supported: "none" and "auto" tool_choice; top_logprobs 0 (see docs)."""

    model: StrictStr
    messages: Annotated[list[Message], Field(min_length=1)]
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[Integer, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[Integer, Field(ge=1)] | None = None
    n: Annotated[Integer, Field(ge=1, le=MAX_N)] | None = None
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[Integer, Field(ge=-(2**63), lt=2**64)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[Integer, Field(ge=0, le=20)] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None


class FeedbackRequest(Contract):
    id: NonEmptyStr = Field(description="The id of a chat completion from this server (chatcmpl-...).")
    score: Annotated[Integer, Field(ge=-1, le=1)]
    comment: StrictStr | None = None


# ---- responses ----

class Usage(Contract):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseFunction(Contract):
    name: str
    arguments: str = Field(description="JSON text of an object.")


class ResponseToolCall(Contract):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunction


class ResponseMessage(Contract):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class TokenLogprob(Contract):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[Any] = Field(default_factory=list)


class ChoiceLogprobs(Contract):
    content: list[TokenLogprob] | None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(Contract):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class CompletionHeader(Contract):
    """What a completion and each of its stream chunks carry alike (OpenAI: the same id on every chunk)."""

    id: str
    created: int
    model: str
    system_fingerprint: str


class ChatCompletion(CompletionHeader):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class DeltaFunction(Contract):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Contract):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class Delta(Contract):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Contract):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(CompletionHeader):
    """One `data:` event of a streamed completion; usage is null except on the last chunk (include_usage)."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(Contract):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sftlab"
    max_model_len: int | None = None


class ModelList(Contract):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Feedback(Contract):
    id: str
    object: Literal["feedback"] = "feedback"
    score: int
    comment: str | None


class Health(Contract):
    status: Literal["ok"] = "ok"
    model: str
    waiting: int
    batches: int
    rows: int
    tool_call_errors: int = Field(description="Tool-call blocks the parser could not read (left as content).")


class ErrorDetail(Contract):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Contract):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries: each status answered with OpenAI's error object."""
    described = {400: "Invalid request: the error names the field in `param`", 401: "Missing or wrong API key",
                 404: "Unknown id or path", 413: "Request body too large", 500: "Server error (logged)"}
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


# ---- validation errors -> APIError ----

def field_path(loc: tuple[Any, ...], data: Any, missing: bool = False) -> str | None:
    """A pydantic error location as OpenAI's param (messages[0].content). Location parts that are not keys of
    the data (union branch names, the discriminator's tag) are skipped by walking the data alongside; a missing
    field, absent from the data by definition, is the location's last part."""
    parts: list[str] = []
    for key in loc[:-1] if missing else loc:
        if isinstance(data, dict) and isinstance(key, str) and key in data:
            parts.append(f".{key}" if parts else key)
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            parts.append(f"[{key}]")
            data = data[key]
    if missing and loc:
        parts.append(f".{loc[-1]}" if parts else str(loc[-1]))
    return "".join(parts) or None


def _reason(error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("missing", "union_tag_not_found"):
        return "is required"
    if kind == "union_tag_invalid":
        return f"must be one of {', '.join(ROLES)}, got {ctx.get('tag')!r}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {_shown(error.get('input'))}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return f"must not be empty, got {_shown(error.get('input'))}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_shown(error.get('input'))}"


def _shown(value: Any) -> str:
    text = repr(value)  # repr escapes lone surrogates, so the message always encodes
    return text if len(text) <= 60 else text[:57] + "..."


def _param(error: dict[str, Any], body: Any) -> str | None:
    loc = tuple(error.get("loc") or ())[1:]  # drop "body"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the discriminator (role) is at fault
        return field_path((*loc, "role"), body, missing=error["type"] == "union_tag_not_found")
    return field_path(loc, body, missing=error["type"] == "missing")


def validation_error(errors: list[dict[str, Any]], body: Any, model_id: str | None = None) -> APIError:
    """FastAPI's request validation errors (422) as one 400 naming one field, with every reason given for it
    joined. A union reports one error per branch; the deepest location is the branch the input meant
    (content [{"type": "text"}] lacks its text, it is no wrong string)."""
    if not errors:
        return APIError("the request body is invalid", None, "invalid_value")
    first = max(errors, key=lambda e: len(_param(e, body) or ""))  # max keeps the first of the deepest
    param = _param(first, body)
    if param is None:
        return APIError("the request body must be a JSON object with the documented fields", None, "invalid_json")
    reasons: list[str] = []
    for e in errors:
        if _param(e, body) == param and (r := _reason(e)) not in reasons:
            reasons.append(r)
    message = f"'{param}' {' or '.join(reasons[:3])}"
    if param == "model" and first["type"] == "missing" and model_id:
        message += f"; this server serves {model_id!r}"
    code = "missing_required_parameter" if first["type"] in ("missing", "union_tag_not_found") else (
        "invalid_type" if first["type"].endswith("_type") else "invalid_value")
    return APIError(message, param, code)


# ---- the conversation rules the schema cannot express ----

def check_conversation(messages: list[BaseModel]) -> None:
    """OpenAI's rules across messages: an assistant turn has content or tool calls; a tool message answers a
    tool call of the assistant turn before it, and every such call is answered; the last turn is user or tool."""
    open_calls: set[str] = set()  # ids of the latest assistant tool calls not answered yet
    answering = False  # inside the run of tool messages after an assistant turn with tool calls
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(m, ToolMessage):
            if not answering:
                raise APIError(f"'{where}': a message with role 'tool' must answer a preceding assistant message "
                               "with 'tool_calls'", f"{where}.role", "invalid_value")
            if m.tool_call_id not in open_calls:
                raise APIError(f"'{where}.tool_call_id' {m.tool_call_id!r} answers no open tool call of the "
                               "assistant message before it", f"{where}.tool_call_id", "invalid_value")
            open_calls.discard(m.tool_call_id)
            continue
        if open_calls:
            raise APIError(f"an assistant message with 'tool_calls' must be followed by tool messages answering "
                           f"each call; unanswered: {', '.join(sorted(open_calls))}", f"{where}.role",
                           "invalid_value")
        answering = False
        if isinstance(m, AssistantMessage):
            if m.content is None and not m.tool_calls:
                raise APIError(f"'{where}.content' is required unless 'tool_calls' are given", f"{where}.content",
                               "missing_required_parameter")
            if m.tool_calls:
                open_calls, answering = {c.id for c in m.tool_calls}, True
    last = messages[-1].role
    if last not in ("user", "tool"):
        raise APIError(f"the last message must be a user or tool message, got {last!r}",
                       f"messages[{len(messages) - 1}].role", "invalid_value")


def text_of(content: Any) -> str | None:
    """A message content as the chat template sees it: text parts joined."""
    if content is None or isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def conversation(messages: list[BaseModel]) -> list[dict[str, Any]]:
    """Validated messages as the plain dicts the generators render (developer is the template's system turn)."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                               "content": text_of(m.content)}
        if getattr(m, "name", None) is not None:
            msg["name"] = m.name
        if getattr(m, "tool_calls", None):
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out
