"""`sftlab synth best-of-n | self-instruct | evolve | multi-turn`, `sftlab data turns` and `sftlab flywheel`.

They only parse arguments, load the teacher through sftlab.infer.load_generator, call sftlab.synth and write the
outputs (kept records, OUT.dropped.jsonl with a reason per line, a one-line summary of counts per reason).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from sftlab.cli.apps import app, data_app
from sftlab.errors import UserError

synth_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Produce training data with a teacher: best-of-n, self-instruct, evolve, multi-turn.")
app.add_typer(synth_app, name="synth")

TEACHER = typer.Option(..., "--teacher", help="an OpenAI-compatible base URL (http://host:port/v1) or a local model dir")
TEACHER_MODEL = typer.Option(None, "--teacher-model", help="model name at the endpoint (default: its only model)")
API_KEY_ENV = typer.Option(None, "--api-key-env", help="environment variable holding the endpoint's API key")
CONCURRENCY = typer.Option(8, "--concurrency", help="parallel requests to an endpoint")
SEED = typer.Option(0, "--seed", help="sampling seed (same seed, same teacher -> same output)")
FRESH = typer.Option(False, "--fresh", help="ask the teacher again instead of reusing the replies kept in the "
                     "output's teacher cache from an earlier run")


def _teacher(teacher: str, model: str | None, api_key_env: str | None, concurrency: int,  # noqa: ANN202
             cache: Path | None = None, fresh: bool = False):
    """The teacher; with `cache`, wrapped so its replies are kept there and a rerun resumes (CachedTeacher)."""
    from sftlab.synth.teacher import CachedTeacher, load_teacher  # lazy: start-up

    gen = load_teacher(teacher, model, api_key_env, concurrency)
    if cache is None:
        return gen
    if fresh:
        cache.unlink(missing_ok=True)
    return CachedTeacher(gen, cache)


def _cache_of(out: Path, is_dir: bool) -> Path:
    return out / "teacher_cache.sqlite" if is_dir else out.with_name(out.stem + ".teacher_cache.sqlite")


def _report_cache(gen, summary: dict) -> None:  # noqa: ANN001
    """How much of the run came from the teacher cache: in summary.json, and one line on stderr when resumed."""
    summary["teacher_cache"] = {"path": str(gen.path), "reused": gen.hits, "asked": gen.sent}
    if gen.hits:
        typer.echo(f"teacher: {gen.hits} replies reused from {gen.path} (an earlier run), {gen.sent} asked", err=True)


def _check_out(path: Path, is_dir: bool) -> None:
    """Refuse an output that cannot be written before the teacher works, not after (a file where a directory goes)."""
    from sftlab.io import check_output_dir, check_output_file  # lazy: start-up

    try:
        (check_output_dir if is_dir else check_output_file)(path)
    except UserError as e:
        raise UserError(f"-o {e}") from None


def _counts_line(step: str, kept: int, dropped: list[dict]) -> str:
    parts = [f"{step}: kept {kept} of {kept + len(dropped)}"]
    parts += [f"{r}: {n}" for r, n in sorted(Counter(d["reason"] for d in dropped).items())]
    return "; ".join(parts)


@synth_app.command("best-of-n")
def best_of_n_cmd(prompts: Path = typer.Argument(..., help="canonical records; the last assistant turn or a "
                                                 "`reference` field is the reference answer"),
                  out_dir: Path = typer.Option(..., "-o", "--out", help="output directory"),
                  teacher: str = TEACHER, teacher_model: str | None = TEACHER_MODEL,
                  api_key_env: str | None = API_KEY_ENV, concurrency: int = CONCURRENCY,
                  n: int = typer.Option(4, "-n", help="replies sampled per prompt"),
                  verifier: str = typer.Option("numeric", "--verifier", help="numeric[:TOL] | regex:PATTERN | "
                                               "python:module:function | code[:SECONDS] | reward:DIR | judge"),
                  threshold: float = typer.Option(1.0, "--threshold", help="a reply passes at score >= this"),
                  temperature: float = typer.Option(1.0, "--temperature"),
                  top_p: float = typer.Option(1.0, "--top-p"),
                  max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
                  pairs_format: str = typer.Option("trl", "--pairs-format", help="trl | llamafactory"),
                  judge: str | None = typer.Option(None, "--judge", help="--verifier judge: endpoint URL or model dir"),
                  judge_model: str | None = typer.Option(None, "--judge-model", help="model name at the judge URL"),
                  seed: int = SEED, fresh: bool = FRESH) -> None:
    """Sample N replies per prompt, verify them; write sft.jsonl, pairs.jsonl, dropped.jsonl, summary.json."""
    from sftlab.io import write_json, write_jsonl  # lazy: start-up
    from sftlab.synth.best_of_n import best_of_n
    from sftlab.synth.io import read_prompt_records
    from sftlab.synth.verifiers import make_verifier

    _check_out(out_dir, is_dir=True)
    records = read_prompt_records(prompts)
    ver = make_verifier(verifier, _teacher(judge, judge_model, api_key_env, concurrency) if judge else None)
    gen = _teacher(teacher, teacher_model, api_key_env, concurrency,  # after the verifier: its errors come first
                   _cache_of(out_dir, is_dir=True), fresh)
    res = best_of_n(records, gen, ver, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    seed=seed, threshold=threshold, pairs_format=pairs_format)
    _report_cache(gen, res.summary)
    write_jsonl(res.sft, out_dir / "sft.jsonl")
    write_jsonl(res.pairs, out_dir / "pairs.jsonl")
    write_jsonl(res.dropped, out_dir / "dropped.jsonl")
    write_json(res.summary, out_dir / "summary.json")
    typer.echo(f"{_counts_line('best-of-n', len(res.sft), res.dropped)}; pairs: {len(res.pairs)}; "
               f"{res.summary['prompts_per_s']} prompts/s -> {out_dir}")


@synth_app.command("self-instruct")
def self_instruct_cmd(seeds: Path = typer.Argument(..., help="seed records (canonical); grouped by task_type"),
                      out: Path = typer.Option(..., "-o", "--out", help="kept records; removed ones go to "
                                               "OUT.dropped.jsonl, counts to OUT.summary.json"),
                      teacher: str = TEACHER, teacher_model: str | None = TEACHER_MODEL,
                      api_key_env: str | None = API_KEY_ENV, concurrency: int = CONCURRENCY,
                      n: int = typer.Option(..., "-n", help="instructions to generate per task_type"),
                      per_request: int = typer.Option(8, "--per-request", help="instructions asked per request"),
                      few_shot: int = typer.Option(3, "--few-shot", help="seed instructions shown per request"),
                      rouge_threshold: float = typer.Option(0.7, "--rouge-threshold",
                                                            help="drop at ROUGE-L >= this to a seed/kept one"),
                      temperature: float = typer.Option(1.0, "--temperature"),
                      max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
                      seed: int = SEED, fresh: bool = FRESH) -> None:
    """Generate new instructions per task_type from seed examples, answer them, keep the novel clean ones."""
    from sftlab.curate.files import load_records  # lazy: start-up
    from sftlab.curate.step import dropped_path
    from sftlab.io import write_json, write_jsonl
    from sftlab.synth.self_instruct import self_instruct

    if n < 1 or per_request < 1 or few_shot < 1:
        raise UserError("-n, --per-request and --few-shot must be >= 1")
    _check_out(out, is_dir=False)
    records = load_records(seeds)
    gen = _teacher(teacher, teacher_model, api_key_env, concurrency, _cache_of(out, is_dir=False), fresh)
    res = self_instruct(records, gen, n=n, per_request=per_request, few_shot=few_shot, seed=seed,
                        rouge_threshold=rouge_threshold, temperature=temperature, max_new_tokens=max_new_tokens)
    _report_cache(gen, res.summary)
    write_jsonl(res.kept, out)
    write_jsonl(res.dropped, dropped_path(out))
    write_json(res.summary, out.with_name(out.stem + ".summary.json"))
    typer.echo(f"{_counts_line('self-instruct', len(res.kept), res.dropped)} -> {out}")


@data_app.command("turns")
def turns_cmd(inputs: list[Path] = typer.Argument(..., help="record files"),
              out: Path = typer.Option(..., "-o", "--out", help="output records; folded ones go to OUT.dropped.jsonl"),
              split: bool = typer.Option(False, "--split", help="one sample per assistant turn, with its history"),
              merge: bool = typer.Option(False, "--merge", help="fold --split samples back into one per dialogue"),
              detect_pseudo: bool = typer.Option(False, "--detect-pseudo", help="score topic switches between "
                                                 "exchanges; writes meta.pseudo_multiturn(_score), keeps all"),
              min_coherence: float = typer.Option(None, "--min-coherence", help="an exchange less coherent with "
                                                  "the dialogue before it than this (z-score against other "
                                                  "dialogues) flags the dialogue (default 3.25)"),
              min_similarity: float = typer.Option(None, "--min-similarity", hidden=True),
              embed_model: str | None = typer.Option(None, "--embed-model", help="sentence-transformers model for "
                                                     "the text it reads (default: the shipped English "
                                                     "all-MiniLM-L6-v2; 'multilingual' or a path; 'none': "
                                                     "lexical signal only)")) -> None:
    """Multi-turn tools: --split / --merge / --detect-pseudo (exactly one)."""
    from sftlab.curate.files import load_records  # lazy: start-up
    from sftlab.curate.step import dropped_path
    from sftlab.io import write_jsonl
    from sftlab.synth import turns as dialogue_turns
    from sftlab.synth.coherence import MIN_BACKGROUND

    if split + merge + detect_pseudo != 1:
        raise UserError("data turns: give exactly one of --split, --merge, --detect-pseudo")
    _check_out(out, is_dir=False)
    records = load_records(inputs)
    folded: list[dict] = []
    if split:
        result = dialogue_turns.split_turns(records)
        line = f"turns --split: {len(records)} dialogues -> {len(result)} samples"
    elif merge:
        result, folded = dialogue_turns.merge_turns(records)
        line = f"turns --merge: {len(records)} samples -> {len(result)} records"
    else:
        if min_similarity is not None:
            raise UserError("--min-similarity was a cosine threshold; --detect-pseudo now measures coherence "
                            "against other dialogues: use --min-coherence (z-score, default 3.25)")
        threshold = dialogue_turns.PSEUDO_MIN_COHERENCE if min_coherence is None else min_coherence
        result = dialogue_turns.detect_pseudo(records, min_coherence=threshold, model=embed_model)
        flagged = Counter(r["meta"]["pseudo_multiturn"] for r in result)
        line = f"turns --detect-pseudo: {flagged[True]} of {len(result)} flagged pseudo multi-turn"
        if flagged[None]:
            line += (f" ({flagged[None]} not scored: fewer than {MIN_BACKGROUND} exchanges of other dialogues "
                     "in their script to compare with)")
    write_jsonl(result, out)
    write_jsonl(folded, dropped_path(out))
    typer.echo(f"{line} -> {out}")


@app.command("flywheel")
def flywheel_cmd(log: Path = typer.Argument(..., help="serve log: the SQLite file or `serve export-log` records"),
                 out_dir: Path = typer.Option(..., "-o", "--out", help="output directory"),
                 train: list[Path] = typer.Option([], "--train", help="training set(s) to dedup against"),
                 judge: str | None = typer.Option(None, "--judge", help="judge for replies without feedback: "
                                                  "an endpoint URL or a local model dir"),
                 judge_model: str | None = typer.Option(None, "--judge-model"),
                 api_key_env: str | None = API_KEY_ENV,
                 min_score: float = typer.Option(0.5, "--min-score", help="label in [0, 1] at which a reply is "
                                                 "good (feedback -1/0/1 -> 0/0.5/1; judge overall/10)"),
                 dedup_threshold: float = typer.Option(0.7, "--dedup-threshold", help="prompt Jaccard vs train")
                 ) -> None:
    """Served traffic -> sft.jsonl, pairs.jsonl, bad_cases.jsonl, dropped.jsonl, summary.json."""
    from sftlab.curate.files import load_records  # lazy: start-up
    from sftlab.eval.judge import Judge
    from sftlab.io import write_json, write_jsonl
    from sftlab.synth.flywheel import flywheel, read_log

    _check_out(out_dir, is_dir=True)
    records = read_log(log)
    train_records = load_records(train) if train else []
    jd = None
    if judge:
        jd = Judge(_teacher(judge, judge_model, api_key_env, 8), {"mode": "single",
                                                                  "cache": str(out_dir / "judge_cache.sqlite")})
    res = flywheel(records, train_records, judge=jd, min_score=min_score, dedup_threshold=dedup_threshold)
    for name, rows in (("sft", res.sft), ("pairs", res.pairs), ("bad_cases", res.bad_cases),
                       ("dropped", res.dropped)):
        write_jsonl(rows, out_dir / f"{name}.jsonl")
    write_json(res.summary, out_dir / "summary.json")
    s = res.summary
    typer.echo(f"flywheel: {s['log_records']} logged -> sft {s['sft']}, bad cases {s['bad_cases']}, pairs "
               f"{s['pairs']}; dropped " + (", ".join(f"{k}: {v}" for k, v in sorted(s["dropped"].items())) or "0")
               + f" -> {out_dir}")


def _write_synth(res, out: Path, step: str, line: str | None = None) -> None:  # noqa: ANN001
    from sftlab.curate.step import dropped_path  # lazy: start-up
    from sftlab.io import write_json, write_jsonl

    write_jsonl(res.kept, out)
    write_jsonl(res.dropped, dropped_path(out))
    write_json(res.summary, out.with_name(out.stem + ".summary.json"))
    typer.echo(f"{line or _counts_line(step, len(res.kept), res.dropped)} -> {out}")


@synth_app.command("evolve")
def evolve_cmd(inputs: Path = typer.Argument(..., help="records whose first user turn is evolved"),
               out: Path = typer.Option(..., "-o", "--out", help="evolved records; removed ones in OUT.dropped.jsonl"),
               teacher: str = TEACHER, teacher_model: str | None = TEACHER_MODEL,
               api_key_env: str | None = API_KEY_ENV, concurrency: int = CONCURRENCY,
               ops: str = typer.Option("constraints,deepen,concretize,reasoning,breadth", "--ops",
                                       help="evolutions to draw from (comma-separated)"),
               rewrite_format: list[str] = typer.Option([], "--rewrite-format", help="plain | markdown | json "
                                                        "(repeatable): rewrite each answer in that form instead "
                                                        "of evolving the instruction"),
               temperature: float = typer.Option(0.7, "--temperature"),
               max_new_tokens: int = typer.Option(512, "--max-new-tokens"), seed: int = SEED,
               fresh: bool = FRESH) -> None:
    """Evol-Instruct: rewrite each instruction (in depth / in breadth), answer it, eliminate failed evolutions."""
    from sftlab.curate.files import load_records  # lazy: start-up
    from sftlab.synth.evolve import evolve, rewrite_formats

    _check_out(out, is_dir=False)
    records = load_records(inputs)
    gen = _teacher(teacher, teacher_model, api_key_env, concurrency, _cache_of(out, is_dir=False), fresh)
    if rewrite_format:
        res = rewrite_formats(records, gen, tuple(rewrite_format), seed=seed, temperature=temperature,
                              max_new_tokens=max_new_tokens)
        _report_cache(gen, res.summary)
        return _write_synth(res, out, "evolve --rewrite-format")
    res = evolve(records, gen, ops=tuple(o.strip() for o in ops.split(",") if o.strip()), seed=seed,
                 temperature=temperature, max_new_tokens=max_new_tokens)
    _report_cache(gen, res.summary)
    _write_synth(res, out, "evolve")


@synth_app.command("multi-turn")
def multi_turn_cmd(inputs: Path = typer.Argument(..., help="single-turn (or shorter) records to extend"),
                   out: Path = typer.Option(..., "-o", "--out", help="extended records; removed in OUT.dropped.jsonl"),
                   teacher: str | None = typer.Option(None, "--teacher", help="an OpenAI-compatible base URL or a "
                                                      "local model dir (not needed with --chain)"),
                   teacher_model: str | None = TEACHER_MODEL,
                   api_key_env: str | None = API_KEY_ENV, concurrency: int = CONCURRENCY,
                   turns: int = typer.Option(2, "--turns", help="adds TURNS-1 follow-up exchanges (a single-turn record ends with TURNS)"),
                   chain: bool = typer.Option(False, "--chain", help="no teacher: chain related single-turn "
                                              "records of one task_type into dialogues"),
                   max_turns: int = typer.Option(3, "--max-turns", help="--chain: most records per dialogue"),
                   min_similarity: float | None = typer.Option(None, "--min-similarity", help="--chain: user-turn "
                                                               "cosine at which records are related (default 0.5)"),
                   only_chained: bool = typer.Option(False, "--only-chained", help="--chain: records without a "
                                                     "partner go to OUT.dropped.jsonl instead of passing through"),
                   embed_model: str | None = typer.Option(None, "--embed-model", help="--chain: sentence-transformers "
                                                          "model (default: the shipped all-MiniLM-L6-v2)"),
                   temperature: float = typer.Option(0.7, "--temperature"),
                   max_new_tokens: int = typer.Option(512, "--max-new-tokens"), seed: int = SEED,
                   fresh: bool = FRESH) -> None:
    """Chain related turns: the teacher asks follow-up questions and answers them (or --chain: join related
    single-turn records)."""
    from sftlab.curate.files import load_records  # lazy: start-up
    from sftlab.synth.evolve import multi_turn
    from sftlab.synth.multiturn import CHAIN_MIN_SIMILARITY, chain_related

    _check_out(out, is_dir=False)
    if chain:
        res = chain_related(load_records(inputs), max_turns=max_turns, seed=seed, only_chained=only_chained,
                            model=embed_model,
                            min_similarity=CHAIN_MIN_SIMILARITY if min_similarity is None else min_similarity)
        s = res.summary
        return _write_synth(res, out, "multi-turn --chain", f"multi-turn --chain: {s['inputs']} records -> "
                            f"{s['chains']} dialogues from {s['chained_records']} records, {s['passed_through']} "
                            f"passed through, {s['dropped']} dropped")
    if teacher is None:
        raise UserError("synth multi-turn: give --teacher URL|DIR (or --chain to join related records without one)")
    if turns < 2:
        raise UserError(f"--turns must be >= 2, got {turns}")
    records = load_records(inputs)
    gen = _teacher(teacher, teacher_model, api_key_env, concurrency, _cache_of(out, is_dir=False), fresh)
    res = multi_turn(records, gen, turns=turns, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens)
    _report_cache(gen, res.summary)
    _write_synth(res, out, "multi-turn")
