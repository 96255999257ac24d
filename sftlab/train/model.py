"""Model loading: a hub id or local dir, dtype, attention backend, new special tokens, full or LoRA/QLoRA."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from sftlab.config import ModelConfig
from sftlab.data.render import eot_token_ids
from sftlab.errors import UserError
from sftlab.train.attention import register_attention_kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    """cuda when available (or asked for), else cpu."""
    if requested:
        device = device_of(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"train.device={requested!r} but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(name: str) -> torch.device:
    """train.device as a torch device: cpu, cuda or cuda:N (the devices the loop is written for; mps where
    available); a one-line error for anything else instead of torch's RuntimeError (`gpu`) or a failure at the
    first tensor (`mps` on a machine without it)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is not None and device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={name!r} but no MPS device is available here")
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"train.device={name!r}: use cpu, cuda or cuda:N")
    return device


def stop_at_turn_end(model: Any, tokenizer: Any) -> None:
    """generation_config.eos_token_id = the ids that close a turn (what sftlab's generator stops at), so a saved
    model also stops there under plain transformers / vLLM: a base model's eos alone (<|endoftext|>) would run past
    ChatML's <|im_end|>. For a trained model (load_model) and a merged LoRA export, whose base config has no say."""
    eot = eot_token_ids(tokenizer)
    model.generation_config.eos_token_id = eot[0] if len(eot) == 1 else eot


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """Does bf16 pay on this device? (answer, the reason in words)

    CUDA: native bf16 (Ampere or newer). CPU: bf16 only where it is *measured* faster than fp32 here
    (`cpu_bf16_matmul_speedup`): AMX is several times faster, but AVX512-BF16 alone can be slower than fp32
    (a matmul 1.3-1.8x slower on this project's Xeon), and without either instruction set bf16 is emulated.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'has' if ok else 'lacks'} native bf16 (Ampere or newer has it)"
    if device.type == "cpu":
        amx, avx = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
        if not (amx or avx):
            return False, "CPU lacks AVX512-BF16 and AMX, so bf16 would be emulated (several times slower than fp32)"
        speedup = cpu_bf16_matmul_speedup()
        ok = speedup >= BF16_MIN_SPEEDUP
        return ok, (f"CPU has {'AMX' if amx else 'AVX512-BF16 without AMX'}; a bf16 matmul measured "
                    f"{speedup:.2f}x the speed of fp32 here")
    return False, f"no native bf16 check for device type {device.type!r}"


BF16_MIN_SPEEDUP = 1.1  # bf16 autocast costs casts around every matmul: it must win clearly to be worth it


@functools.lru_cache(maxsize=1)
def cpu_bf16_matmul_speedup(m: int = 1024, k: int = 512, n: int = 1536, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one training-sized matmul on one core of this CPU (~0.2 s once).

    Measured rather than read from CPU flags because the flags do not say it: oneDNN's bf16 path is fast with
    AMX tiles, but on AVX512-BF16 alone (and under hypervisors that hide AMX) it can lose to fp32. One thread,
    the two dtypes alternated and the best of `repeats` kept, so another process on the machine moves both."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, y in pairs.values():
            x @ y  # warm-up: oneDNN picks its kernel
        for _ in range(repeats):
            for dtype, (x, y) in pairs.items():
                t = time.perf_counter()
                x @ y
                best[dtype] = min(best[dtype], time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """The compute dtype to train with, and one line saying why.

    auto → bf16 autocast where bf16 pays on the device (`bf16_native`), else fp32; an explicit bf16 where it
    does not also falls back to fp32 (said in the line) instead of taking the slow path. fp32 / fp16 are kept.
    """
    if requested == "fp16" and device.type == "cpu":  # before the run dir is written (autocast_context says it late)
        raise UserError("model.dtype=fp16 is not supported on CPU; use bf16 or fp32")
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
    from huggingface_hub import try_to_load_from_cache  # lazy: only for a hub id, not a local path

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
               adapter_dir: str | None = None, weights_dir: str | None = None, torch_compile: bool = False,
               frozen_dtype: torch.dtype | None = None) -> Any:
    """AutoModelForCausalLM (+ LoRA via peft). Embeddings are resized to the tokenizer (new special tokens),
    and stay trainable under LoRA. `weights_dir` loads full weights from a checkpoint instead of the base;
    `adapter_dir` loads a LoRA adapter to continue training it. `torch_compile` compiles the decoder (the loss
    head calls it directly) with dynamic shapes, since every micro-batch has its own length. `frozen_dtype`
    (LoRA under bf16/fp16 autocast): the frozen Linear weights are stored in it (`cast_frozen_linear_weights`)."""
    from transformers import AutoModelForCausalLM  # lazy: transformers takes seconds to import

    src = weights_dir or cfg.name_or_path
    check_model_path(src)
    if Path(src).expanduser().exists():  # recorded as the adapter's base_model_name_or_path: make it absolute
        src = str(Path(src).expanduser().resolve())
    register_attention_kernels()
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **_pretrained_kwargs(cfg, device))
    except OSError as e:
        raise UserError(f"cannot load model from {src!r}: {str(e).splitlines()[0]}") from None
    except ImportError as e:  # a backend whose package is missing (or broken)
        raise UserError(f"model.attn_implementation={cfg.attn_implementation!r}: {str(e).splitlines()[0]}; "
                        f"available here: {', '.join(available_attention())}") from None
    except ValueError as e:
        if "attn_implementation" in str(e) or "attention" in str(e).lower():
            raise UserError(f"model.attn_implementation={cfg.attn_implementation!r}: {str(e).splitlines()[0]}") from None
        raise
    added = _resize_embeddings(model, len(tokenizer), mean_resizing=True)
    if model.generation_config is not None:
        stop_at_turn_end(model, tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = prepare_for_training(model, cfg, added, gradient_checkpointing, adapter_dir, frozen_dtype)
    model = model.to(device)
    if torch_compile:
        model.get_decoder().compile(dynamic=True)
    if device.type == "cpu":
        trim_heap_before_embedding_grad(model)
    return model


def _pretrained_kwargs(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    """from_pretrained's arguments: fp32 master weights and the attention backend; QLoRA's nf4 quantisation."""
    attn = "sdpa" if cfg.attn_implementation == "auto" else cfg.attn_implementation
    kwargs: dict[str, Any] = {"attn_implementation": attn, "dtype": torch.float32}
    if cfg.lora is not None and cfg.lora.load_in_4bit:
        if device.type != "cuda":
            raise UserError("model.lora.load_in_4bit (QLoRA) needs a CUDA device; none is available here. "
                            "Use plain LoRA (load_in_4bit: false) on CPU")
        try:
            from transformers import BitsAndBytesConfig  # lazy: transformers; fails without bitsandbytes
        except ImportError:  # pragma: no cover - depends on the install
            raise UserError("QLoRA needs bitsandbytes: pip install bitsandbytes") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=DTYPES.get(cfg.dtype, torch.bfloat16))
        kwargs["dtype"] = DTYPES.get(cfg.dtype, torch.bfloat16)
    return kwargs


def _resize_embeddings(model: Any, vocab_size: int | None, mean_resizing: bool) -> bool:
    """Grow the embeddings to `vocab_size` (new special tokens); whether tokens were added."""
    added = vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]
    if added:
        model.resize_token_embeddings(vocab_size, mean_resizing=mean_resizing)
    return added


def prepare_for_training(model: Any, cfg: ModelConfig, new_tokens: bool, gradient_checkpointing: bool = False,
                         adapter_dir: str | None = None, frozen_dtype: torch.dtype | None = None) -> Any:
    """What training changes on a loaded model, shared by `load_model` and `meta_model_from_config` (the
    estimator), so both count the same parameters: gradient checkpointing, LoRA (new token rows trainable) and
    LoRA's frozen base stored in `frozen_dtype`."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        model = _apply_lora(model, cfg, new_tokens, adapter_dir, gradient_checkpointing)
        if frozen_dtype is not None and not cfg.lora.load_in_4bit:
            cast_frozen_linear_weights(model, frozen_dtype)
    return model


def load_model_config(name_or_path: str) -> Any:
    """The model's transformers config (config.json only)."""
    from transformers import AutoConfig  # lazy: transformers takes seconds to import

    return AutoConfig.from_pretrained(name_or_path)


def meta_model(cfg: ModelConfig, vocab_size: int | None = None, gradient_checkpointing: bool = False,
               parallel: str = "none") -> Any:
    """The configured model on the meta device (no weights are read), resized to `vocab_size` and prepared as
    `load_model` prepares it, so parameter counts and dtypes are those of the real run."""
    check_model_path(cfg.name_or_path)
    return meta_model_from_config(load_model_config(cfg.name_or_path), cfg, vocab_size, gradient_checkpointing,
                                  parallel)


def meta_model_from_config(config: Any, cfg: ModelConfig, vocab_size: int | None = None,
                           gradient_checkpointing: bool = False, parallel: str = "none") -> Any:
    """`meta_model` for an already built transformers config (e.g. written out in a test or the docs). QLoRA's
    base stays unquantised here (bitsandbytes cannot quantise on meta): the estimator counts its nf4 bytes."""
    from transformers import AutoModelForCausalLM  # lazy: transformers takes seconds to import

    unquantised = cfg
    if cfg.lora is not None and cfg.lora.load_in_4bit:
        unquantised = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"load_in_4bit": False})})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        added = _resize_embeddings(model, vocab_size, mean_resizing=False)
        return prepare_for_training(model, unquantised, added, gradient_checkpointing,
                                    frozen_dtype=frozen_base_dtype(cfg, parallel))


EMBED_GRAD_TRIM_MIN_BYTES = 64 << 20  # an fp32 embedding gradient this large sets the CPU peak RSS


def trim_heap_before_embedding_grad(model: Any) -> bool:
    """On CPU (glibc), hand the heap's free pages back to the OS just before the input embedding's backward.

    That backward allocates a dense [vocab, hidden] gradient (311 MB at Qwen's vocabulary) at the very end of
    backward, when the decoder's activations are already freed but still resident: glibc keeps freed chunks
    in its heap, so the fresh gradient lands on top of them and sets the process's peak RSS. `malloc_trim(0)`
    at that moment lowers the peak by the activations' size (benchmarks/README.md: qwen:alpaca padfree
    3,293 -> 2,984 MB). The pages it returns are faulted in again by
    the next forward (up to ~10 % of a step there), so it is only installed where that gradient is big enough to
    set the peak (>= 64 MiB; a 2,048 x 512 one is 4 MiB). Returns whether the hook was installed (not without
    glibc, for a frozen embedding, or a small gradient)."""
    trim = _malloc_trim()
    embed = model.get_input_embeddings()
    if trim is None or embed is None or not embed.weight.requires_grad:
        return False
    if embed.weight.numel() * 4 < EMBED_GRAD_TRIM_MIN_BYTES:
        return False

    def release(grad: torch.Tensor) -> None:  # runs when the embedding's output gradient arrives
        trim(0)

    def on_output(module: Any, args: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.register_hook(release)

    embed.register_forward_hook(on_output)
    return True


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (macOS, musl)
        return None


def frozen_base_dtype(cfg: ModelConfig, parallel: str = "none") -> torch.dtype | None:
    """The dtype LoRA's frozen base is stored in: the autocast dtype under bf16/fp16 (half the weights' memory,
    same outputs: `cast_frozen_linear_weights`), else None (fp32). FSDP2 needs one dtype per sharded module,
    so it keeps fp32 there (its shards are 1/world anyway); QLoRA's base is nf4 already."""
    if cfg.lora is None or cfg.lora.load_in_4bit or cfg.dtype not in ("bf16", "fp16") or parallel == "fsdp":
        return None
    return DTYPES[cfg.dtype]


def cast_frozen_linear_weights(model: Any, dtype: torch.dtype) -> None:
    """Store the frozen weights of Linear layers (LoRA's base) in the autocast dtype.

    Autocast casts an fp32 weight to `dtype` at every matmul anyway (same rounding), so the layer's outputs are
    bit-identical, while the frozen base takes half the memory (Qwen2.5-7B: 30 -> 15 GB) and no autocast copy
    per step. Trainable parameters (LoRA A/B, saved modules), biases, norms and the input embedding (also when
    the LM head is tied to it) keep fp32: the residual stream stays fp32 as before."""
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        w = module.weight
        if not w.requires_grad and w is not embedding and w.dtype == torch.float32:
            module.weight = torch.nn.Parameter(w.detach().to(dtype), requires_grad=False)


def _apply_lora(model: Any, cfg: ModelConfig, new_tokens: bool, adapter_dir: str | None,
                gradient_checkpointing: bool) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training  # lazy: LoRA only

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
    try:
        return get_peft_model(model, lcfg)
    except ValueError as e:  # peft's NoMatchingPeftModuleError: a name the model does not have
        if "not found in the base model" not in str(e):
            raise
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"model.lora.target_modules: {cfg.lora.target_modules!r} matches no module of the model "
                        f"(a list names modules, a string other than all-linear is a regex over full module names); "
                        f"its linear layers: {', '.join(linear)}") from None
