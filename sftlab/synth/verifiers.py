"""Verifiers score a reply in [0, 1]; best-of-n keeps replies at or above a threshold.

Specs (`--verifier`):
  numeric[:TOL]          the reply's final answer equals the reference's (eval.metrics.last_number: the last
                         number of the last \\boxed{}, else after ####, else of the text)
  regex:PATTERN          the reply matches PATTERN (re.search, DOTALL)
  python:module:function function(reply, reference, record) -> bool or float in [0, 1]
  code[:SECONDS]         the reply's last ```python block, followed by the record's `meta.tests` (asserts),
                         exits 0 in a fresh Python subprocess within SECONDS (default 10), having run every test
  reward:DIR             a sequence-classification reward model; score = sigmoid(logit of the last label)
  judge                  the eval LLM judge (single mode, 3H dimensions, reference shown): overall / 10; the judge
                         model is given separately (`--judge URL|DIR`)
  tool_call              the reply calls tools: 1 when its calls equal the reference's (the record's last assistant
                         turn, when it is a tool call: same functions, same arguments as JSON), else when they are
                         valid calls of the record's tools (declared function, arguments a JSON object)
Rule verifiers are the eval checkers (sftlab.eval.metrics.make_checker), so "correct" means the same in both. A
verifier is given each reply as its assistant message (text and tool calls); rule verifiers read its text.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sftlab.errors import UserError
from sftlab.eval.judge import Judge, judge_single
from sftlab.eval.metrics import make_checker
from sftlab.synth.teacher import invalid_tool_call, message_text, record_tools

# (prompt messages, reply as an assistant message, reference, record) -> score
ScoreBatch = Callable[[list[list[dict]], list[dict], list[str | None], list[dict]], list[float]]


@dataclass
class Verifier:
    spec: str
    needs_reference: bool
    score: ScoreBatch


def _per_reply(fn: Callable[[str, str | None, dict], float]) -> ScoreBatch:
    """A rule on the reply's text: (text, reference, record) -> score."""
    def batch(prompts: list[list[dict]], replies: list[dict], refs: list[str | None], recs: list[dict]) -> list[float]:
        return [min(1.0, max(0.0, float(fn(r.get("content") or "", ref, rec))))
                for r, ref, rec in zip(replies, refs, recs, strict=True)]
    return batch


def make_verifier(spec: str, judge: Any = None) -> Verifier:
    """Parse a --verifier spec (see the module docstring); `judge` is the judge's Generator for `judge`."""
    kind, _, arg = spec.partition(":")
    if kind == "numeric":
        try:
            tol = float(arg) if arg else 1e-6
        except ValueError:
            raise UserError(f"--verifier {spec!r}: tolerance {arg!r} is not a number (e.g. numeric:0.01)") from None
        return Verifier(spec, True, _per_reply(make_checker({"type": "numeric", "tol": tol})[1]))
    if kind == "regex":
        if not arg:
            raise UserError(f"--verifier {spec!r}: give a pattern, e.g. regex:'^\\d+$'")
        return Verifier(spec, False, _per_reply(make_checker({"type": "regex", "pattern": arg})[1]))
    if kind == "python":
        if ":" not in arg:
            raise UserError(f"--verifier {spec!r}: use python:module:function")
        return Verifier(spec, False, _per_reply(make_checker({"type": "python", "fn": arg})[1]))
    if kind == "code":
        try:
            timeout = float(arg) if arg else 10.0
        except ValueError:
            raise UserError(f"--verifier {spec!r}: timeout {arg!r} is not a number of seconds") from None
        return Verifier(spec, False, _per_reply(lambda reply, ref, rec: run_code_tests(reply, rec, timeout)))
    if kind == "reward":
        if not arg:
            raise UserError(f"--verifier {spec!r}: give the reward model directory, reward:DIR")
        return Verifier(spec, False, _reward_scorer(arg))
    if kind == "tool_call":
        return Verifier(spec, False, score_tool_calls)
    if kind == "judge":
        if judge is None:
            raise UserError("--verifier judge needs a judge model: --judge URL (with --judge-model) or --judge DIR")
        return Verifier(spec, False, _judge_scorer(judge))
    raise UserError(f"--verifier {spec!r}: unknown kind {kind!r} (use numeric, regex:PATTERN, "
                    "python:module:function, code[:SECONDS], reward:DIR, judge or tool_call)")


def score_tool_calls(prompts: list[list[dict]], replies: list[dict], refs: list[str | None],
                     recs: list[dict]) -> list[float]:
    """The `tool_call` verifier (see the module docstring)."""

    out = []
    for reply, rec in zip(replies, recs, strict=True):
        last = rec["messages"][-1]
        wanted = last.get("tool_calls") if last["role"] == "assistant" else None
        if not reply.get("tool_calls"):
            out.append(0.0)
        elif wanted:
            out.append(float(_call_set(reply["tool_calls"]) == _call_set(wanted)))
        else:
            out.append(float(invalid_tool_call(reply, record_tools(rec)) is None))
    return out


def _call_set(calls: list[dict]) -> list[str]:
    """Calls compared by function name and arguments as JSON (argument order and string vs object form aside)."""
    keys = []
    for call in calls:
        fn = call.get("function") or call
        args = fn.get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: compared as the raw text
                args = json.loads(args)
        keys.append(json.dumps([fn.get("name"), args], sort_keys=True))
    return sorted(keys)


def _judge_scorer(generator: Any) -> ScoreBatch:
    judge = Judge(generator, {"mode": "single", "cache": ":memory:"})

    def batch(prompts: list[list[dict]], replies: list[dict], refs: list[str | None], recs: list[dict]) -> list[float]:
        rows = [{"prompt": p, "reply": message_text(r), "reference": ref, "task_type": rec.get("task_type", "default")}
                for p, r, ref, rec in zip(prompts, replies, refs, recs, strict=True)]
        judge_single(rows, judge)
        # no readable verdict is no score (NaN), not 0: a good reply must not become the rejected one of a pair
        return [math.nan if (o := row["judge_scores"].get("overall")) is None else o / 10.0 for row in rows]
    return batch


_CODE_BLOCK = re.compile(r"```(python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)


def run_code_tests(reply: str, record: dict, timeout: float) -> float:
    """1.0 when the reply's code plus the record's tests (meta.tests: str or list of str) run cleanly: exit 0 and
    a random marker printed after the last test, so code that exits early (`sys.exit(main())` under
    `if __name__ == "__main__"`, `exit()`) without running the tests does not pass."""
    tests = (record.get("meta") or {}).get("tests")
    if not tests:
        raise UserError(f"record {record.get('id')!r}: --verifier code needs meta.tests (assert statements)")
    blocks = _CODE_BLOCK.findall(reply)
    # the last block tagged python wins over a later untagged one (often example output: "```\n5\n```")
    tagged = [code for lang, code in blocks if lang]
    code = tagged[-1] if tagged else blocks[-1][1] if blocks else reply
    marker = secrets.token_hex(16)
    program = (code + "\n\n" + (tests if isinstance(tests, str) else "\n".join(tests))
               + f"\n\nprint({marker!r}, flush=True)\n")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([sys.executable, "-I", "-c", program], cwd=tmp, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 0.0
    return float(done.returncode == 0 and marker.encode() in done.stdout)


def _reward_scorer(model_dir: str) -> ScoreBatch:
    import torch  # lazy: torch and transformers load only for a reward-model verifier
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def batch(prompts: list[list[dict]], replies: list[dict], refs: list[str | None], recs: list[dict]) -> list[float]:
        texts = [_chat_text(tok, p + [r]) for p, r in zip(prompts, replies, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), 16):
                enc = tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True)
                logits = model(**enc).logits
                scores += torch.sigmoid(logits[:, -1].float()).tolist()
        return scores
    return batch


def _chat_text(tok: Any, messages: list[dict]) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
