"""`sftlab data clean | dedup | embed | stats | select | split | mix | pipeline` (curation commands).

Each command only parses arguments, calls the library step, writes OUT + OUT.dropped.jsonl and prints a
one-line summary. Step options come from `--config FILE.yaml`, then `--set key=value` (YAML-typed), then the
explicit flags; wrong types or ranges are one-line errors naming the option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from sftlab.cli.apps import data_app
from sftlab.errors import UserError

# The library is imported inside each command (`# lazy: start-up`): `sftlab --help` and every other command start
# without the curation steps, numpy, torch or scikit-learn (tests/cli/test_startup.py).

select_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                         help="Select a subset: kcenter | cluster | ifd | reward | mods.")
data_app.add_typer(select_app, name="select")

OUT = typer.Option(..., "-o", "--out", help="output file (.jsonl or .parquet); removed records go to OUT.dropped.jsonl")
CONFIG = typer.Option(None, "--config", help="YAML file with the step's options")
SET = typer.Option([], "--set", help="an option as key=value (value parsed as YAML), repeatable")
CACHE = typer.Option(None, "--cache-dir", help="embedding cache directory")


def step_options(config: Path | None, sets: list[str], **explicit: Any) -> dict[str, Any]:
    """Options from a YAML file, then --set pairs, then explicit flags that were given (not None)."""
    def parse(text: str, where: str) -> Any:  # a YAML syntax error is the user's: one line, no traceback
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{where}: invalid YAML: {str(e).splitlines()[0]}") from None

    opts: dict[str, Any] = {}
    if config is not None:
        try:
            text = Path(config).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{config}: not valid UTF-8") from None
        loaded = parse(text, str(config)) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"{config}: expected a mapping of option: value")
        opts.update(loaded)
    for s in sets:
        if "=" not in s:
            raise UserError(f"--set {s!r}: expected key=value")
        k, v = s.split("=", 1)
        opts[k.strip()] = parse(v, f"--set {s!r}") if v.strip() else None
    opts.update({k: v for k, v in explicit.items() if v is not None})
    return opts


def _finish(result: Any, out: Path) -> None:
    from sftlab.curate.step import dropped_path, write_result  # lazy: start-up

    write_result(result, out)
    typer.echo(f"{result.summary()} -> {out} (removed: {dropped_path(out)})")


def _finish_stream(results: Any, out: Path, step: str) -> Any:
    """_finish for a step that yields its result chunk by chunk (written as it comes); returns the tally."""
    from sftlab.curate.step import dropped_path, write_result_stream  # lazy: start-up

    tally = write_result_stream(results, out, step)
    typer.echo(f"{tally.summary()} -> {out} (removed: {dropped_path(out)})")
    return tally


def _passes(inputs: list[Path], label: str, labels: list[str] | None = None) -> Any:
    """The inputs as a re-readable stream of 2,048-record chunks (files.reread_record_chunks), a progress bar per
    pass. 2,048: tokenising a chunk takes ~50 bytes per character in numpy temporaries."""
    from sftlab.curate.files import reread_record_chunks  # lazy: start-up

    return reread_record_chunks(inputs, chunk_size=2048, label=label, labels=labels)


def _mix_reads(inputs: list[Path], general: list[Path]) -> tuple[Any, Any]:
    """(read inputs, read general): ids and task types from the path tails of both groups together, so
    `en/train.json --general zh/train.json` gives en/train-0... and zh/train-0..., as one read would."""
    from sftlab.data.formats import file_labels  # lazy: start-up

    labels = file_labels([*inputs, *general])
    return (_passes(inputs, "mix", labels[:len(inputs)]),
            _passes(general, "mix (general)", labels[len(inputs):]) if general else (lambda: ()))


@data_app.command("clean")
def clean_cmd(inputs: list[Path] = typer.Argument(..., help="record files"), out: Path = OUT,
              tokenizer: str | None = typer.Option(None, help="count lengths in tokens of this tokenizer"),
              config: Path | None = CONFIG, set_: list[str] = SET) -> None:
    """Drop records that break heuristic quality rules (empty, too short/long, repetitive, refusals...)."""
    from sftlab.curate.clean import CleanConfig, clean_stream  # lazy: start-up
    from sftlab.curate.config import parse_config
    from sftlab.curate.files import iter_record_chunks
    from sftlab.data.render import load_tokenizer

    cfg = parse_config(CleanConfig, "clean", step_options(config, set_))
    tok = load_tokenizer(tokenizer) if tokenizer else None
    # streams: memory bounded by one chunk
    chunks = iter_record_chunks(inputs, allow_empty_answers=True, label="clean")
    _finish_stream(clean_stream(chunks, cfg, tokenizer=tok), out, "clean")


@data_app.command("dedup")
def dedup_cmd(inputs: list[Path] = typer.Argument(..., help="record files"), out: Path = OUT,
              field: str | None = typer.Option(None, help="prompt | answer | both (default both)"),
              mode: str | None = typer.Option(None, help="exact | near (default near: exact + MinHash LSH)"),
              threshold: float | None = typer.Option(None, help="Jaccard threshold (default 0.7)"),
              keep: str | None = typer.Option(None, help="first | score (highest meta[score_key] kept)"),
              score_key: str | None = typer.Option(None, help="meta field ranking records when keep=score"),
              semantic_threshold: float | None = typer.Option(None, help="also drop records whose embedding cosine "
                                                              "with a kept record is >= this (default off)"),
              embedding_model: str | None = typer.Option(None, "--embedding-model", "--embed-model",
                                                         help="sentence-transformers path or id for "
                                                         "--semantic-threshold (default all-MiniLM-L6-v2)"),
              cache_dir: Path | None = CACHE, config: Path | None = CONFIG, set_: list[str] = SET) -> None:
    """Remove exact and near-duplicate records (keeps the first / best of each cluster); optionally also
    semantic (embedding cosine) duplicates."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.dedup import (
        DedupConfig,
        can_stream,
        dedup_exact_stream,
        dedup_in_passes,
        dedup_records,
    )
    from sftlab.curate.files import iter_record_chunks, load_records

    cfg = parse_config(DedupConfig, "dedup", step_options(config, set_, field=field, mode=mode, threshold=threshold,
                                                          keep=keep, score_key=score_key,
                                                          semantic_threshold=semantic_threshold,
                                                          embedding_model=embedding_model))
    if cfg.workers > 1:  # the process pool shards the whole list: more memory for more cores, same output
        _finish(dedup_records(load_records(inputs), cfg, cache_dir=cache_dir), out)
        return
    if can_stream(cfg):  # exact keep-first: one streaming pass holding only the key digests
        # 2048-record chunks: tokenising a chunk takes ~50 bytes per character in numpy temporaries
        chunks = iter_record_chunks(inputs, chunk_size=2048, label="dedup")
        _finish_stream(dedup_exact_stream(chunks, cfg), out, "dedup")
        return
    # near, keep=score, semantic: passes over the input holding digests, signature rows (and survivors' embeddings)
    _finish_stream(dedup_in_passes(_passes(inputs, "dedup"), cfg, cache_dir=cache_dir), out, "dedup")


@data_app.command("split")
def split_cmd(inputs: list[Path] = typer.Argument(..., help="record files"),
              out: Path = typer.Option(..., "-o", "--out", help="output directory: train/val/test.jsonl"),
              val: float | None = typer.Option(None, help="validation fraction per task_type (default 0.05)"),
              test: float | None = typer.Option(None, help="test fraction per task_type (default 0.05)"),
              seed: int | None = typer.Option(None), leakage: str | None = typer.Option(None, help="near | exact | off"),
              config: Path | None = CONFIG, set_: list[str] = SET) -> None:
    """Stratified, id-hash-deterministic train/val/test split with prompt leakage removal."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.split import SplitConfig, split_stream, write_split_stream

    cfg = parse_config(SplitConfig, "split", step_options(config, set_, val=val, test=test, seed=seed,
                                                          leakage=leakage))
    # in passes over the input (compact state per record), so millions of records fit
    info = write_split_stream(split_stream(_passes(inputs, "split"), cfg), out)
    typer.echo(f"split: train {info['train']}, val {info['val']}, test {info['test']}; "
               f"removed {info['leaked']} leaking val/test records -> {out}")


@data_app.command("embed")
def embed_cmd(inputs: list[Path] = typer.Argument(..., help="record files"),
              out: Path = typer.Option(..., "-o", "--out", help="output .npz (ids, embeddings)"),
              model: str | None = typer.Option(None, help="sentence-transformers path or id (default all-MiniLM-L6-v2, "
                                               "English only; 'multilingual' for Chinese and other languages)"),
              field: str = typer.Option("prompt", help="prompt | answer | both"),
              cache_dir: Path | None = typer.Option(None, help="embedding cache (default ~/.cache/sftlab/embeddings)"),
              batch_size: int = typer.Option(64, min=1)) -> None:
    """Sentence embeddings of the records, cached by content hash."""
    from sftlab.curate.embed import save_embeddings  # lazy: start-up

    # one pass, chunk by chunk: only the ids and the embedding rows are held
    ids, emb = _embeddings_of_chunks(_passes(inputs, "embed"), None, model, field, cache_dir,
                                     batch_size=batch_size)
    save_embeddings(out, ids, emb)
    typer.echo(f"embed: {emb.shape[0]} x {emb.shape[1]} -> {out}")


def _embeddings(records: list[dict], embeddings: Path | None, model: str | None, field: str,
                cache_dir: Path | None) -> Any:
    """Embeddings of records in memory (the steps that hold the list)."""
    return _embeddings_of_chunks(lambda: [records], embeddings, model, field, cache_dir)[1]


def _embeddings_of_chunks(read_chunks: Any, embeddings: Path | None, model: str | None, field: str,
                          cache_dir: Path | None, batch_size: int = 64) -> tuple[list[str], Any]:
    """(ids, embeddings) of the records of a re-readable input (embed.embeddings_for); prints its warning."""
    from sftlab.curate.embed import embeddings_for  # lazy: start-up

    ids, emb, warning = embeddings_for(read_chunks, embeddings, model, field=field, cache_dir=cache_dir,
                                       batch_size=batch_size)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    return ids, emb


EMB = typer.Option(None, "--embeddings", help=".npz from `sftlab data embed` (else embedded now)")
EMB_MODEL = typer.Option(None, "--embed-model", help="sentence-transformers path or id (default all-MiniLM-L6-v2, "
                         "English only; 'multilingual' for Chinese and other languages)")
TRAIN_CONFIG = typer.Option(None, "--train-config", help="YAML with model/data/train keys for the fine-tuning run "
                            "this step makes (data.train and train.output_dir are set by the step)")
TRAIN_SET = typer.Option([], "--train-set", help="dotted override of that fine-tuning run, e.g. "
                         "train.max_steps=100, repeatable")
FIELD = typer.Option("prompt", "--field", help="text embedded: prompt | answer | both")


@select_app.command("kcenter")
def kcenter_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
                k: int | None = typer.Option(None, help="number of records to keep"),
                radius: float | None = typer.Option(None, help="stop when every record is within this cosine distance"),
                seed: int | None = typer.Option(None), embeddings: Path | None = EMB, embed_model: str | None = EMB_MODEL,
                field: str = FIELD, cache_dir: Path | None = CACHE, config: Path | None = CONFIG,
                set_: list[str] = SET) -> None:
    """K-Center-Greedy diversity selection on sentence embeddings."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.select import KCenterConfig, kcenter_select_stream

    cfg = parse_config(KCenterConfig, "select kcenter", step_options(config, set_, k=k, radius=radius, seed=seed))
    # two passes over the input: embeddings (one row per record), then the records again to write them
    read = _passes(inputs, "select kcenter")
    _, emb = _embeddings_of_chunks(read, embeddings, embed_model, field, cache_dir)
    _finish_stream(kcenter_select_stream(read, emb, cfg), out, "select_kcenter")


@select_app.command("cluster")
def cluster_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
                n_clusters: int | None = typer.Option(None, help="K-means clusters"),
                per_cluster: int | None = typer.Option(None, help="records kept per cluster (default 1)"),
                pick: str | None = typer.Option(None, help="closest | random"), seed: int | None = typer.Option(None),
                band: str | None = typer.Option(None, help="all | middle: sample only between the --band-low and "
                                                "--band-high quantiles of answer perplexity per cluster"),
                band_low: float | None = typer.Option(None, help="lower perplexity quantile (default 0.25)"),
                band_high: float | None = typer.Option(None, help="upper perplexity quantile (default 0.75)"),
                model: str | None = typer.Option(None, help="causal LM for the answer perplexity (--band middle)"),
                embeddings: Path | None = EMB, embed_model: str | None = EMB_MODEL, field: str = FIELD,
                cache_dir: Path | None = CACHE, config: Path | None = CONFIG, set_: list[str] = SET) -> None:
    """K-means on embeddings, then n records per cluster (optionally from the middle perplexity band)."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.ifd import answer_perplexities_of_chunks
    from sftlab.curate.select import ClusterConfig, cluster_select_stream

    cfg = parse_config(ClusterConfig, "select cluster", step_options(
        config, set_, n_clusters=n_clusters, per_cluster=per_cluster, pick=pick, seed=seed, band=band,
        band_low=band_low, band_high=band_high))
    if cfg.band == "middle" and not model:
        raise UserError("select cluster: --band middle needs --model (the answer perplexity model)")
    # passes over the input (embeddings; band middle: perplexities; then the records to write): never the list
    read = _passes(inputs, "select cluster")
    _, emb = _embeddings_of_chunks(read, embeddings, embed_model, field, cache_dir)
    ppl = answer_perplexities_of_chunks(read(), model) if cfg.band == "middle" else None
    _finish_stream(cluster_select_stream(read, emb, cfg, perplexity=ppl), out, "select_cluster")


@select_app.command("ifd")
def ifd_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
            model: str = typer.Option(..., help="causal LM directory or id (its chat template is used)"),
            max_ifd: float | None = typer.Option(None, help="drop IFD >= this (default 1.0)"),
            keep_fraction: float | None = typer.Option(None, help="keep this top fraction by IFD"),
            k: int | None = typer.Option(None, help="keep the top k by IFD"),
            batch_size: int | None = typer.Option(None),
            pre_experience: int | None = typer.Option(None, "--pre-experience", help="first fine-tune --model for "
                                                      "one short epoch on this many cluster-sampled records, then "
                                                      "score with it"),
            train_config: Path | None = TRAIN_CONFIG, train_set: list[str] = TRAIN_SET,
            work_dir: Path | None = typer.Option(None, "--work-dir", help="pre-experience set and run (default OUT "
                                                 "without suffix + '.ifd')"),
            seed: int | None = typer.Option(None), embeddings: Path | None = EMB, embed_model: str | None = EMB_MODEL,
            field: str = FIELD, cache_dir: Path | None = CACHE, config: Path | None = CONFIG,
            set_: list[str] = SET) -> None:
    """Instruction-Following Difficulty scoring and selection (Cherry LLM); --model may be a small scorer
    (Superfiltering), optionally pre-experienced on a cluster sample first."""
    from sftlab.config import read_config_file  # lazy: start-up
    from sftlab.curate.config import parse_config
    from sftlab.curate.files import load_records
    from sftlab.curate.ifd import IFDConfig, ifd_select, ifd_select_stream, ifd_summary, pre_experience_config
    from sftlab.curate.scoring import seed_run_config

    cfg = parse_config(IFDConfig, "select ifd", step_options(config, set_, max_ifd=max_ifd, k=k,
                                                             keep_fraction=keep_fraction, batch_size=batch_size,
                                                             pre_experience=pre_experience, seed=seed))
    if cfg.pre_experience is None and (train_config is not None or train_set or work_dir is not None):
        raise UserError("select ifd: --train-config/--train-set/--work-dir need --pre-experience")
    if cfg.pre_experience is None:  # two passes (scores, then the records to write): the records are never held
        _finish_stream(ifd_select_stream(_passes(inputs, "select ifd"), model, cfg), out, "select_ifd")
        return
    records = load_records(inputs)  # the pre-experience run trains on a cluster sample of the whole list
    train_raw = read_config_file(train_config) if train_config is not None else None
    work = work_dir or out.with_name(out.name.split(".")[0] + ".ifd")
    # validate the run's config before embedding and training
    seed_run_config(work, base_model=model, train_config=pre_experience_config(train_raw), overrides=train_set,
                    command="select ifd")
    emb = _embeddings(records, embeddings, embed_model, field, cache_dir)
    res = ifd_select(records, model, cfg, emb=emb, work_dir=work, train_config=train_raw, train_overrides=train_set)
    _finish(res, out)
    typer.echo(ifd_summary(res.info))


@select_app.command("reward")
def reward_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
               model: str = typer.Option(..., help="AutoModelForSequenceClassification reward model"),
               min_score: float | None = typer.Option(None, help="keep records scoring >= this"),
               keep_fraction: float | None = typer.Option(None), k: int | None = typer.Option(None),
               batch_size: int | None = typer.Option(None), config: Path | None = CONFIG,
               set_: list[str] = SET) -> None:
    """Score conversations with a reward model and keep the good ones."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.reward import RewardConfig, reward_select_stream

    cfg = parse_config(RewardConfig, "select reward", step_options(
        config, set_, min_score=min_score, keep_fraction=keep_fraction, k=k, batch_size=batch_size))
    # two passes (scores, then the records to write): the records are never held
    _finish_stream(reward_select_stream(_passes(inputs, "select reward"), model, cfg), out, "select_reward")


@data_app.command("mix")
def mix_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
            weight: list[str] = typer.Option([], "--weight", help="task_type=weight (relative), repeatable"),
            total: int | None = typer.Option(None, help="records in the mixture (default: input size)"),
            general: list[Path] = typer.Option([], "--general", help="general-text record file(s)"),
            general_fraction: float | None = typer.Option(None, help="share of general records"),
            upsample: bool | None = typer.Option(None, "--upsample/--no-upsample", help="repeat scarce task_types"),
            seed: int | None = typer.Option(None), config: Path | None = CONFIG, set_: list[str] = SET,
            strategy: str | None = typer.Option(None, help="multitask | sequential | mixed_sequential | dmt: write "
                                                "the stage datasets and plan.yaml to the directory OUT"),
            dmt_k: float = typer.Option(0.25, "--dmt-k", help="dmt: share of each specialised task_type replayed "
                                        "with the general data (1, 1/2, ..., 1/32)"),
            general_task: list[str] = typer.Option([], "--general-task", help="with --strategy: input records of "
                                                   "this task_type (or channel) are general, repeatable")) -> None:
    """Sample a mixture with per-task_type weights and an optional general-text share; or, with --strategy,
    split the data into the stages of a multi-stage training plan."""
    from sftlab.curate.config import parse_config  # lazy: start-up
    from sftlab.curate.mix import MixConfig, mix_stream, plan_mix

    if strategy is not None:
        if weight or total is not None or general_fraction is not None or upsample is not None or config or set_:
            raise UserError("mix: --strategy does not sample (no --weight/--total/--general-fraction/--upsample/"
                            "--config/--set); run `sftlab data mix` first, then split the result with --strategy")
        _mix_strategy(inputs, out, general, general_task, strategy, dmt_k, seed or 0)
        return
    if general_task:
        raise UserError("mix: --general-task only applies with --strategy")

    weights = {}
    for w in weight:
        name, _, val = w.rpartition("=")
        try:
            weights[name] = float(val)
        except ValueError:
            raise UserError(f"--weight {w!r}: expected task_type=number") from None
    cfg = parse_config(MixConfig, "mix", step_options(config, set_, weights=weights or None, total=total,
                                                      general_fraction=general_fraction, upsample=upsample,
                                                      seed=seed))
    # passes over the inputs (task types and counts, then the records to write): the records are never held
    read, read_general = _mix_reads(inputs, general)
    plan = plan_mix(read, cfg, read_general)
    _finish_stream(mix_stream(plan, read, read_general), out, "mix")
    if plan.info["shortfall"]:
        typer.echo(f"mix: fewer records than asked (not upsampled): {plan.info['shortfall']}")


def _mix_strategy(inputs: list[Path], out: Path, general: list[Path], general_task: list[str], strategy: str,
                  k: float, seed: int) -> None:
    from sftlab.curate.mix import write_strategy_stream  # lazy: start-up
    from sftlab.data.records import task_channels

    wanted = set(general_task)
    # passes over the inputs (counts, then each stage's records): the records are never held
    plan, sizes, n_special, n_general = write_strategy_stream(
        *_mix_reads(inputs, general), lambda r: bool(wanted & set(task_channels(r["task_type"]))), strategy, out, k=k, seed=seed)
    parts = ", ".join(f"{i}. {name} {n}" for i, (name, n) in enumerate(sizes, start=1))
    typer.echo(f"mix {strategy}: {n_special} specialised + {n_general} general records -> stages {parts}; "
               f"plan in {plan}")


@data_app.command("stats")
def stats_cmd(inputs: list[Path] = typer.Argument(...),
              out: Path = typer.Option(..., "-o", "--out", help="output directory (stats.json, stats.html)"),
              tokenizer: str | None = typer.Option(None, help="lengths in tokens of this tokenizer (else words)"),
              embed: bool = typer.Option(True, "--embed/--no-embed", help="embedding diversity and PCA plot"),
              embed_model: str | None = EMB_MODEL, field: str = FIELD, cache_dir: Path | None = CACHE) -> None:
    """Dataset statistics and plots as a self-contained stats.html."""
    from sftlab.curate.stats import tally_records, write_stats_report  # lazy: start-up
    from sftlab.data.render import load_tokenizer
    from sftlab.io import check_output_dir

    check_output_dir(out)  # before the passes and the embeddings, not after
    tok = load_tokenizer(tokenizer) if tokenizer else None
    # chunk by chunk: lengths, task indices and counters (then, with --embed, the embedding rows) are held,
    # not the records
    read = _passes(inputs, "stats")
    tally = tally_records(read(), tok)
    emb = _embeddings_of_chunks(read, None, embed_model, field, cache_dir)[1] if embed else None
    stats = write_stats_report(tally.summary(emb), out, emb)
    typer.echo(f"stats: {stats['records']} records, {len(stats['task_types'])} task_types -> {out / 'stats.html'}")


@data_app.command("pipeline")
def pipeline_cmd(config: Path = typer.Argument(..., help="pipeline YAML (inputs, output, seed, steps)"),
                 fresh: bool = typer.Option(False, "--fresh", help="run every step again, ignoring the steps an "
                                            "earlier failed or interrupted run finished")) -> None:
    """Run curation steps in order from a YAML file."""
    from sftlab.curate.pipeline import run_pipeline  # lazy: start-up

    report = run_pipeline(config, echo=typer.echo, fresh=fresh)
    typer.echo(f"pipeline: {report['inputs']} -> {report['output']} records")


@select_app.command("mods")
def mods_cmd(inputs: list[Path] = typer.Argument(...), out: Path = OUT,
             reward_model: str = typer.Option(..., help="reward model (AutoModelForSequenceClassification)"),
             alpha: float | None = typer.Option(None, help="quality threshold on the reward (default 0)"),
             seed_k: int | None = typer.Option(None, help="seed records picked by K-Center-Greedy"),
             necessity_model: str | None = typer.Option(None, help="model already fine-tuned on the seed records"),
             base_model: str | None = typer.Option(None, "--base-model", help="fine-tune this model on the seed "
                                                   "records here (sftlab's training loop) for the necessity stage"),
             train_config: Path | None = TRAIN_CONFIG, train_set: list[str] = TRAIN_SET,
             work_dir: Path | None = typer.Option(None, "--work-dir", help="seed set and run of the seed model "
                                                  "(default OUT without suffix + '.mods')"),
             beta: float | None = typer.Option(None, help="generated answers scoring below this are 'needed'"),
             aug_k: int | None = typer.Option(None, help="augmented records picked among the needed"),
             embeddings: Path | None = EMB, embed_model: str | None = EMB_MODEL, field: str = FIELD,
             cache_dir: Path | None = CACHE, config: Path | None = CONFIG, set_: list[str] = SET) -> None:
    """MoDS: reward-model quality filter, K-Center seed set, then (with --necessity-model, or --base-model /
    --train-config to fine-tune the seed model here) necessity-based augmentation."""
    from sftlab.config import read_config_file  # lazy: start-up
    from sftlab.curate.config import parse_config
    from sftlab.curate.mods import MoDSConfig, mods_select_stream, mods_summary
    from sftlab.curate.reward import load_reward_model
    from sftlab.curate.scoring import load_causal_lm, load_generation_model, seed_run_config, train_seed_model
    from sftlab.data.render import load_tokenizer

    cfg = parse_config(MoDSConfig, "select mods", step_options(config, set_, alpha=alpha, seed_k=seed_k, beta=beta,
                                                               aug_k=aug_k))
    self_train = base_model is not None or train_config is not None
    if self_train and necessity_model:
        raise UserError("select mods: give either --necessity-model or --base-model/--train-config, not both")
    if train_set and not self_train:
        raise UserError("select mods: --train-set needs --base-model or --train-config")
    train_raw = read_config_file(train_config) if train_config is not None else None
    work = work_dir or out.with_name(out.name.split(".")[0] + ".mods")
    if self_train:  # validate the seed run's config before the (slow) scoring
        seed_run_config(work, base_model=base_model, train_config=train_raw, overrides=train_set)
    # a pass per stage (embeddings, scores, seed records, answers, output): the records are never held
    read = _passes(inputs, "select mods")
    _, emb = _embeddings_of_chunks(read, embeddings, embed_model, field, cache_dir)
    rm, rtok = load_reward_model(reward_model)
    nm = load_causal_lm(necessity_model) if necessity_model else None
    ntok = load_tokenizer(necessity_model) if necessity_model else None

    def seed_trainer(seed_records: list[dict]) -> tuple[Any, Any]:
        final = train_seed_model(seed_records, work, base_model=base_model, train_config=train_raw,
                                 overrides=train_set)
        typer.echo(f"select mods: seed model fine-tuned on {len(seed_records)} seed records -> {final}")
        return load_generation_model(final)

    tally = _finish_stream(mods_select_stream(read, emb, cfg, reward_model=rm, reward_tokenizer=rtok,
                                              necessity_model=nm, necessity_tokenizer=ntok,
                                              seed_trainer=seed_trainer if self_train else None), out, "select_mods")
    typer.echo(mods_summary(tally.info, cfg.alpha, cfg.beta))
