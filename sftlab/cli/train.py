"""Top-level commands: tiny-model, train, demo, generate, export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sftlab.cli.apps import app
from sftlab.errors import UserError


@app.command("tiny-model")
def tiny_model(out_dir: Path = typer.Argument(..., help="Where to write the model (HF layout)."),
               texts: Path | None = typer.Option(None, help="Text file (one text per line) to train the BPE on."),
               vocab_size: int = typer.Option(1024), hidden_size: int = typer.Option(128),
               num_layers: int = typer.Option(4), seed: int = typer.Option(0),
               vocab: str = typer.Option("local", help="local: a BPE trained here (Llama architecture); qwen: "
                                         "Qwen2.5's real 151,936-token vocabulary on a small Qwen2 model, so token "
                                         "counts (Chinese included) are Qwen's (needs the qwen extra).")) -> None:
    """Build a tiny Llama model + locally trained BPE tokenizer with a ChatML template (or, with --vocab qwen,
    a small Qwen2 model with Qwen2.5's own tokenizer)."""
    from sftlab.tiny import build_tiny_model  # lazy: torch and transformers; the CLI starts without them

    if vocab not in ("local", "qwen"):
        raise typer.BadParameter(f"{vocab!r}: choose local or qwen", param_hint="--vocab")
    # checked here, not by transformers at save or first forward (an internal error there): rotary needs an even
    # head size, so hidden_size must be a multiple of 2 x heads (4 heads locally, hidden_size // 32 for qwen)
    heads = max(1, hidden_size // 32) if vocab == "qwen" else 4
    if hidden_size <= 0 or hidden_size % (2 * heads):
        raise typer.BadParameter(f"{hidden_size}: must be a positive multiple of {2 * heads} ({heads} attention "
                                 "heads of an even size)", param_hint="--hidden-size")
    if heads % max(1, heads // 2):  # qwen: heads // 2 key-value heads must divide the heads
        raise typer.BadParameter(f"{hidden_size}: gives {heads} attention heads (hidden_size // 32), which "
                                 f"{heads // 2} key-value heads do not divide; choose another size",
                                 param_hint="--hidden-size")
    if num_layers < 1:
        raise typer.BadParameter(f"{num_layers}: must be at least 1", param_hint="--num-layers")
    if vocab == "qwen":
        from sftlab.qwen_vocab import build_qwen_model  # lazy: the qwen extra

        path = build_qwen_model(out_dir, hidden_size=hidden_size, num_layers=num_layers, num_heads=heads,
                                num_kv_heads=max(1, heads // 2), intermediate_size=3 * hidden_size, seed=seed)
        typer.echo(f"tiny Qwen-vocabulary model written to {path}")
        return
    lines = None
    if texts is not None:
        lines = [ln for ln in texts.read_text(encoding="utf-8").splitlines() if ln.strip()]
    path = build_tiny_model(out_dir, lines, vocab_size=vocab_size, hidden_size=hidden_size,
                            num_layers=num_layers, seed=seed)
    typer.echo(f"tiny model written to {path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context, config: Path = typer.Argument(..., help="YAML config (model/data/train)."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this node (execs torchrun when > 1).")) -> None:
    """Fine-tune a model: `sftlab train CONFIG.yaml [train.learning_rate=1e-5 ...]` (a config with `stages:`
    is a run plan: the stages train in order, each from the previous one's final model)."""
    from sftlab.config import build_config, read_config_file  # lazy: start-up (pydantic; below: torch)
    from sftlab.train.plan import plan_configs

    unknown = [a for a in (str(config), *ctx.args) if a.startswith("-")]  # extra args are key=value overrides only
    if unknown:
        ctx.fail(f"No such option: {unknown[0]}")
    overrides = list(ctx.args)
    raw = read_config_file(config)
    if "stages" in raw:
        plan_configs(raw, overrides, source=str(config))  # validate every stage before spawning anything
    else:
        cfg = build_config(raw, overrides, source=str(config))
    from sftlab.train.launch import exec_workers, first_to_report  # lazy: start-up (torch)

    if nproc > 1:
        exec_workers(str(config), overrides, nproc)
    from sftlab.eval.during_training import generation_eval  # lazy: start-up (torch, transformers)
    from sftlab.train.loop import train as run_train
    from sftlab.train.plan import run_plan

    try:
        if "stages" in raw:
            run_plan(raw, overrides, source=str(config), generation_eval=generation_eval)
        else:
            run_train(cfg, generation_eval)
    except UserError as e:
        if not first_to_report(str(e)):  # a worker of `--nproc`: another rank printed this very line
            sys.exit(e.exit_code)
        raise


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Directory for model, data and run."),
         overrides: list[str] | None = typer.Argument(None, help="Dotted config overrides.")) -> None:
    """The embedded end-to-end demo: tiny model, synthetic multi-task data, train, per-task exact match."""
    from sftlab.demo import run_demo  # lazy: start-up

    run_demo(out, overrides or [])


@app.command()
def generate(model: str = typer.Option(..., "--model", help="Model directory (HF layout, LoRA adapter or merged "
                                       "export), or an OpenAI-compatible base URL (http://host:port/v1)."),
             prompt: str | None = typer.Option(None, "--prompt", help="One user message."),
             chat: Path | None = typer.Option(None, "--chat", help="JSON file: a list of messages."),
             max_new_tokens: int = typer.Option(128), temperature: float = typer.Option(0.0),
             top_p: float = typer.Option(1.0), seed: int | None = typer.Option(None),
             backend: str = typer.Option("auto", help="auto | hf | vllm | openai")) -> None:
    """Sample a reply from a checkpoint with its chat template (or from an OpenAI-compatible server)."""
    from sftlab.infer import GenerationParams, load_generator  # lazy: start-up

    if (prompt is None) == (chat is None):
        raise UserError("give exactly one of --prompt or --chat")
    messages = [{"role": "user", "content": prompt}] if prompt is not None else _read_chat(chat)
    remote = model.startswith(("http://", "https://"))
    generator = load_generator({"base_url": model} if remote else Path(model), backend=backend)
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    reply = generator.generate([messages], params)[0][0]
    typer.echo(reply.text.strip())
    if reply.finish_reason == "length":
        typer.echo(f"[no end-of-turn token within {max_new_tokens} new tokens]", err=True)


def _read_chat(path: Path) -> list[dict]:
    """--chat FILE: a JSON list of {role, content} messages (a one-line error naming the file otherwise)."""
    try:
        messages = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{path}: expected a JSON list of messages ({{\"role\": ..., \"content\": ...}})")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and (isinstance(m.get("content"), str) or m.get("tool_calls"))):
            raise UserError(f"{path}: message {i}: needs a string 'role' and a string 'content'")
    return messages


@app.command()
def export(src: Path = typer.Argument(..., help="A run's final/ or checkpoint dir."),
           out: Path = typer.Option(..., "-o", "--out", help="Output directory."),
           merge: bool = typer.Option(False, "--merge", help="Merge a LoRA adapter into the base weights.")) -> None:
    """Export a checkpoint as a plain HF model directory (with --merge for LoRA adapters)."""
    from sftlab.train.export import export_model  # lazy: torch; the CLI starts without it

    path = export_model(src, out, merge=merge)
    typer.echo(f"exported to {path}")
