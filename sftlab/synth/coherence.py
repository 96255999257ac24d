"""How well each exchange of a dialogue follows from the exchanges before it, measured against chance.

Why against chance: a raw similarity means different things in different languages and data sets (Chinese text
shares far more characters by accident than English shares words; a data set of one domain shares its domain
words everywhere), so a fixed cosine threshold cannot serve both. Here an exchange's similarity to the dialogue so
far is compared with its similarity to exchanges of *other* dialogues in the same script (a random background
sample, exact copies of the exchange left out): coherence = (similarity to its history - background mean) /
background standard deviation, a z-score. A spliced-in exchange is no closer to its history than to a stranger.

Two similarities, each turned into such a z-score:
- lexical, for every language and no model: TF-IDF (scikit-learn; IDF from the input itself) over CJK characters
  and character bigrams (Chinese has no spaces to split words at) and character 4-grams of the words of other
  scripts (so bake / baking match);
- the sentence embedder (sftlab.curate.embed), only for text it reads: a multilingual model reads every
  script, the default English MiniLM only Latin script.
Where both are there, the exchange's coherence is (z_lex + z_emb) / sqrt(2), which stays in z units if the two
are independent, so one threshold holds with and without the embedder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sftlab.curate.text import CJK, dominant_script

BACKGROUND_SIZE = 2000  # background exchanges sampled once per input (seeded): enough for a stable mean and std
MIN_BACKGROUND = 20  # fewer same-script exchanges of other dialogues: chance cannot be measured, not scored
_MIN_STD = 1e-3  # a background of (almost) identical similarities: z stays finite
_CJK_RUN = re.compile(rf"[{CJK}]+")
_WORD = re.compile(r"[^\W_]+")


def lexical_features(text: str) -> list[str]:
    """Lexical units of a text: CJK characters and character bigrams; character 4-grams of other words, with the
    word boundaries marked (<word>) so that short words count too."""
    text = text.casefold()
    out: list[str] = []
    for run in _CJK_RUN.findall(text):
        out += list(run)
        out += [run[i:i + 2] for i in range(len(run) - 1)]
    for word in _WORD.findall(_CJK_RUN.sub(" ", text)):
        marked = f"<{word}>"
        out += [marked[i:i + 4] for i in range(max(1, len(marked) - 3))]
    return out


def _history(starts: np.ndarray, counts: np.ndarray, total: int) -> tuple[np.ndarray, Any]:
    """(flat index of every exchange that has a history, i.e. the 2nd, 3rd, ... of each dialogue; a sparse
    [len(later), total] matrix whose row j sums the exchanges before later[j] in its dialogue)."""
    from scipy.sparse import csr_matrix  # lazy: scipy / scikit-learn load only for --detect-pseudo

    later, rows, cols = [], [], []
    for start, n in zip(starts.tolist(), counts.tolist(), strict=True):
        for k in range(1, n):
            rows += [len(later)] * k
            cols += range(start, start + k)
            later.append(start + k)
    ones = np.ones(len(rows), dtype=np.float32)
    return np.array(later, dtype=np.int64), csr_matrix((ones, (rows, cols)), shape=(len(later), total))


def _similarity_to_history(vectors: Any, later: np.ndarray, history: Any) -> np.ndarray:
    """Cosine of each later exchange with the sum of the exchanges before it (rows of `vectors` are unit)."""
    hist = history @ vectors
    if hasattr(hist, "toarray"):  # sparse TF-IDF
        dot = np.asarray(vectors[later].multiply(hist).sum(axis=1)).ravel()
        norm = np.sqrt(np.asarray(hist.multiply(hist).sum(axis=1)).ravel())
    else:
        dot = (vectors[later] * hist).sum(axis=1)
        norm = np.linalg.norm(hist, axis=1)
    return dot / np.maximum(norm, 1e-12)


def _chance_z(sim: np.ndarray, vectors: Any, later: np.ndarray, background: np.ndarray,
              eligible: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """z-score of each later exchange's similarity `sim` against its similarities to the background exchanges
    that `eligible(block)` allows; NaN where fewer than MIN_BACKGROUND are allowed."""
    out = np.full(len(later), np.nan)
    bg = vectors[background]
    for a in range(0, len(later), 2048):  # [2048, background] similarities at a time: memory stays flat
        block = later[a:a + 2048]
        sims = vectors[block] @ bg.T
        sims = sims.toarray() if hasattr(sims, "toarray") else sims
        mask = eligible(block)
        n = mask.sum(axis=1)
        mean = np.where(mask, sims, 0.0).sum(axis=1) / np.maximum(n, 1)
        std = np.sqrt(np.where(mask, (sims - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n, 1))
        z = (sim[a:a + 2048] - mean) / np.maximum(std, _MIN_STD)
        out[a:a + 2048] = np.where(n >= MIN_BACKGROUND, z, np.nan)
    return out


def exchange_coherence(dialogues: Sequence[Sequence[str]], embed: Callable[[list[str]], np.ndarray] | None = None,
                       reads: Callable[[str], bool] = lambda text: True, *, seed: int = 0) -> list[list[float]]:
    """Per dialogue, the coherence (z units, see the module docstring) of each exchange after the first; NaN where
    there is too little same-script text in other dialogues to measure chance. `embed` maps texts to L2-normalised
    rows; `reads(text)` says whether the embedder understands a text (else only the lexical z counts)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # lazy: as above

    flat = [t for d in dialogues for t in d]
    counts = np.array([len(d) for d in dialogues], dtype=np.int64)
    starts = np.cumsum(counts) - counts
    later, history = _history(starts, counts, len(flat))
    out: list[list[float]] = [[] for _ in dialogues]
    if not len(later):
        return out
    owner = np.repeat(np.arange(len(dialogues)), counts)
    script = np.array([dominant_script(t) for t in flat])
    text_id = np.unique(np.array(flat, dtype=object), return_inverse=True)[1].reshape(-1)  # equal texts, equal ids
    background = np.sort(np.random.default_rng(seed).choice(len(flat), min(len(flat), BACKGROUND_SIZE),
                                                             replace=False))

    def eligible(block: np.ndarray) -> np.ndarray:  # other dialogues, same script, not a copy of the exchange
        return ((owner[background] != owner[block, None]) & (script[background] == script[block, None])
                & (text_id[background] != text_id[block, None]))

    try:
        lex = TfidfVectorizer(analyzer=lexical_features, sublinear_tf=True, dtype=np.float32).fit_transform(flat)
    except ValueError:  # no word or character in any exchange (e.g. only tool calls): nothing to compare
        return [[math.nan] * (len(d) - 1) if len(d) > 1 else [] for d in dialogues]
    z = _chance_z(_similarity_to_history(lex, later, history), lex, later, background, eligible)

    readable = np.array([reads(t) for t in flat])
    if embed is not None and readable[later].any():
        idx = np.flatnonzero(readable)
        vecs = embed([flat[i] for i in idx])
        emb = np.zeros((len(flat), vecs.shape[1]), dtype=np.float32)
        emb[idx] = vecs
        z_emb = _chance_z(_similarity_to_history(emb, later, history), emb, later, background,
                          lambda block: eligible(block) & readable[background][None, :])
        # the embedder counts where it reads the exchange and its whole history
        read_history = (history @ (~readable).astype(np.float32)) == 0
        both = readable[later] & read_history & ~np.isnan(z_emb)
        z = np.where(both, (z + z_emb) / math.sqrt(2), z)

    for i, value in zip(later, z, strict=True):
        out[owner[i]].append(float(value))
    return out
