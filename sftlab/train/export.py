"""Loading checkpoints for inference and exporting them (LoRA adapters merged into the base model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.train.model import check_model_path, stop_at_turn_end


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_for_inference(path: str | Path) -> Any:
    """AutoModelForCausalLM, or base + LoRA adapter (peft) when the directory holds an adapter."""
    from transformers import AutoModelForCausalLM  # lazy: transformers takes seconds to import

    path = Path(path)
    if not path.exists():
        raise UserError(f"model directory not found: {path}")
    if is_adapter_dir(path):
        from peft import AutoPeftModelForCausalLM  # lazy: peft imports transformers (seconds); adapters only

        check_adapter_base(path)
        return AutoPeftModelForCausalLM.from_pretrained(path)
    if not (path / "config.json").is_file():  # e.g. a run dir instead of its final/: one line, not a ValueError
        inside = sorted({p.parent.name for n in ("config.json", "adapter_config.json") for p in path.glob(f"*/{n}")})
        hint = f"; its model directories: {', '.join(inside)}" if inside else ""
        raise UserError(f"{path} is not a model directory (no config.json or adapter_config.json){hint}")
    return AutoModelForCausalLM.from_pretrained(path)


def check_adapter_base(path: Path) -> None:
    """The adapter's base model must be reachable: a one-line error (not a hub traceback) when it is not, e.g.
    an adapter written by an older sftlab that recorded the base as a relative path."""
    config = path / "adapter_config.json"
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    try:
        check_model_path(base)
    except UserError as e:
        raise UserError(f"{path}: the adapter's base model: {str(e).removeprefix('model.name_or_path: ')}; "
                        f"fix base_model_name_or_path in {config}") from None


def export_model(src: str | Path, out: str | Path, merge: bool = False) -> Path:
    """Write src as a standalone HF model dir; an adapter needs --merge (base + adapter folded together)."""
    from transformers import AutoTokenizer  # lazy: transformers takes seconds to import

    src, out = Path(src), Path(out)
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"export: -o {out} is the source directory; choose another output directory")
    if is_adapter_dir(out):  # loaders would take the stale adapter (over its base) instead of the exported model
        raise UserError(f"export: {out} holds a LoRA adapter (adapter_config.json); choose another output directory")
    model = load_for_inference(src)
    if is_adapter_dir(src):
        if not merge:
            raise UserError(f"{src} holds a LoRA adapter: pass --merge to fold it into the base weights")
        model = model.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(src)
    if is_adapter_dir(src) and model.generation_config is not None:
        # the adapter brings no generation_config: the base's may stop at its eos only, not at the turn end the
        # adapter was trained to produce (the same as training sets for a full fine-tune)
        stop_at_turn_end(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
