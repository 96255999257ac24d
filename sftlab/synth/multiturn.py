"""`synth multi-turn --chain`: multi-turn records from related single-turn records, without a teacher.

Single-turn records (an optional system turn, one user turn, one assistant turn) of the same task_type, tools and
system prompt are grouped; their user turns are embedded with the shipped MiniLM model (sftlab.curate.embed)
and a record is chained with the most similar unused records whose cosine similarity to it is >= min_similarity,
up to max_turns exchanges in one conversation (never two records asking the same question). Seeds (chain
starts) are visited in an order drawn with `seed`, so the same input and seed give the same chains. A record that
finds no partner passes through unchanged, or with only_chained goes to dropped with reason `no_related_record`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from sftlab.curate.embed import embed_texts
from sftlab.errors import UserError
from sftlab.synth.self_instruct import SynthResult

# Measured with all-MiniLM-L6-v2 on tests/synth/test_synth_chain.py's questions: same-topic pairs >= 0.53,
# different-topic pairs <= 0.12.
CHAIN_MIN_SIMILARITY = 0.5


def _single_turn(rec: dict[str, Any]) -> bool:
    roles = [m["role"] for m in rec["messages"] if m["role"] != "system"]
    return roles == ["user", "assistant"] and all(isinstance(m.get("content"), str) and m["content"].strip()
                                                  for m in rec["messages"] if m["role"] != "system")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _group_key(rec: dict[str, Any]) -> str:
    system = [m.get("content") for m in rec["messages"] if m["role"] == "system"]
    return json.dumps([rec.get("task_type"), rec.get("tools"), system], sort_keys=True, default=str)


def chain_related(records: list[dict[str, Any]], *, max_turns: int = 3, min_similarity: float = CHAIN_MIN_SIMILARITY,
                  seed: int = 0, only_chained: bool = False, model: str | None = None,
                  cache_dir: Any = None) -> SynthResult:
    """Chain 2..max_turns related single-turn records into one dialogue each; kept + dropped covers every input
    (a chained record stands for all of its sources)."""
    if max_turns < 2:
        raise UserError(f"--max-turns must be >= 2, got {max_turns}")
    eligible = [i for i, r in enumerate(records) if _single_turn(r)]
    texts = [next(m["content"] for m in records[i]["messages"] if m["role"] == "user") for i in eligible]
    emb = embed_texts(texts, model, cache_dir=cache_dir) if texts else None
    groups: dict[str, list[int]] = {}  # group key -> positions in `eligible`
    for k, i in enumerate(eligible):
        groups.setdefault(_group_key(records[i]), []).append(k)
    rng = random.Random(seed)
    chain_of: dict[int, list[tuple[int, float]]] = {}  # first record index -> [(record index, sim to first)]
    used: set[int] = set()
    for members in groups.values():
        sims = emb[members] @ emb[members].T
        order = list(range(len(members)))
        rng.shuffle(order)
        for a in order:
            if members[a] in used:
                continue
            # a copy of a question already in the chain (duplicate records) would make the user ask it twice
            asked, cands = {_norm(texts[members[a]])}, []
            for b in sorted((b for b in order if b != a and members[b] not in used and sims[a, b] >= min_similarity),
                            key=lambda b: -sims[a, b]):
                if len(cands) == max_turns - 1:
                    break
                if _norm(texts[members[b]]) not in asked:
                    asked.add(_norm(texts[members[b]]))
                    cands.append(b)
            if cands:
                chain = [a, *cands]
                used.update(members[c] for c in chain)
                chain_of[eligible[members[a]]] = [(eligible[members[c]], float(sims[a, c])) for c in chain]
    in_chain = {i for ch in chain_of.values() for i, _ in ch}
    kept, dropped = [], []
    for i, rec in enumerate(records):
        if i in chain_of:
            kept.append(_join([records[j] for j, _ in chain_of[i]], [s for _, s in chain_of[i][1:]], seed,
                              min_similarity))
        elif i in in_chain:
            continue
        elif only_chained:
            reason = "no_related_record" if _single_turn(rec) else "not_single_turn"
            dropped.append({"id": rec["id"], "step": "multi_turn_chain", "parent_id": rec["id"], "reason": reason})
        else:
            kept.append(rec)
    summary = {"step": "multi_turn_chain", "inputs": len(records), "kept": len(kept), "chains": len(chain_of),
               "chained_records": len(in_chain), "passed_through": len(kept) - len(chain_of),
               "dropped": len(dropped), "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)),
               "turns": dict(Counter(len(c) for c in chain_of.values())), "min_similarity": min_similarity,
               "max_turns": max_turns, "seed": seed}
    return SynthResult(kept, dropped, summary)


def _join(parts: list[dict[str, Any]], sims: list[float], seed: int, min_similarity: float) -> dict[str, Any]:
    first = parts[0]
    messages = [dict(m) for m in first["messages"] if m["role"] == "system"]
    for rec in parts:
        messages += [dict(m) for m in rec["messages"] if m["role"] != "system"]
    meta = {**(first.get("meta") or {}), "synth": {"step": "multi_turn_chain", "source_ids": [r["id"] for r in parts],
                                                   "similarity_to_first": [round(s, 4) for s in sims],
                                                   "min_similarity": min_similarity, "seed": seed}}
    return {**first, "id": f"{first['id']}-chain", "messages": messages, "meta": meta}
