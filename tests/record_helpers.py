"""Small record builders shared by the data, curation and training tests (not a test module: no test_ functions)."""

from __future__ import annotations


def rec(id: str, prompt: str, answer: str, task_type: str = "general", **meta) -> dict:
    return {"id": id, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "tools": None, "task_type": task_type, "source": "test", "meta": dict(meta)}


QA = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(5)]  # five good alpaca rows


def messages(*pairs: tuple[str, str]) -> list[dict]:
    """[(role, content), ...] -> OpenAI-shaped messages."""
    return [{"role": r, "content": c} for r, c in pairs]
