"""`select mods`: MoDS (Du et al., 2023) — quality, coverage and necessity.

1. quality: reward-model score of (instruction, response) >= alpha;
2. coverage: K-Center-Greedy over the instruction embeddings of the high-quality records -> seed_k seed records;
3. necessity (optional): a model fine-tuned on the seed records (train it with `sftlab train` on the seed
   output, then pass it as necessity_model) answers the other high-quality instructions; those whose
   generated answer scores < beta are what the model still needs, and K-Center-Greedy picks aug_k of them.
The result is seed + augmented records; meta.mods_stage says which, meta.reward the quality score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from sftlab.data.curate.config import StepConfig, parse_config
from sftlab.data.curate.io import StepResult, drop
from sftlab.data.curate.reward import reward_scores
from sftlab.data.curate.select import kcenter_greedy


class MoDSConfig(StepConfig):
    """Thresholds and sizes of the three MoDS stages."""

    alpha: float = 0.0
    seed_k: int = Field(ge=1)
    beta: float = 0.0
    aug_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0


def generate_answers(records: Sequence[dict[str, Any]], model: Any, tokenizer: Any, *, max_new_tokens: int = 256,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to each record's conversation up to its last assistant turn (left-padded batches)."""
    import torch

    prompts = []
    for r in records:
        last = max(i for i, m in enumerate(r["messages"]) if m.get("role") == "assistant")
        msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in r["messages"][:last]]
        prompts.append(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    out: list[str] = []
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for b in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[b:b + batch_size], padding=True, padding_side="left", add_special_tokens=False,
                            return_tensors="pt").to(dev)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def _with_answer(rec: dict[str, Any], answer: str) -> dict[str, Any]:
    last = max(i for i, m in enumerate(rec["messages"]) if m.get("role") == "assistant")
    msgs = [dict(m) for m in rec["messages"][: last + 1]]
    msgs[last]["content"] = answer
    return {**rec, "messages": msgs}


def mods_select(records: Sequence[dict[str, Any]], emb: np.ndarray, config: MoDSConfig | dict, *,
                reward_model: Any, reward_tokenizer: Any, necessity_model: Any = None,
                necessity_tokenizer: Any = None) -> StepResult:
    """Run the MoDS stages; emb are the instruction embeddings aligned with records."""
    cfg = config if isinstance(config, MoDSConfig) else parse_config(MoDSConfig, "select mods", config)
    scores = reward_scores(records, reward_model, reward_tokenizer, batch_size=cfg.batch_size)
    good = [i for i in range(len(records)) if scores[i] >= cfg.alpha]
    seed_pos, _ = kcenter_greedy(emb[good], cfg.seed_k, seed=cfg.seed) if good else ([], 0.0)
    stage = {good[p]: "seed" for p in seed_pos}
    gen_scores: dict[int, float] = {}
    if necessity_model is not None:
        rest = [i for i in good if i not in stage]
        answers = generate_answers([records[i] for i in rest], necessity_model, necessity_tokenizer,
                                   max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        gs = reward_scores([_with_answer(records[i], a) for i, a in zip(rest, answers, strict=True)],
                           reward_model, reward_tokenizer, batch_size=cfg.batch_size)
        gen_scores = dict(zip(rest, gs.tolist(), strict=True))
        needed = [i for i in rest if gen_scores[i] < cfg.beta]
        if needed:
            aug_pos, _ = kcenter_greedy(emb[needed], cfg.aug_k or len(needed), seed=cfg.seed)
            stage.update({needed[p]: "augmented" for p in aug_pos})
    kept, dropped = [], []
    for i, rec in enumerate(records):
        s = round(float(scores[i]), 6)
        if i in stage:
            meta = {**(rec.get("meta") or {}), "reward": s, "mods_stage": stage[i]}
            if i in gen_scores:
                meta["mods_generated_reward"] = round(gen_scores[i], 6)
            kept.append({**rec, "meta": meta})
        elif scores[i] < cfg.alpha:
            dropped.append(drop(rec, "select_mods", "low_quality", reward=s))
        elif i in gen_scores and gen_scores[i] >= cfg.beta:
            dropped.append(drop(rec, "select_mods", "not_necessary", reward=s,
                                generated_reward=round(gen_scores[i], 6)))
        else:
            dropped.append(drop(rec, "select_mods", "not_selected", reward=s))
    return StepResult("select_mods", kept, dropped,
                      info={"high_quality": len(good), "seed": sum(v == "seed" for v in stage.values()),
                            "augmented": sum(v == "augmented" for v in stage.values())})
