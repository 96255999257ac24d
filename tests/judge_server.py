"""A scripted OpenAI-compatible judge server (`POST /v1/chat/completions`) for the eval tests and benchmark.

The request's `model` picks the behaviour:
  fair    — prefers the reply containing "CORRECT" (tie when both or neither); single: 8 if correct else 3
  first   — pairwise: always [[A]]; single: like fair
  longer  — pairwise: the longer reply; single: grade grows with the reply's length
  flaky   — like fair, but unreadable text (on every try) for questions whose number ends in 0, 1 or 2 (30 %)
  noisy   — single: grade 3, 4 or 5 depending on the request's seed
  echo    — (generation) answers a user turn by repeating it; used as a stand-in model endpoint
A request may wait `delay` seconds (to measure client concurrency).
"""

from __future__ import annotations

import re

from synth_server import ScriptedTeacher

_PAIR = re.compile(r"\[Reply A\]\n(.*)\n\n\[Reply B\]\n(.*)$", re.S)
_SINGLE = re.compile(r"\[Reply to grade\]\n(.*)$", re.S)
_DIMS = re.compile(r"^- (\S+)$", re.M)
_QNUM = re.compile(r"question (\d+)")


def _good(text: str) -> bool:
    return "CORRECT" in text


def _pairwise(behaviour: str, a: str, b: str) -> str:
    if behaviour == "first":
        return "A is shown first. [[A]]"
    if behaviour == "longer":
        return "More detail. " + ("[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]")
    if _good(a) and not _good(b):
        return "A is right. [[A]]"
    if _good(b) and not _good(a):
        return "B is right. [[B]]"
    return "Equally good. [[C]]"


def _single(behaviour: str, answer: str, dims: list[str], seed: int | None) -> str:
    if behaviour == "longer":
        grade = min(10, 1 + len(answer) // 20)
    elif behaviour == "noisy":
        grade = 3 + (seed or 0) % 3
    else:
        grade = 8 if _good(answer) else 3
    return "Short rationale.\n" + "\n".join(f"{d}: [[{grade}]]" for d in dims)


def reply_for(body: dict) -> str:
    behaviour = body.get("model", "fair")
    msgs = body["messages"]
    prompt = msgs[0]["content"]
    if behaviour == "echo":
        return "echo: " + msgs[-1]["content"][:60]
    q = _QNUM.search(prompt)
    if behaviour == "flaky" and q and int(q.group(1)) % 10 < 3:
        return "I would rather not say."
    m = _PAIR.search(prompt)
    if m:
        return _pairwise(behaviour, m.group(1), m.group(2))
    m = _SINGLE.search(prompt)
    dims = _DIMS.findall(prompt) or ["rating"]
    return _single(behaviour, m.group(1) if m else "", dims, body.get("seed"))


class JudgeServer(ScriptedTeacher):
    """Start with `with JudgeServer() as srv:`; srv.base_url, srv.requests (count), srv.prompts, srv.delay."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(lambda body, _choice: reply_for(body), model="fair", delay=delay)

    @property
    def prompts(self) -> list[str]:
        """The first message of every request received (the judge prompt)."""
        return [b["messages"][0]["content"] for b in self.bodies]
