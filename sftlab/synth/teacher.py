"""A teacher is any Generator: an OpenAI-compatible URL (openai backend) or a local model dir (hf backend)."""

from __future__ import annotations

from typing import Any

from sftlab.errors import UserError
from sftlab.infer import GenerationParams, Generator, Reply, load_generator


def load_teacher(teacher: str, model: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 8, backend: str = "auto") -> Generator:
    """`teacher` starting with http(s):// is an endpoint base_url; anything else is a local model directory."""
    if teacher.startswith(("http://", "https://")):
        cfg: dict[str, Any] = {"base_url": teacher, "model": model, "concurrency": concurrency}
        if api_key_env:
            cfg["api_key_env"] = api_key_env
        return load_generator(cfg, backend="openai" if backend == "auto" else backend)
    if model:
        raise UserError(f"--teacher-model {model!r} is only for an endpoint URL; {teacher} is a local directory")
    return load_generator(teacher, backend=backend)


def teacher_id(gen: Generator) -> str:
    return f"{getattr(gen, 'base_url', '') or 'local'}:{gen.model_id}".removeprefix("local:")


def ask(gen: Generator, conversations: list[list[dict]], params: GenerationParams,
        batch_size: int = 64, label: str = "teacher") -> list[list[Reply]]:
    """generate() in chunks with a progress bar (the backend batches / parallelises inside each chunk)."""
    from sftlab.data.curate.io import progress_console

    console = progress_console()
    if len(conversations) <= batch_size or not console.is_terminal:  # off a terminal rich prints a blank line
        out: list[list[Reply]] = []
        for i in range(0, len(conversations), batch_size):
            out += gen.generate(conversations[i:i + batch_size], params)
        return out
    from rich.progress import Progress

    out = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=len(conversations))
        for i in range(0, len(conversations), batch_size):
            out += gen.generate(conversations[i:i + batch_size], params)
            bar.advance(task, len(conversations[i:i + batch_size]))
    return out
