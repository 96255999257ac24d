"""`select mods`: MoDS (Du et al., 2023) — quality, coverage and necessity.

1. quality: reward-model score of (instruction, response) >= alpha;
2. coverage: K-Center-Greedy over the instruction embeddings of the high-quality records -> seed_k seed records;
3. necessity (optional): a model fine-tuned on the seed records answers the other high-quality instructions;
   those whose generated answer scores < beta are what the model still needs, and K-Center-Greedy picks aug_k
   of them. The fine-tuned model is either given (necessity_model: trained elsewhere) or trained here on the
   seed records with sftlab's own training engine (train_seed_model: a RunConfig fragment, see below).
The result is seed + augmented records; meta.mods_stage says which, meta.reward the quality score, and
StepResult.info the count of every stage (mods_summary formats it).

`select mods` streams (mods_select_stream): the records are read again for each stage (scores, the seed records,
the answers to generate, the output), and only per-record numbers and the embeddings are held. Answers are
generated and scored in windows of whole batches, so the list path (mods_select) gives the same bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from sftlab.data.curate.config import StepConfig, parse_config
from sftlab.data.curate.ifd import batch_window
from sftlab.data.curate.io import StepResult, chunks_with_rows, drop, windows
from sftlab.data.curate.reward import reward_scores, reward_scores_of_chunks
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
    """Greedy answers to each record's conversation up to its last assistant turn (stops at end-of-turn)."""
    from sftlab.eval.generate import generate_replies

    convs = []
    for r in records:
        last = max(i for i, m in enumerate(r["messages"]) if m.get("role") == "assistant")
        convs.append([{"role": m["role"], "content": m.get("content") or ""} for m in r["messages"][:last]])
    replies = generate_replies(model, tokenizer, convs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [x["text"] for x in replies]


# The small run that fine-tunes the initial model on the seed records when `select mods` trains it itself.
# Why these values: MoDS fine-tunes the seed set for a few epochs at the usual SFT learning rate; everything can
# be replaced by a --train-config file (model/data/train keys) and dotted --train-set overrides.
SEED_TRAIN_DEFAULTS: dict[str, Any] = {
    "data": {"max_length": 1024},
    "train": {"num_train_epochs": 3, "learning_rate": 2e-5, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "report_to": [], "save_steps": 0, "eval_steps": 0},
}


def seed_run_config(work_dir: str | Path, *, base_model: str | None = None, train_config: dict[str, Any] | None = None,
                    overrides: Sequence[str] = (), command: str = "select mods") -> Any:
    """The RunConfig of the seed run: SEED_TRAIN_DEFAULTS, then train_config (replacing keys within
    model/data/train), then base_model as model.name_or_path, then the dotted overrides; data.train
    (WORK/seed.jsonl) and train.output_dir (WORK/run) are set here. Built before any scoring, so bad keys fail fast.
    command names the calling command in errors (`select ifd --pre-experience` trains through here too).
    """
    from sftlab.config import ConfigError, build_config

    work = Path(work_dir)
    raw = copy.deepcopy(SEED_TRAIN_DEFAULTS)
    for part, values in (train_config or {}).items():
        if isinstance(values, dict) and isinstance(raw.get(part), dict):
            raw[part].update(values)
        else:
            raw[part] = values
    if base_model is not None:
        raw.setdefault("model", {})["name_or_path"] = base_model
    if not (raw.get("model") or {}).get("name_or_path"):
        raise ConfigError(f"{command}: the seed model needs a base model (--base-model or model.name_or_path in "
                          "--train-config)")
    for key in ("data.train", "train.output_dir"):
        part, sub = key.split(".")
        if sub in (raw.get(part) or {}):
            raise ConfigError(f"{command}: --train-config key '{key}' is set by the command")
    raw["data"]["train"] = [str(work / "seed.jsonl")]
    raw["train"]["output_dir"] = str(work / "run")
    return build_config(raw, list(overrides), source=f"{command} --train-config")


def train_seed_model(seed_records: Sequence[dict[str, Any]], work_dir: str | Path, *, base_model: str | None = None,
                     train_config: dict[str, Any] | None = None, overrides: Sequence[str] = (),
                     command: str = "select mods") -> Path:
    """Fine-tune the initial model on the seed records with sftlab's training loop (config: seed_run_config);
    returns its final/ dir."""
    from sftlab.data.records import write_jsonl
    from sftlab.train.loop import train

    cfg = seed_run_config(work_dir, base_model=base_model, train_config=train_config, overrides=overrides,
                          command=command)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    write_jsonl(list(seed_records), cfg.data.train[0].path)
    return train(cfg)


def load_generation_model(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained final/ dir (full weights or a LoRA adapter), on CUDA when present."""
    import torch

    from sftlab.data.render import load_tokenizer
    from sftlab.train.export import load_for_inference

    model = load_for_inference(path).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, load_tokenizer(str(path))


def _with_answer(rec: dict[str, Any], answer: str) -> dict[str, Any]:
    last = max(i for i, m in enumerate(rec["messages"]) if m.get("role") == "assistant")
    msgs = [dict(m) for m in rec["messages"][: last + 1]]
    msgs[last]["content"] = answer
    return {**rec, "messages": msgs}


def mods_select(records: Sequence[dict[str, Any]], emb: np.ndarray, config: MoDSConfig | dict, *,
                reward_model: Any, reward_tokenizer: Any, necessity_model: Any = None,
                necessity_tokenizer: Any = None,
                seed_trainer: Callable[[list[dict[str, Any]]], tuple[Any, Any]] | None = None) -> StepResult:
    """Run the MoDS stages; emb are the instruction embeddings aligned with records.

    seed_trainer (used when no necessity_model is given): seed records -> (fine-tuned model, tokenizer), e.g.
    train_seed_model + load_generation_model, so the necessity stage uses a model trained on this very seed set.
    """
    out = StepResult("select_mods", [], [])
    for res in mods_select_stream(lambda: [records], emb, config, reward_model=reward_model,
                                  reward_tokenizer=reward_tokenizer, necessity_model=necessity_model,
                                  necessity_tokenizer=necessity_tokenizer, seed_trainer=seed_trainer):
        out.kept += res.kept
        out.dropped += res.dropped
        out.info.update(res.info)
    return out


def _records_at(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], rows: Sequence[int]
                ) -> Iterator[dict[str, Any]]:
    """The records at the given input positions (ascending), read again."""
    wanted = set(rows)
    pos = 0
    for chunk in read_chunks():
        for rec in chunk:
            if pos in wanted:
                yield rec
            pos += 1


def mods_select_stream(read_chunks: Callable[[], Iterable[Sequence[dict[str, Any]]]], emb: np.ndarray,
                       config: MoDSConfig | dict, *, reward_model: Any, reward_tokenizer: Any,
                       necessity_model: Any = None, necessity_tokenizer: Any = None,
                       seed_trainer: Callable[[list[dict[str, Any]]], tuple[Any, Any]] | None = None
                       ) -> Iterator[StepResult]:
    """mods_select over an input read once per stage; the last result carries the stage counts (info)."""
    cfg = config if isinstance(config, MoDSConfig) else parse_config(MoDSConfig, "select mods", config)
    scores = reward_scores_of_chunks(read_chunks(), reward_model, reward_tokenizer, batch_size=cfg.batch_size)
    n = len(scores)
    good = [i for i in range(n) if scores[i] >= cfg.alpha]
    seed_pos, _ = kcenter_greedy(emb[good], cfg.seed_k, seed=cfg.seed) if good else ([], 0.0)
    stage = {good[p]: "seed" for p in seed_pos}
    gen_scores: dict[int, float] = {}
    needed: list[int] = []
    if necessity_model is None and seed_trainer is not None and stage:
        necessity_model, necessity_tokenizer = seed_trainer(list(_records_at(read_chunks, sorted(stage))))
    if necessity_model is not None:
        rest = [i for i in good if i not in stage]
        parts = [np.zeros(0)]
        for recs in windows([_records_at(read_chunks, rest)], batch_window(cfg.batch_size)):
            answers = generate_answers(recs, necessity_model, necessity_tokenizer,
                                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
            parts.append(reward_scores([_with_answer(r, a) for r, a in zip(recs, answers, strict=True)],
                                       reward_model, reward_tokenizer, batch_size=cfg.batch_size))
        gen_scores = dict(zip(rest, np.concatenate(parts).tolist(), strict=True))
        needed = [i for i in rest if gen_scores[i] < cfg.beta]
        if needed:
            aug_pos, _ = kcenter_greedy(emb[needed], cfg.aug_k or len(needed), seed=cfg.seed)
            stage.update({needed[p]: "augmented" for p in aug_pos})
    for chunk, start in chunks_with_rows(read_chunks, n, step="select mods", rows="scores"):
        yield _mods_result(chunk, start, scores, stage, gen_scores, cfg)
    yield StepResult("select_mods", [], [], info={
        "input": n, "high_quality": len(good), "low_quality": n - len(good),
        "seed": sum(v == "seed" for v in stage.values()), "necessity_stage": necessity_model is not None,
        "answered": len(gen_scores), "needed": len(needed), "not_necessary": len(gen_scores) - len(needed),
        "augmented": sum(v == "augmented" for v in stage.values())})


def _mods_result(chunk: Sequence[dict[str, Any]], start: int, scores: np.ndarray, stage: dict[int, str],
                 gen_scores: dict[int, float], cfg: MoDSConfig) -> StepResult:
    kept, dropped = [], []
    for i, rec in enumerate(chunk, start):
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
        elif i in gen_scores:
            dropped.append(drop(rec, "select_mods", "not_selected", reward=s,
                                generated_reward=round(gen_scores[i], 6)))
        else:
            dropped.append(drop(rec, "select_mods", "not_selected", reward=s))
    return StepResult("select_mods", kept, dropped)


def mods_summary(info: dict[str, Any], alpha: float, beta: float) -> str:
    """One line with every stage's counts and the reasons records left at that stage."""
    parts = [f"quality: {info['high_quality']} of {info['input']} with reward >= {alpha:g} "
             f"(low_quality: {info['low_quality']})", f"coverage: {info['seed']} seed (K-Center)"]
    if info["necessity_stage"]:
        parts.append(f"necessity: {info['answered']} answered by the seed model, {info['needed']} with generated "
                     f"reward < {beta:g} (not_necessary: {info['not_necessary']})")
        parts.append(f"augmented: {info['augmented']} (K-Center; not_selected: {info['needed'] - info['augmented']})")
    else:
        parts.append(f"not_selected: {info['high_quality'] - info['seed']} (no necessity stage)")
    parts.append(f"output: {info['seed'] + info['augmented']} = seed + augmented")
    return "select_mods stages: " + "; ".join(parts)
