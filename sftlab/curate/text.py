"""Text views of a record (prompt, answer) and the normalisation / tokenisation the curation steps share.

Tokens are words for alphabetic scripts and single characters for CJK, so the same shingling and length
rules work for English and Chinese. All work is done by compiled regexes and numpy (no per-character loops).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from sftlab.errors import UserError

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{CJK}]|[^\W{CJK}]+")
_CJK_RE = re.compile(rf"[{CJK}]")
_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_CYRILLIC_RE = re.compile(r"[\u0400-\u04ff]")

FIELDS = ("prompt", "answer", "both")


def _content(m: dict[str, Any]) -> str:
    text = m.get("content") or ""
    if m.get("tool_calls"):
        text = (text + "\n" + json.dumps(m["tool_calls"], ensure_ascii=False, sort_keys=True)).strip()
    return text


def prompt_text(rec: dict[str, Any]) -> str:
    """Everything the model is given except the system prompt: user / tool / custom-role turns."""
    return "\n".join(_content(m) for m in rec["messages"] if m.get("role") not in ("assistant", "system"))


def answer_text(rec: dict[str, Any]) -> str:
    """Everything the model is trained to say: the assistant turns (tool calls as JSON)."""
    return "\n".join(_content(m) for m in rec["messages"] if m.get("role") == "assistant")


def field_text(rec: dict[str, Any], field: str) -> str:
    """prompt, answer or both (prompt, newline, answer)."""
    if field == "prompt":
        return prompt_text(rec)
    if field == "answer":
        return answer_text(rec)
    if field == "both":
        return prompt_text(rec) + "\n" + answer_text(rec)
    raise UserError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")


def tokens(text: str) -> list[str]:
    """Casefolded NFKC word tokens; each CJK character is one token; punctuation is dropped."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).casefold())


_CLASSES: np.ndarray | None = None  # per code point: 0 separator, 1 word character, 2 CJK character


def _char_classes() -> np.ndarray:
    """The character classes of `_TOKEN_RE` as a lookup table over all code points (built once, ~0.1 s)."""
    global _CLASSES
    if _CLASSES is None:
        cps = np.arange(0x110000, dtype=np.uint32)
        cps[0xD800:0xE000] = 32  # surrogates cannot be encoded
        every = cps.tobytes().decode("utf-32-le")

        def mask(pattern: str) -> np.ndarray:  # one-character matches, so positions are kept
            m = np.frombuffer(re.sub(pattern, "\x01", every).encode("utf-32-le"), dtype=np.uint32) == 1
            m[1] = False  # U+0001 itself is neither
            return m

        cls = np.zeros(0x110000, dtype=np.uint8)
        cls[mask(rf"[^\W{CJK}]")] = 1
        cls[mask(rf"[{CJK}]")] = 2
        _CLASSES = cls
    return _CLASSES


_P = np.uint64(0x100000001B3)  # FNV prime: polynomial hash over a token's code points


def token_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the tokens of each text (the same tokens as `tokens()`), flat, and tokens per text.

    Vectorised over all texts at once (code points -> character classes -> token boundaries -> polynomial
    hashes), so no Python object is created per token. Equal tokens get equal hashes."""
    if not texts:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    joined = "\x00".join(unicodedata.normalize("NFKC", t).casefold().replace("\x00", " ") for t in texts)
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    cls = _char_classes()[cp]
    prev = np.concatenate([np.zeros(1, dtype=np.uint8), cls[:-1]])
    start = (cls == 2) | ((cls == 1) & (prev != 1))
    starts = np.flatnonzero(start)
    counts = np.bincount(np.searchsorted(np.flatnonzero(cp == 0), starts), minlength=len(texts)).astype(np.int64)
    if not len(starts):
        return np.zeros(0, dtype=np.uint64), counts
    pos = np.flatnonzero(cls > 0)
    tok_of = np.cumsum(start)[pos] - 1
    rel = pos - starts[tok_of]  # position inside the token
    powers = np.cumprod(np.full(int(rel.max()) + 1, _P, dtype=np.uint64), dtype=np.uint64)
    contrib = (cp[pos].astype(np.uint64) + np.uint64(1)) * powers[rel]
    h = np.add.reduceat(contrib, np.flatnonzero(rel == 0))
    return mix64(h ^ (np.diff(np.append(np.flatnonzero(rel == 0), len(pos))).astype(np.uint64) * _P)), counts


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def normalise(text: str) -> str:
    """The text as exact dedup compares it: tokens joined by single spaces."""
    return " ".join(tokens(text))


def shingles(toks: list[str], n: int = 5) -> list[str]:
    """Token n-grams; a text shorter than n tokens is one shingle (the whole text); no tokens -> []."""
    if len(toks) <= n:
        return [" ".join(toks)] if toks else []
    return list(map(" ".join, zip(*(toks[i:] for i in range(n)), strict=False)))


def script_counts(text: str) -> dict[str, int]:
    """Letters per script (cjk, latin, cyrillic) for language-mix rules and stats."""
    return {"cjk": len(_CJK_RE.findall(text)), "latin": len(_LATIN_RE.findall(text)),
            "cyrillic": len(_CYRILLIC_RE.findall(text))}


_CODE_RE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`|https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+", re.DOTALL)
_JSON_RE = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")  # innermost JSON-like brackets, removed repeatedly


def natural_text(rec: dict[str, Any]) -> str:
    """The assistant's natural-language text: message content only (no tool-call JSON), with fenced and inline
    code, JSON-like spans, URLs and e-mail addresses removed. Script-mix rules measure this text."""
    text = "\n".join(m.get("content") or "" for m in rec["messages"] if m.get("role") == "assistant")
    text = _CODE_RE.sub(" ", text)
    for _ in range(4):  # nested JSON: innermost brackets first
        text, n = _JSON_RE.subn(" ", text)
        if not n:
            break
    return text


def script_words(text: str) -> tuple[int, int]:
    """(CJK characters, Latin-script words): comparable units for the mixed-language rule."""
    return len(_CJK_RE.findall(text)), len(_LATIN_WORD_RE.findall(text))


def dominant_script(text: str) -> str:
    """The script with most letters, or 'none'."""
    counts = script_counts(text)
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] else "none"
