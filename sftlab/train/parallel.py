"""torch.distributed set-up for torchrun: DDP or FSDP2 (`fully_shard` per decoder layer), gloo on CPU, nccl on CUDA.

Single-process runs go through the same functions, which then do nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sftlab.config import FsdpConfig
from sftlab.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local >= gpus:  # more processes than GPUs on this node: CUDA's 'invalid device ordinal' otherwise
            raise UserError(f"local rank {local} has no GPU: this node has {gpus} visible GPU(s) for "
                            f"{os.environ.get('LOCAL_WORLD_SIZE', local + 1)} processes; start at most {gpus} per "
                            "node (--nproc / --nproc_per_node), one per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def wrap_model(model: Any, mode: str, info: DistInfo, dtype: torch.dtype | None = None,
               fsdp: FsdpConfig | None = None) -> Any:
    """DDP, or FSDP2 (`fully_shard` per decoder layer, then the root) with a mixed-precision policy when
    `dtype` is bf16/fp16 (compute in `dtype`, gradients reduced in fp32); unchanged for one process.
    `mode` "none" under torchrun means DDP: several processes without data parallelism make no sense.
    `fsdp` (train.fsdp): reshard_after_forward as FSDP2 takes it; offload "params" is FSDP2's CPUOffloadPolicy
    (offload "optimizer" is the optimizer's business: optim.build_optimizer)."""
    if not info.enabled:
        return model
    if mode in ("none", "ddp"):
        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        # lazy: FSDP runs only
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        fsdp = fsdp or FsdpConfig()
        offload: dict[str, Any] = {}
        if fsdp.offload == "params":  # pinned host memory needs CUDA
            offload["offload_policy"] = CPUOffloadPolicy(pin_memory=info.device.type == "cuda")
        if _is_quantized(model):
            raise UserError("train.parallel=fsdp does not support 4-bit QLoRA (model.lora.load_in_4bit) yet; "
                            "use train.parallel=ddp")
        if dtype in (None, torch.float32):
            mp = MixedPrecisionPolicy()
        else:
            mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=mp, reshard_after_forward=fsdp.reshard_after_forward, **offload)
        # the root keeps its float inputs as given: the loss head's per-token scale (dL/dl_i) stays fp32;
        # each layer still casts its own inputs to the compute dtype. FSDP2 keeps the root's parameters
        # (embeddings, final norm, LM head) gathered from forward to backward whatever the setting.
        root = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype, cast_forward_inputs=False)
        fully_shard(model, mp_policy=root, **offload)
        return model
    raise UserError(f"train.parallel={mode!r} is not one of none, ddp, fsdp")


def _is_quantized(engine: Any) -> bool:
    hf = unwrap(engine).model
    return bool(getattr(hf, "is_loaded_in_4bit", False) or getattr(hf, "hf_quantizer", None) is not None)


def decoder_layers(engine: Any) -> list[Any]:
    """The repeated transformer blocks (what FSDP shards one by one): the decoder's `layers`, else the
    modules whose class the model lists in `_no_split_modules` (HF's own name for its blocks)."""
    base = unwrap(engine).model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        names = set(getattr(base, "_no_split_modules", None) or [])
        layers = [m for m in base.modules() if type(m).__name__ in names] or None
    if layers is None:
        raise UserError(f"cannot find the decoder layers of {type(base).__name__} for FSDP; use train.parallel=ddp")
    return list(layers)


def unwrap(engine: Any) -> Any:
    """The module inside a DDP wrapper (FSDP2 shards in place, so there is nothing to unwrap)."""
    return engine.module if isinstance(engine, DistributedDataParallel) else engine


def no_sync(model: Any, skip_sync: bool):
    """Skip the gradient all-reduce on all but the last accumulation step (DDP); FSDP2 syncs per backward."""
    if skip_sync and hasattr(model, "no_sync"):
        return model.no_sync()
    if skip_sync and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        return _restore_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _restore_sync(model: Any):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum across ranks (no-op for one process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, indexed by rank (a one-item list for one process); every rank must call it."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def reshard(engine: Any) -> None:
    """Free the layers FSDP2 gathered and kept (reshard_after_forward false) after forward passes without a
    backward (evaluation): a state dict taken while they are held reads freed storage."""
    from torch.distributed.fsdp import FSDPModule  # lazy: FSDP's module class

    for m in engine.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def is_sharded(engine: Any) -> bool:
    """True under FSDP2: the engine is an FSDPModule (its parameters are DTensor shards, or the gathered tensors
    while reshard_after_forward false holds them, so they cannot tell)."""
    from torch.distributed.fsdp import FSDPModule  # lazy: FSDP's module class

    return isinstance(engine, FSDPModule)


def full_state_dict(engine: Any, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The HF model's full (unsharded) state dict on rank 0, None elsewhere; every rank must call it."""
    if is_sharded(engine):
        # lazy: FSDP only
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(engine, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = unwrap(engine).state_dict() if info.is_main else None
    if not info.is_main:
        return None
    return {k.removeprefix("model."): v for k, v in sd.items()}


def destroy(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# -------------------------------------------------------------------------------- stopping on signals
#
# SIGTERM (schedulers, spot/preemptible machines) and Ctrl-C (SIGINT) only set a flag; the loop asks
# `stop_requested` after each optimizer step, all ranks agree on it (one all-reduce), save a checkpoint at
# the same step and exit 128 + signal (143 / 130). A second Ctrl-C in a single process stops at once
# without a checkpoint; under torchrun repeated signals are expected (the launcher forwards the one it got)
# and torchrun's own SIGKILL after its shutdown timeout is the hard stop.

_stop = {"signum": 0}


class StopRequested(KeyboardInterrupt):
    """Raised by the loop once every rank has seen the stop signal `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def install_stop_handlers(info: DistInfo) -> Any:
    """Route SIGTERM and SIGINT to the stop flag; returns a function restoring the previous handlers."""
    _stop["signum"] = 0
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: Any) -> None:
        if _stop["signum"]:
            if signum == signal.SIGINT and not info.enabled:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, no checkpoint
            return
        _stop["signum"] = signum
        if info.is_main:
            then = "Ctrl-C again to stop at once" if not info.enabled else "on every rank"
            print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving a checkpoint "
                  f"({then})", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore


def stop_requested(info: DistInfo) -> int:
    """The stop signal if any rank got one (0: none); every rank must call it at the same point."""
    if not info.enabled:
        return _stop["signum"]
    flag = torch.tensor([_stop["signum"]], dtype=torch.int64, device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
