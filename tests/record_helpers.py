"""Small record builders shared by the curation tests (not a test module itself: no test_ functions)."""

from __future__ import annotations


def rec(id: str, prompt: str, answer: str, task_type: str = "general", **meta) -> dict:
    return {"id": id, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "tools": None, "task_type": task_type, "source": "test", "meta": dict(meta)}
