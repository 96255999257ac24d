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

Records flow from step to step through files, not memory: each step reads the previous step's kept records in
chunks of 2,048 from a work directory next to the output (.OUTPUT.work/, removed at the end) and writes its own,
so the pipeline holds what its steps hold (docs/curation.md "Ceilings"), not the dataset: every step runs its
streaming function (dedup with workers > 1 shards the whole list, as its command does). select_cluster with
`band: middle` takes the perplexity model as `model: PATH`. The output is byte-identical to running the steps'
list functions one after another in memory; a failed run resumes after its finished steps (run_pipeline).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sftlab.curate.clean import CleanConfig, clean_stream
from sftlab.curate.config import StepConfig, parse_config
from sftlab.curate.dedup import DedupConfig, can_stream, dedup_exact_stream, dedup_in_passes, dedup_records
from sftlab.curate.embed import DEFAULT_CACHE, embed_record_chunks
from sftlab.curate.files import reread_record_chunks
from sftlab.curate.ifd import IFDConfig, answer_perplexities_of_chunks, ifd_select_stream
from sftlab.curate.mix import MixConfig, mix_stream, plan_mix
from sftlab.curate.mods import MoDSConfig, mods_select_stream
from sftlab.curate.reward import RewardConfig, load_reward_model, reward_select_stream
from sftlab.curate.scoring import load_causal_lm
from sftlab.curate.select import ClusterConfig, KCenterConfig, cluster_select_stream, kcenter_select_stream
from sftlab.curate.split import SPLITS, SplitConfig, split_stream, write_split_stream
from sftlab.curate.step import StepResult, dropped_path, write_result_stream
from sftlab.data.render import load_tokenizer
from sftlab.errors import UserError
from sftlab.io import atomic_path, write_json

CHUNK = 2048
Chunks = Callable[[], Iterator[list[dict[str, Any]]]]  # re-readable: each call reads the records again


def _path(base: Path, p: str | None) -> str | None:
    return None if p is None else str(p if Path(p).is_absolute() else base / p)


def _whole(read: Chunks) -> list[dict[str, Any]]:
    """The records as one list, for the steps that score all of them with a model."""
    return [r for chunk in read() for r in chunk]


def _clean(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    tok = o.pop("tokenizer", None)
    return clean_stream(read(), o, tokenizer=load_tokenizer(_path(base, tok)) if tok else None)


def _dedup(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    cfg = parse_config(DedupConfig, "dedup", o)
    if cfg.workers > 1:  # the process pool shards the whole list
        return [dedup_records(_whole(read), cfg)]
    return dedup_exact_stream(read(), cfg) if can_stream(cfg) else dedup_in_passes(read, cfg)


def _emb(read: Chunks, o: dict, base: Path) -> np.ndarray:
    model = o.pop("embed_model", None)
    model = _path(base, model) if model and Path(base, model).exists() else model
    _, emb, warning = embed_record_chunks(read, model, field=o.pop("field", "prompt"),
                                          cache_dir=_path(base, o.pop("cache_dir", None)) or DEFAULT_CACHE)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return emb


def _kcenter(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    emb = _emb(read, o, base)
    return kcenter_select_stream(read, emb, o)


def _cluster(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    ppl = None
    if o.get("band") == "middle":  # the answer perplexity model: `model: PATH`
        ppl = answer_perplexities_of_chunks(read(), _model(o, base, "select_cluster"))
    emb = _emb(read, o, base)
    return cluster_select_stream(read, emb, o, perplexity=ppl)


def _model(o: dict, base: Path, step: str) -> str:
    if "model" not in o:
        raise UserError(f"pipeline: step {step} needs 'model' (a model directory or id)")
    m = o.pop("model")
    return _path(base, m) if Path(base, m).exists() else m


def _ifd(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    return ifd_select_stream(read, _model(o, base, "select_ifd"), o)


def _reward(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    return reward_select_stream(read, _model(o, base, "select_reward"), o)


def _mods(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    if "reward_model" in o:
        o["model"] = o.pop("reward_model")
    rm, rtok = load_reward_model(_model(o, base, "select_mods"))
    nec = o.pop("necessity_model", None)
    nec = _path(base, nec) if nec and Path(base, nec).exists() else nec
    emb = _emb(read, o, base)
    return mods_select_stream(read, emb, o, reward_model=rm, reward_tokenizer=rtok,
                              necessity_model=load_causal_lm(nec) if nec else None,
                              necessity_tokenizer=load_tokenizer(nec) if nec else None)


def _mix(read: Chunks, o: dict, base: Path) -> Iterable[StepResult]:
    gen = o.pop("general", None)
    read_general: Chunks = (lambda: iter(())) if not gen else reread_record_chunks(
        [_path(base, g) for g in ([gen] if isinstance(gen, str) else gen)], chunk_size=CHUNK, label="mix (general)")
    plan = plan_mix(read, o, read_general)
    return mix_stream(plan, read, read_general)


STEPS: dict[str, Callable[[Chunks, dict, Path], Iterable[StepResult]]] = {
    "clean": _clean, "dedup": _dedup, "select_kcenter": _kcenter, "select_cluster": _cluster,
    "select_ifd": _ifd, "select_reward": _reward, "select_mods": _mods, "mix": _mix,
}
SEEDED = {"dedup", "select_kcenter", "select_cluster", "select_mods", "mix", "split"}
# step -> (its options class, the options the pipeline itself takes before the class parses the rest)
OPTIONS: dict[str, tuple[type[StepConfig], set[str]]] = {
    "clean": (CleanConfig, {"tokenizer"}),
    "dedup": (DedupConfig, set()),
    "select_kcenter": (KCenterConfig, {"embed_model", "field", "cache_dir"}),
    "select_cluster": (ClusterConfig, {"embed_model", "field", "cache_dir", "model"}),
    "select_ifd": (IFDConfig, {"model"}),
    "select_reward": (RewardConfig, {"model"}),
    "select_mods": (MoDSConfig, {"model", "reward_model", "necessity_model", "embed_model", "field", "cache_dir"}),
    "mix": (MixConfig, {"general"}),
    "split": (SplitConfig, set()),
}


def check_step_options(name: str, opts: dict[str, Any]) -> None:
    """Parse a step's options as its command would, before any step runs: a typo in step 3 fails at once, not
    after steps 1-2 have run for an hour."""
    cls, own = OPTIONS[name]
    parse_config(cls, name, {k: v for k, v in opts.items() if k not in own})
    needs_model = name in ("select_ifd", "select_reward") or (name == "select_cluster" and opts.get("band") == "middle")
    if (needs_model and "model" not in opts) or (name == "select_mods" and not {"model", "reward_model"} & set(opts)):
        raise UserError(f"step {name} needs 'model' (a model directory or id)")


def _concatenate(parts: list[Path], out: Path) -> None:
    """Files appended in order into out (written under a temporary name, then renamed)."""
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst)


def _fingerprint(base: Path, inputs: list[str], steps: list[tuple[str, dict]]) -> str:
    """What a step's output depends on: the inputs (path, size, mtime), the steps up to it with their options,
    and the size and mtime of every file or directory an option names (general data, models, tokenizers)."""
    def stat(p: str) -> list:
        try:
            st = Path(p).stat()
        except OSError:  # gone: no match, and the step that reads it says so
            return [str(p), None, None]
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]

    def named(v: Any) -> list:
        vals = v if isinstance(v, list) else [v]
        return [stat(str(base / x)) for x in vals if isinstance(x, str) and x and (base / x).exists()]

    opts_files = [[named(v) for v in o.values()] for _, o in steps]
    key = json.dumps({"inputs": [stat(p) for p in inputs], "steps": steps, "files": opts_files}, sort_keys=True,
                     default=str)
    return hashlib.sha256(key.encode()).hexdigest()


def read_plan(config_path: Path) -> tuple[list[str], Path, list[tuple[str, dict]]]:
    """(inputs, output, [(step, options)]) of a pipeline YAML, paths relative to it; the whole plan, every step's
    options included, is checked before any step runs."""
    base = config_path.parent
    try:
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{config_path}: expected a mapping with inputs, output and steps")
    unknown = set(cfg) - {"inputs", "output", "seed", "steps"}
    if unknown:
        raise UserError(f"{config_path}: unknown key(s) {sorted(unknown)} (known: inputs, output, seed, steps)")
    for key in ("inputs", "output", "steps"):
        if not cfg.get(key):
            raise UserError(f"{config_path}: '{key}' is missing or empty")
    inputs = [_path(base, p) for p in ([cfg["inputs"]] if isinstance(cfg["inputs"], str) else cfg["inputs"])]
    output = Path(_path(base, cfg["output"]))
    plan: list[tuple[str, dict]] = []
    for n, step in enumerate(cfg["steps"]):  # the whole plan is checked before any step runs
        if not (isinstance(step, dict) and len(step) == 1):
            raise UserError(f"{config_path}: steps[{n}] must be a mapping like '- dedup: {{threshold: 0.7}}'")
        (name, opts), = step.items()
        if not isinstance(opts or {}, dict):
            raise UserError(f"{config_path}: steps[{n}] ({name}): options must be a mapping")
        if name == "split" and n != len(cfg["steps"]) - 1:
            raise UserError(f"{config_path}: steps[{n}]: split must be the last step")
        if name not in STEPS and name != "split":
            raise UserError(f"{config_path}: steps[{n}]: unknown step {name!r} (known: {', '.join([*STEPS, 'split'])})")
        opts = dict(opts or {})
        if name in SEEDED and "seed" in cfg:
            opts.setdefault("seed", cfg["seed"])
        try:
            check_step_options(name, opts)
        except UserError as e:
            raise UserError(f"{config_path}: steps[{n}]: {e}") from None
        plan.append((name, opts))
    return inputs, output, plan


def run_pipeline(config_path: str | Path, echo: Callable[[str], None] = print, *, fresh: bool = False
                 ) -> dict[str, Any]:
    """Run the steps of a pipeline YAML; returns the report written to OUTPUT.report.json.

    Resumable: each finished step but the last leaves its records, its removed rows and a fingerprint of what
    it depended on in the work directory; a failed or interrupted run keeps them, and the next run reuses every
    leading step whose fingerprint still matches (fresh=True ignores them). A successful run removes the work."""
    config_path = Path(config_path)
    base = config_path.parent
    inputs, output, plan = read_plan(config_path)
    suffix = ".parquet" if output.suffix == ".parquet" else ".jsonl"
    work = output.with_name(f".{output.name}.work")
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    def label(k: int) -> str | None:  # the progress bar of step k's reads
        return f"{plan[k][0]} (step {k + 1}/{len(plan)})" if k < len(plan) else None

    read = reread_record_chunks(inputs, chunk_size=CHUNK, allow_empty_answers=True, label=label(0))
    n_inputs = read.pass_sizes  # type: ignore[attr-defined]  # records of each full pass over the inputs
    report: dict[str, Any] = {"inputs": 0, "steps": []}
    dropped: list[Path] = []
    reusing = True  # leading steps finished by an earlier run with the same fingerprint are reused
    last: Path | None = None
    for n, (name, template) in enumerate(plan):
        opts = dict(template)
        is_last = n == len(plan) - 1
        done = work / f"{n}.done.json"
        if reusing and not is_last:
            try:
                mark = json.loads(done.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                mark = None
            if mark is not None and mark["key"] == _fingerprint(base, inputs, plan[:n + 1]) \
                    and (work / f"{n}.jsonl").exists() and dropped_path(work / f"{n}.jsonl").exists():
                echo(f"{mark['summary']} (done by an earlier run: {work / f'{n}.jsonl'})")
                report["steps"].append(mark["row"])
                report["inputs"] = mark.get("inputs", report["inputs"])
                last = work / f"{n}.jsonl"
                dropped.append(dropped_path(last))
                read = reread_record_chunks(last, chunk_size=CHUNK, allow_empty_answers=True, warn=False,
                                            label=label(n + 1))
                continue
        if reusing:  # from here on everything is computed again: earlier leftovers of later steps go
            reusing = False
            for old in work.iterdir():
                if old.name.split(".")[0].isdigit() and int(old.name.split(".")[0]) >= n:
                    old.unlink()
        try:
            if name == "split":
                paths = {part: output.with_name(f"{output.stem}.{part}{output.suffix or '.jsonl'}") for part in SPLITS}
                info = write_split_stream(split_stream(read, opts), paths=paths | {"dropped": work / f"{n}.dropped"})
                dropped.append(work / f"{n}.dropped")
                report["steps"].append({"step": "split", **info})
                echo(f"split: {info}")
                shutil.copyfile(paths["train"], work / f"{n}.train{suffix}")  # the output is the train part
                last = work / f"{n}.train{suffix}"
                break
            last = work / f"{n}{suffix if is_last else '.jsonl'}"
            tally = write_result_stream(STEPS[name](read, opts, base), last, name)
        except BaseException:
            if any(work.glob("*.done.json")):
                kept = f"steps 1-{n} are" if n > 1 else "step 1 is"
                echo(f"pipeline: {kept} kept in {work}; run again to resume at step {n + 1} ({name})")
            else:
                shutil.rmtree(work, ignore_errors=True)
            raise
        echo(tally.summary())
        if tally.info.get("shortfall"):
            echo(f"{name}: fewer records than asked (not upsampled): {tally.info['shortfall']}")
        row = {"step": name, "kept": tally.kept, "dropped": dict(tally.counts), **tally.info}
        report["steps"].append(row)
        dropped.append(dropped_path(last))
        if n == 0:
            report["inputs"] = n_inputs[0]
        if not is_last:
            write_json({"key": _fingerprint(base, inputs, plan[:n + 1]), "summary": tally.summary(),
                               "row": json.loads(json.dumps(row, default=str)), **({"inputs": n_inputs[0]}
                                                                                    if n == 0 else {})}, done)
        read = reread_record_chunks(last, chunk_size=CHUNK, allow_empty_answers=True, warn=False, label=label(n + 1))
    if not report["inputs"] and n_inputs:
        report["inputs"] = n_inputs[0]
    assert last is not None
    _concatenate(dropped, dropped_path(output))
    last.replace(output)
    report["output"] = report["steps"][-1].get("train", report["steps"][-1].get("kept"))
    write_json(report, output.with_name(output.stem + ".report.json"))
    shutil.rmtree(work, ignore_errors=True)
    return report
