"""Any OpenAI-compatible endpoint (vLLM, sftlab serve, hosted APIs) through the official `openai` client.

Retries with exponential backoff on 429 / 5xx / timeouts / dropped connections are the client's own
(`max_retries`, honouring Retry-After); requests run on a bounded thread pool; any other 4xx is a UserError.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import openai

from sftlab.errors import UserError
from sftlab.infer.api import GenerationParams, Reply, check_params
from sftlab.io import progress_bar


class EndpointError(UserError):
    """The endpoint answered with an error status (after retries for 429/5xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OpenAIGenerator:
    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0, progress: bool = False) -> None:
        if api_key_env and not os.environ.get(api_key_env):
            raise UserError(f"environment variable {api_key_env} (api_key_env) is not set: export the API key there")
        api_key = os.environ.get(api_key_env or "OPENAI_API_KEY") or "EMPTY"  # local servers need no key
        if concurrency < 1:
            raise UserError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)
        self.concurrency = concurrency
        self.progress = progress
        self.model_id = model or self._only_model()

    def _only_model(self) -> str:
        """Without a model name, use the endpoint's only model (as `sftlab serve` and `vllm serve` have)."""
        ids = [m.id for m in self._call(self.client.models.list)]
        if len(ids) != 1:
            raise UserError(f"{self.base_url} serves {len(ids)} models ({', '.join(ids[:5])}): give 'model'")
        return ids[0]

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code == 429:
                raise EndpointError(f"{self.base_url}: HTTP {e.status_code} after {self.client.max_retries} retries: "
                                    f"{_message(e)}", e.status_code) from e
            raise EndpointError(f"{self.base_url} rejected the request (HTTP {e.status_code}): {_message(e)}",
                                e.status_code) from e
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise EndpointError(f"{self.base_url}: {type(e).__name__} after {self.client.max_retries} retries: {e}",
                                504 if isinstance(e, openai.APITimeoutError) else 502) from e

    def generate(self, conversations: list[list[dict]], params: GenerationParams,
                 tools: list[dict] | None = None) -> list[list[Reply]]:
        check_params(params)
        if not conversations:
            return []
        workers = min(self.concurrency, len(conversations))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sftlab-openai") as pool:
            futures = [pool.submit(self._one, c, params, tools) for c in conversations]
            if self.progress and len(futures) > 1:
                with progress_bar() as bar:
                    task = bar.add_task(f"requests to {self.base_url}", total=len(futures))
                    for _ in as_completed(futures):
                        bar.advance(task)
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # the first failure ends the call: do not send the requests still queued
                    f.cancel()
                raise

    def _one(self, conversation: list[dict], params: GenerationParams, tools: list[dict] | None) -> list[Reply]:
        request: dict[str, Any] = dict(model=self.model_id, messages=wire_messages(conversation),
                                       max_tokens=params.max_new_tokens,
                                       temperature=params.temperature, top_p=params.top_p, n=params.n)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = params.stop
        if params.logprobs:
            request["logprobs"] = True
        if tools:
            request["tools"] = tools
        resp = self._call(self.client.chat.completions.create, **request)
        usage = resp.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        # The API reports one completion total per request; with n > 1 it is split evenly across the choices.
        total = usage.completion_tokens if usage else 0
        shares = [total // params.n + (1 if k < total % params.n else 0) for k in range(params.n)]
        replies = []
        for choice, share in zip(sorted(resp.choices, key=lambda c: c.index), shares, strict=False):
            lps = None
            if params.logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
                lps = [t.logprob for t in choice.logprobs.content]
            calls = [c.model_dump(exclude_none=True) for c in choice.message.tool_calls or []] or None
            replies.append(Reply(text=choice.message.content or "", finish_reason=choice.finish_reason or "stop",
                                 prompt_tokens=prompt_tokens, completion_tokens=share, logprobs=lps,
                                 tool_calls=calls))
        return replies


def wire_messages(conversation: list[dict]) -> list[dict]:
    """Messages as the OpenAI API takes them: training-only keys (loss_weight) left out, tool-call arguments as
    JSON text, and every tool call with an id that its tool result names (records may carry arguments as
    objects and no ids, as chat templates take them)."""
    out, pending = [], []
    for k, m in enumerate(conversation):
        m = {key: v for key, v in m.items() if key != "loss_weight"}
        if m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                fn = dict(c.get("function") or {})
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
                calls.append({**c, "id": c.get("id") or f"call_{k}_{j}", "type": "function", "function": fn})
            m["tool_calls"], pending = calls, [c["id"] for c in calls]
        elif m.get("role") == "tool" and pending:  # results answer the calls in order
            m["tool_call_id"] = m.get("tool_call_id") or pending[0]
            if m["tool_call_id"] in pending:
                pending.remove(m["tool_call_id"])
        out.append(m)
    return out


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))
