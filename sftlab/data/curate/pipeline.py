"""`pipeline`: run curation steps in order from one YAML file.

    inputs: [data/raw.jsonl]
    output: data/curated.jsonl        # kept records; data/curated.dropped.jsonl gets every step's removals
    seed: 0                           # given to every step that takes a seed and does not set one
    steps:
      - clean: {max_answer_len: 8000}
      - dedup: {threshold: 0.7, field: both}
      - select_ifd: {model: path/to/model, keep_fraction: 0.5}
      - select_kcenter: {k: 5000, embed_model: all-MiniLM-L6-v2, field: prompt}
      - mix: {weights: {math: 2, code: 1}, general: data/general.jsonl, general_fraction: 0.1}
      - split: {val: 0.05, test: 0.05}   # last step only: writes train/val/test next to output

Relative paths are relative to the YAML file. A per-step summary goes to OUTPUT.report.json.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sftlab.data.curate.io import StepResult, dropped_path, load_records, save_records
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError


def _path(base: Path, p: str | None) -> str | None:
    return None if p is None else str(p if Path(p).is_absolute() else base / p)


def _clean(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.clean import clean_records
    from sftlab.data.render import load_tokenizer

    tok = o.pop("tokenizer", None)
    return clean_records(recs, o, tokenizer=load_tokenizer(_path(base, tok)) if tok else None)


def _dedup(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.dedup import dedup_records

    return dedup_records(recs, o)


def _emb(recs: list, o: dict, base: Path) -> Any:
    from sftlab.data.curate.embed import DEFAULT_CACHE, embed_records, language_warning
    from sftlab.data.curate.text import field_text

    model = o.pop("embed_model", None)
    model = _path(base, model) if model and Path(base, model).exists() else model
    field = o.pop("field", "prompt")
    if warning := language_warning([field_text(r, field) for r in recs], model):
        print(f"warning: {warning}", file=sys.stderr)
    return embed_records(recs, model, field=field, cache_dir=_path(base, o.pop("cache_dir", None)) or DEFAULT_CACHE)


def _kcenter(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.select import kcenter_select

    return kcenter_select(recs, _emb(recs, o, base), o)


def _cluster(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.select import cluster_select

    return cluster_select(recs, _emb(recs, o, base), o)


def _model(o: dict, base: Path, step: str) -> str:
    if "model" not in o:
        raise UserError(f"pipeline: step {step} needs 'model' (a model directory or id)")
    m = o.pop("model")
    return _path(base, m) if Path(base, m).exists() else m


def _ifd(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.ifd import ifd_select

    return ifd_select(recs, _model(o, base, "select_ifd"), o)


def _reward(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.reward import reward_select

    return reward_select(recs, _model(o, base, "select_reward"), o)


def _mods(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.ifd import load_causal_lm
    from sftlab.data.curate.mods import mods_select
    from sftlab.data.curate.reward import load_reward_model
    from sftlab.data.render import load_tokenizer

    if "reward_model" in o:
        o["model"] = o.pop("reward_model")
    rm, rtok = load_reward_model(_model(o, base, "select_mods"))
    nec = o.pop("necessity_model", None)
    nec = _path(base, nec) if nec and Path(base, nec).exists() else nec
    emb = _emb(recs, o, base)
    return mods_select(recs, emb, o, reward_model=rm, reward_tokenizer=rtok,
                       necessity_model=load_causal_lm(nec) if nec else None,
                       necessity_tokenizer=load_tokenizer(nec) if nec else None)


def _mix(recs: list, o: dict, base: Path) -> StepResult:
    from sftlab.data.curate.mix import mix_records

    gen = o.pop("general", None)
    general = load_records([_path(base, g) for g in ([gen] if isinstance(gen, str) else gen)]) if gen else []
    return mix_records(recs, o, general=general)


STEPS: dict[str, Callable[[list, dict, Path], StepResult]] = {
    "clean": _clean, "dedup": _dedup, "select_kcenter": _kcenter, "select_cluster": _cluster,
    "select_ifd": _ifd, "select_reward": _reward, "select_mods": _mods, "mix": _mix,
}
SEEDED = {"dedup", "select_kcenter", "select_cluster", "select_mods", "mix", "split"}


def run_pipeline(config_path: str | Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the steps of a pipeline YAML; returns the report written to OUTPUT.report.json."""
    config_path = Path(config_path)
    base = config_path.parent
    cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise UserError(f"{config_path}: expected a mapping with inputs, output and steps")
    unknown = set(cfg) - {"inputs", "output", "seed", "steps"}
    if unknown:
        raise UserError(f"{config_path}: unknown key(s) {sorted(unknown)} (known: inputs, output, seed, steps)")
    for key in ("inputs", "output", "steps"):
        if not cfg.get(key):
            raise UserError(f"{config_path}: '{key}' is missing or empty")
    inputs = [cfg["inputs"]] if isinstance(cfg["inputs"], str) else cfg["inputs"]
    output = Path(_path(base, cfg["output"]))
    records = load_records([_path(base, p) for p in inputs], allow_empty_answers=True)
    dropped: list[dict] = []
    report: dict[str, Any] = {"inputs": len(records), "steps": []}
    steps = cfg["steps"]
    for n, step in enumerate(steps):
        if not (isinstance(step, dict) and len(step) == 1):
            raise UserError(f"{config_path}: steps[{n}] must be a mapping like '- dedup: {{threshold: 0.7}}'")
        (name, opts), = step.items()
        if not isinstance(opts or {}, dict):
            raise UserError(f"{config_path}: steps[{n}] ({name}): options must be a mapping")
        opts = dict(opts or {})
        if name in SEEDED and "seed" in cfg:
            opts.setdefault("seed", cfg["seed"])
        if name == "split":
            if n != len(steps) - 1:
                raise UserError(f"{config_path}: steps[{n}]: split must be the last step")
            from sftlab.data.curate.split import split_records

            parts, drops, info = split_records(records, opts)
            for part, recs in parts.items():
                save_records(recs, output.with_name(f"{output.stem}.{part}{output.suffix or '.jsonl'}"))
            dropped += drops
            report["steps"].append({"step": "split", **info})
            echo(f"split: {info}")
            records = parts["train"]
            break
        if name not in STEPS:
            raise UserError(f"{config_path}: steps[{n}]: unknown step {name!r} (known: {', '.join([*STEPS, 'split'])})")
        res = STEPS[name](records, opts, base)
        echo(res.summary())
        if res.info.get("shortfall"):
            echo(f"{name}: fewer records than asked (not upsampled): {res.info['shortfall']}")
        report["steps"].append({"step": name, "kept": len(res.kept), "dropped": dict(res.counts()), **res.info})
        dropped += res.dropped
        records = res.kept
    save_records(records, output)
    write_jsonl(dropped, dropped_path(output))
    report["output"] = len(records)
    output.with_name(output.stem + ".report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
