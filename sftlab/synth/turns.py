"""Multi-turn data tools: split a dialogue into one sample per assistant turn, merge such samples back, and
flag pseudo multi-turn dialogues (later exchanges unrelated to the earlier ones, e.g. spliced conversations).

Split keeps the history but sets loss_weight 0 on earlier assistant turns (each turn is supervised once, in its
own sample: sample-level balance); merge restores the original weights and supervises all turns in one sample
(the efficient form). Detection splits each dialogue into exchanges (a user turn and the replies up to the next
user turn) and scores how well each exchange follows from the ones before it against chance (sftlab/synth/
coherence.py: lexical overlap for every language, plus the sentence embedder for the text it reads, each as a
z-score against exchanges of other dialogues); a dialogue is pseudo multi-turn when its weakest exchange scores
below min_coherence.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from sftlab.curate.embed import embed_texts, is_multilingual
from sftlab.curate.text import dominant_script
from sftlab.synth.coherence import exchange_coherence

# tests/synth/test_synth_turns.py: the planted en + zh set (tests/synth/pseudo_turns_corpus.py) and the glaive tool-call set
# keep precision and recall >= 0.85 from about 3.25 to 3.5 (measured table: docs/synthesis.md)
PSEUDO_MIN_COHERENCE = 3.25


def _supervised(weight: float | None) -> bool:
    return weight is None or weight > 0


def split_turns(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per supervised assistant turn with its history; earlier assistant turns get loss_weight 0."""
    out = []
    for rec in records:
        ends = [i for i, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
        if len(ends) <= 1:
            out.append(rec)
            continue
        weights = [rec["messages"][i].get("loss_weight") for i in ends]
        if not any(_supervised(w) for w in weights):
            out.append(rec)  # nothing supervised to split (and nothing lost)
            continue
        for t, end in enumerate(ends):
            if not _supervised(weights[t]):
                continue  # a loss_weight 0 turn is history only: its own sample would have nothing to learn
            msgs = copy.deepcopy(rec["messages"][:end + 1])
            for i in ends[:t]:
                msgs[i]["loss_weight"] = 0.0
            meta = {**(rec.get("meta") or {}), "turns": {"source_id": rec["id"], "turn": t, "of": len(ends),
                                                         "loss_weights": weights}}
            out.append({**rec, "id": f"{rec['id']}-t{t}", "messages": msgs, "meta": meta})
    return out


def merge_turns(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold split samples (meta.turns) back into one record per source: (records, folded rows with reason)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    order: list[tuple[str, Any]] = []
    for rec in records:
        info = (rec.get("meta") or {}).get("turns")
        if isinstance(info, dict) and "source_id" in info:
            if info["source_id"] not in groups:
                order.append(("group", info["source_id"]))
            groups.setdefault(info["source_id"], []).append(rec)
        else:
            order.append(("record", rec))
    out, folded = [], []
    for kind, item in order:
        if kind == "record":
            out.append(item)
            continue
        group = groups[item]
        longest = max(group, key=lambda r: len(r["messages"]))
        info = longest["meta"]["turns"]
        msgs = copy.deepcopy(longest["messages"])
        ends = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        for i, w in zip(ends, info.get("loss_weights") or [], strict=False):
            msgs[i].pop("loss_weight", None)
            if w is not None:
                msgs[i]["loss_weight"] = w
        meta = {k: v for k, v in longest["meta"].items() if k != "turns"}
        merged_turns = sorted(r["meta"]["turns"]["turn"] for r in group)
        weights = info.get("loss_weights") or [None] * info["of"]
        if merged_turns != [t for t in range(info["of"]) if _supervised(weights[t] if t < len(weights) else None)]:
            meta["turns_incomplete"] = {"present": merged_turns, "of": info["of"]}
        out.append({**longest, "id": item, "messages": msgs, "meta": meta})
        folded += [{"id": r["id"], "step": "turns_merge", "reason": "merged", "into": item} for r in group]
    return out, folded


def exchanges(messages: list[dict[str, Any]]) -> list[str]:
    """Texts of each exchange: a user turn and the assistant replies up to the next user turn (system prompt, tool
    calls and tool results excluded: they are data, and would make dialogues calling one function look alike)."""
    out: list[str] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] not in ("user", "assistant"):
            continue  # tool results are data (JSON), not what the conversation is about
        text = m.get("content") or ""
        if m["role"] == "user" or not out:
            out.append(text)
        else:
            out[-1] += "\n" + text
    return out


def detect_pseudo(records: list[dict[str, Any]], *, min_coherence: float = PSEUDO_MIN_COHERENCE,
                  model: str | None = None, cache_dir: Any = None) -> list[dict[str, Any]]:
    """Every record, with meta.pseudo_multiturn (bool; None when it could not be scored: too little text of its
    script in other dialogues to measure chance) and meta.pseudo_multiturn_coherence (its weakest exchange's
    coherence in z units; None for a single exchange or unscored). model "none": lexical signal only."""
    multilingual = model != "none" and is_multilingual(model)

    def reads(text: str) -> bool:  # the default MiniLM is English-only: other scripts get the lexical signal only
        return multilingual or dominant_script(text) in ("latin", "none")

    def embed(texts: list[str]) -> Any:
        return embed_texts(texts, model, cache_dir=cache_dir)

    parts = [exchanges(r["messages"]) for r in records]
    scores = exchange_coherence(parts, None if model == "none" else embed, reads)
    out = []
    for rec, values in zip(records, scores, strict=True):
        scored = [v for v in values if not math.isnan(v)]
        weakest = min(scored) if scored else None
        flag = None if values and not scored else weakest is not None and weakest < min_coherence
        meta = {**(rec.get("meta") or {}), "pseudo_multiturn": flag,
                "pseudo_multiturn_coherence": None if weakest is None else round(weakest, 3)}
        out.append({**rec, "meta": meta})
    return out
