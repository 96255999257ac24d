"""Model loading: a hub id or local dir, dtype, attention backend, new special tokens, full or LoRA/QLoRA."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from sftlab.config import ModelConfig
from sftlab.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    """cuda when available (or asked for), else cpu."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"train.device={requested!r} but no CUDA device is available")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """Does the device compute bf16 in hardware? (answer, the reason in words)

    Autocast to bf16 on a CPU without AVX512-BF16 / AMX runs emulated kernels that are several times slower
    than fp32, so bf16 is only worth it where the hardware has it.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'has' if ok else 'lacks'} native bf16 (Ampere or newer has it)"
    if device.type == "cpu":
        amx, avx = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
        ok = amx or avx
        return ok, (f"CPU has {'AMX' if amx else 'AVX512-BF16'}" if ok else
                    "CPU lacks AVX512-BF16 and AMX, so bf16 would be emulated (several times slower than fp32)")
    return False, f"no native bf16 check for device type {device.type!r}"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """The compute dtype to train with, and one line saying why.

    auto → bf16 autocast where the device has native bf16, else fp32; an explicit bf16 on hardware without it
    also falls back to fp32 (said in the line) instead of taking the emulated path. fp32 / fp16 are kept.
    """
    if requested not in ("auto", "bf16"):
        return requested, f"{requested} (as configured)"
    ok, why = bf16_native(device)
    if ok:
        return "bf16", f"bf16 autocast, fp32 master weights ({why})"
    return "fp32", f"fp32 instead of {requested}: {why}"


def autocast_context(dtype: str, device: torch.device):
    """Mixed precision: fp32 master weights, bf16/fp16 compute where the device supports it."""
    if dtype in ("fp32", "auto"):  # auto is resolved before training (resolve_precision); fp32 if it was not
        return torch.autocast(device.type, enabled=False)
    if dtype == "fp16" and device.type == "cpu":
        raise UserError("model.dtype=fp16 is not supported on CPU; use bf16 or fp32")
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def check_model_path(name_or_path: str) -> None:
    """Fail at once (not after a minute of hub retries) when the model can be neither a local directory nor
    a hub id that can be fetched: a missing path, a name whose first part is a local directory (a mistyped
    local path), or a hub id while the hub is offline / unreachable and the id is not in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return
    parts = name_or_path.split("/")
    if (name_or_path.startswith((".", "/", "~", "\\")) or len(parts) > 2
            or (len(parts) == 2 and Path(parts[0]).is_dir())):
        parent = next((p for p in path.parents if p.is_dir()), None)
        raise UserError(f"model.name_or_path: directory not found: {name_or_path}"
                        f"{f' (looked in {parent.resolve()})' if parent is not None and str(parent) != '.' else ''}")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return  # cached hub model: loads offline
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if offline or not _reachable(endpoint):
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub ({endpoint}) is unreachable"
        raise UserError(f"model.name_or_path: {name_or_path!r} is not a local directory, and {why} (not in the "
                        "local cache either); check the path, or download the model first")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened within `timeout` seconds?"""
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "", u.port or (443 if u.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def available_attention() -> list[str]:
    """The attention backends that can run here (for error messages)."""
    out = ["eager", "sdpa", "sdpa_varlen"]
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        out.append("flex_attention")
    out += [n for n, pkg in FLASH_PACKAGES.items() if importlib.util.find_spec(pkg) is not None]
    return out


FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def check_attn_implementation(name: str) -> None:
    """A FlashAttention backend without its package is one line naming the package, not an ImportError."""
    pkg = FLASH_PACKAGES.get(name)
    if pkg is not None and importlib.util.find_spec(pkg) is None:
        raise UserError(f"model.attn_implementation={name!r} needs the {pkg!r} package, which is not installed "
                        f"(pip install flash-attn, CUDA only); available here: {', '.join(available_attention())}")


def load_model(cfg: ModelConfig, tokenizer: Any, device: torch.device, gradient_checkpointing: bool = False,
               adapter_dir: str | None = None, weights_dir: str | None = None, torch_compile: bool = False) -> Any:
    """AutoModelForCausalLM (+ LoRA via peft). Embeddings are resized to the tokenizer (new special tokens),
    and stay trainable under LoRA. `weights_dir` loads full weights from a checkpoint instead of the base;
    `adapter_dir` loads a LoRA adapter to continue training it. `torch_compile` compiles the decoder (the loss
    head calls it directly) with dynamic shapes, since every micro-batch has its own length."""
    from transformers import AutoModelForCausalLM

    from sftlab.train.attention import register_attention_kernels

    src = weights_dir or cfg.name_or_path
    check_model_path(src)
    if Path(src).expanduser().exists():  # recorded as the adapter's base_model_name_or_path: make it absolute
        src = str(Path(src).expanduser().resolve())
    register_attention_kernels()
    attn = "sdpa" if cfg.attn_implementation == "auto" else cfg.attn_implementation
    kwargs: dict[str, Any] = {"attn_implementation": attn, "dtype": torch.float32}
    if cfg.lora is not None and cfg.lora.load_in_4bit:
        if device.type != "cuda":
            raise UserError("model.lora.load_in_4bit (QLoRA) needs a CUDA device; none is available here. "
                            "Use plain LoRA (load_in_4bit: false) on CPU")
        try:
            from transformers import BitsAndBytesConfig
        except ImportError:  # pragma: no cover - depends on the install
            raise UserError("QLoRA needs bitsandbytes: pip install bitsandbytes") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=DTYPES.get(cfg.dtype, torch.bfloat16))
        kwargs["dtype"] = DTYPES.get(cfg.dtype, torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load model from {src!r}: {str(e).splitlines()[0]}") from None
    except ImportError as e:  # a backend whose package is missing (or broken)
        raise UserError(f"model.attn_implementation={cfg.attn_implementation!r}: {str(e).splitlines()[0]}; "
                        f"available here: {', '.join(available_attention())}") from None
    except ValueError as e:
        if "attn_implementation" in str(e) or "attention" in str(e).lower():
            raise UserError(f"model.attn_implementation={cfg.attn_implementation!r}: {str(e).splitlines()[0]}") from None
        raise
    added = len(tokenizer) > model.get_input_embeddings().weight.shape[0]
    if added:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(
            getattr(tokenizer, "sftlab_eot_token", None) or tokenizer.eos_token)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        model = _apply_lora(model, cfg, added, adapter_dir, gradient_checkpointing)
    model = model.to(device)
    if torch_compile:
        model.get_decoder().compile(dynamic=True)
    return model


def _apply_lora(model: Any, cfg: ModelConfig, new_tokens: bool, adapter_dir: str | None,
                gradient_checkpointing: bool) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.lora.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    if adapter_dir:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    modules_to_save = None
    if new_tokens:  # new special tokens need trainable embedding rows, or the model can never use them
        names = {mod: n for n, mod in model.named_modules()}
        modules_to_save = [names[model.get_input_embeddings()].split(".")[-1],
                           names[model.get_output_embeddings()].split(".")[-1]]
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
                      modules_to_save=modules_to_save)
    return get_peft_model(model, lcfg)
