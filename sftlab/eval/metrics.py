"""Automatic metrics per reply: exact match, ROUGE-1/2/L, BLEU, chrF, and custom checkers.

Chinese and mixed text: the common `rouge-score` tokenizer keeps only [a-z0-9] and gives 0 on CJK. Here
ROUGE runs the reference implementation (`rouge-score`) with our tokenizer: every CJK character is one token,
runs of letters/digits are one (lower-cased) token each — *character segmentation for zh* (no jieba: the
score does not depend on a word dictionary). BLEU and chrF are sacrebleu's sentence scores; BLEU uses
sacrebleu's `zh` tokenizer (CJK characters split, 13a for the rest) when the reference or reply has CJK,
else `13a`. Scales: ROUGE and exact match in [0, 1], BLEU and chrF in [0, 100] (sacrebleu's scale).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from sftlab.errors import UserError

METRICS = ("exact_match", "rouge", "bleu", "chrf")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

# CJK unified ideographs (+ext A, compatibility), kana, hangul: one token per character.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_RE = re.compile(f"[{_CJK}]")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_PUNCT = set(string.punctuation) | {c for c in "，。！？；：、“”‘’（）《》【】…—·「」『』～"}


def has_cjk(text: str) -> bool:
    return bool(_CJK_RE.search(text))


def tokenize(text: str) -> list[str]:
    """Character segmentation for CJK, word tokens (letters/digits, lower-cased, NFKC) for everything else."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def normalize(text: str, *, lower: bool = True, strip_punct: bool = True, collapse_space: bool = True,
              strip_articles: bool = False) -> str:
    """Normalise for exact match: NFKC (full-width → half-width), case, punctuation (ASCII and CJK), spaces."""
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.lower()
    if strip_punct:
        text = "".join(" " if c in _PUNCT else c for c in text)
    if strip_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    if collapse_space:
        text = " ".join(text.split())
    return text.strip()


class RougeTokenizer:
    """The object rouge-score expects (it calls .tokenize): our word tokenizer, so ROUGE agrees with the other
    text metrics (synth's self-instruct novelty filter uses it too)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


_Tokenizer = RougeTokenizer  # old private name, kept for code on other branches


_ROUGE_SCORER = None


def _rouge() -> Any:
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score.rouge_scorer import RougeScorer  # lazy: rouge_score (nltk) takes seconds to import

        _ROUGE_SCORER = RougeScorer(list(ROUGE_KEYS), use_stemmer=False, tokenizer=RougeTokenizer())
    return _ROUGE_SCORER


def rouge(reply: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure in [0, 1] (rouge-score, CJK-aware tokenizer)."""
    scores = _rouge().score(reference, reply)
    return {k: scores[k].fmeasure for k in ROUGE_KEYS}


def bleu_tokenizer(*texts: str) -> str:
    return "zh" if any(has_cjk(t) for t in texts) else "13a"


def bleu(reply: str, reference: str) -> float:
    """Sentence BLEU in [0, 100] (sacrebleu, exp smoothing; `zh` tokenizer for CJK text)."""
    from sacrebleu.metrics import BLEU  # lazy: metric libraries load only for the metrics a run asks for

    return BLEU(tokenize=bleu_tokenizer(reply, reference), effective_order=True).sentence_score(
        reply, [reference]).score


def chrf(reply: str, reference: str) -> float:
    """Sentence chrF in [0, 100] (sacrebleu; character n-grams, so CJK needs no segmentation)."""
    from sacrebleu.metrics import CHRF  # lazy: metric libraries load only for the metrics a run asks for

    return CHRF().sentence_score(reply, [reference]).score


def exact_match(reply: str, reference: str, **norm: bool) -> float:
    return float(normalize(reply, **norm) == normalize(reference, **norm))


# ---- custom checkers -------------------------------------------------------------------------------------------

# a comma only as a thousands separator ("1,234"; "1,2,3" is three numbers)
_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?\.?|[-+]?\.\d+")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(\d+(?:\.\d+)?)\s*\}\s*\{\s*(\d+(?:\.\d+)?)\s*\}")


def final_answer_text(text: str) -> str:
    """Where a math reply states its answer: the last \\boxed{...}, else what follows the last GSM8K `####`, else
    the whole text (so a check written after the answer, "\\boxed{41}. Check: 6*7=42", does not count)."""
    if boxed := _BOXED.findall(text):
        return boxed[-1]
    return text.rpartition("####")[2] if "####" in text else text


def last_number(text: str) -> float | None:
    """The last number of the text's final answer (final_answer_text); None if it has none."""
    answer = final_answer_text(unicodedata.normalize("NFKC", text))
    answer = _FRAC.sub(lambda m: repr(float(m[1]) / float(m[2])) if float(m[2]) else m[0], answer)  # \\frac{1}{2}
    found = _NUM.findall(answer)
    if not found:
        return None
    try:
        return float(found[-1].rstrip(".").replace(",", ""))
    except ValueError:
        return None


def _load_callable(path: str) -> Callable[..., Any]:
    mod, sep, name = path.replace(":", ".").rpartition(".")
    try:
        fn = getattr(importlib.import_module(mod), name) if sep else None
    except (ImportError, AttributeError) as e:
        raise UserError(f"checker callable {path!r} cannot be imported ({e}); give a dotted path "
                        "package.module.function on PYTHONPATH") from None
    if not callable(fn):
        raise UserError(f"checker callable {path!r} is not a function")
    return fn


def make_checker(spec: Mapping[str, Any]) -> tuple[str, Callable[[str, str | None, dict], float]]:
    """A checker spec → (name, fn(reply, reference, row) -> score in [0, 1]).

    Specs: {type: regex, pattern, [name]} (reply matches), {type: json_valid}, {type: numeric, [tol]}
    (last number of the reply's final answer equals the reference's: see last_number), {type: python, fn: pkg.mod.func}
    (fn(reply, reference, row) returns a bool or a float in [0, 1]).
    """
    kind = spec.get("type")
    name = spec.get("name") or str(kind)
    if kind == "regex":
        try:
            pat = re.compile(spec["pattern"], re.S)
        except (KeyError, re.error) as e:
            raise UserError(f"checker {name!r}: bad or missing 'pattern' ({e})") from None
        return name, lambda reply, ref, row: float(bool(pat.search(reply)))
    if kind == "json_valid":
        def _json(reply: str, ref: str | None, row: dict) -> float:
            text = re.sub(r"^```(?:json)?\s*|\s*```$", "", reply.strip())
            try:
                json.loads(text)
            except ValueError:
                return 0.0
            return 1.0
        return name, _json
    if kind == "numeric":
        tol = float(spec.get("tol", 1e-6))

        def _num(reply: str, ref: str | None, row: dict) -> float:
            a, b = last_number(reply), last_number(ref or "")
            return float(a is not None and b is not None and math.isclose(a, b, rel_tol=tol, abs_tol=tol))
        return name, _num
    if kind == "python":
        if not spec.get("fn"):
            raise UserError(f"checker {name!r}: type python needs 'fn: package.module.function'")
        fn = _load_callable(spec["fn"])
        return spec.get("name") or spec["fn"].rsplit(".", 1)[-1], lambda reply, ref, row: float(fn(reply, ref, row))
    raise UserError(f"checker {spec!r}: unknown type {kind!r} (use regex, json_valid, numeric or python)")


def score_reply(reply: str, reference: str | None, metrics: list[str], *, normalization: Mapping[str, bool] | None = None
                ) -> dict[str, float]:
    """All requested reference-based metrics of one reply (none when there is no reference)."""
    if reference is None:
        return {}
    out: dict[str, float] = {}
    for m in metrics:
        if m == "exact_match":
            out["exact_match"] = exact_match(reply, reference, **dict(normalization or {}))
        elif m == "rouge":
            out.update(rouge(reply, reference))
        elif m == "bleu":
            out["bleu"] = bleu(reply, reference)
        elif m == "chrf":
            out["chrf"] = chrf(reply, reference)
        else:
            raise UserError(f"unknown metric {m!r} (known: {', '.join(METRICS)}; custom checks go in 'checkers')")
    return out


def score_rows(rows: list[dict[str, Any]], metrics: list[str], checkers: list[Mapping[str, Any]] = (),
               normalization: Mapping[str, bool] | None = None) -> None:
    """Fill row["scores"] in place: reference metrics plus the checkers that apply to the row's task_type.

    A checker spec may carry `task_type` (a name or a list; a parent like "math" also matches "math/add")."""
    built = [(spec.get("task_type"), *make_checker(spec)) for spec in checkers]
    for row in rows:
        scores = row.setdefault("scores", {})
        scores.update(score_reply(row["reply"], row.get("reference"), metrics, normalization=normalization))
        task = row.get("task_type", "default")
        for only, name, fn in built:
            wanted = [only] if isinstance(only, str) else (only or [])
            if wanted and not any(task == w or task.startswith(w + "/") for w in wanted):
                continue
            scores[name] = fn(row["reply"], row.get("reference"), row)
