"""The last decoder layer's attention output projection and MLP only at the positions the loss reads.

The loss reads the decoder's last hidden state only where the next token is supervised (`loss._supervised_hidden`),
and the LM head already runs only there. Every layer but the last must run at every position: later positions
attend to their keys and values. In the last layer nothing attends to its output, so at the positions the loss
does not read (prompts, template tokens, padding) its output projection and MLP are dead work, forward and
backward: about a quarter of the positions on chat data with short prompts, ~77 % of that layer's linear FLOPs
per position (the MLP is most of a layer). Attention itself is left whole (the read positions need every key and
value), so the layer's attention module and kernels are untouched.

`install_last_layer_skip(model)` wraps `layers[-1].self_attn.o_proj` and `layers[-1].mlp` so that, while
`reading_only` holds an index, they run on those rows only and write zeros elsewhere (a value nobody reads).
It is installed only where it provably changes nothing the loss sees: a dense MLP (no mixture-of-experts router,
whose token routing could differ), no gradient checkpointing (its recomputation in backward would run outside the
forward's index; switched on later, it makes the skip stand down), and a probe forward with and without the skip
must agree at the read positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class ReadPositions:
    """The flattened [rows * length] positions the current forward's loss reads; None outside such a forward."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer  # the last decoder layer: if checkpointing is switched on later, the skip stands down
        self.index: torch.Tensor | None = None


def _checkpointing(layer: torch.nn.Module) -> bool:
    return getattr(layer, "gradient_checkpointing", False) is True


def _skipped(layers: Any) -> list[str]:
    n = len(layers) - 1
    return [f"layers[{n}].self_attn.o_proj", f"layers[{n}].mlp"]


def _only_read_rows(forward: Callable[[torch.Tensor], torch.Tensor], read: ReadPositions) -> Callable:
    def forward_read_rows(x: torch.Tensor) -> torch.Tensor:
        if read.index is None:
            return forward(x)
        flat = x.reshape(-1, x.shape[-1])
        y = forward(flat.index_select(0, read.index))
        out = y.new_zeros(flat.shape[0], y.shape[-1]).index_copy(0, read.index, y)
        return out.view(*x.shape[:-1], y.shape[-1])

    return forward_read_rows


def _probe_agrees(decoder: torch.nn.Module, read: ReadPositions, vocab: int) -> bool:
    """The decoder's last hidden state at some positions, with and without the skip: the same?"""
    param = next(decoder.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 12), generator=gen).to(param.device)
    index = torch.tensor([2, 3, 7, 11], device=param.device)
    modes = {module: module.training for module in decoder.modules()}
    decoder.eval()  # no dropout in the comparison
    try:
        with torch.no_grad():
            # .forward: no hooks and no torch.compile (a compiled decoder would compile for this probe)
            full = decoder.forward(input_ids=ids, use_cache=False).last_hidden_state[0, index]
            read.index = index
            skip = decoder.forward(input_ids=ids, use_cache=False).last_hidden_state[0, index]
    except Exception:  # noqa: BLE001 - a decoder that cannot run a plain probe is simply left alone
        return False
    finally:
        read.index = None
        for module, training in modes.items():
            module.training = training
    return bool(torch.allclose(full.float(), skip.float(), rtol=1e-4, atol=1e-5))


def install_last_layer_skip(model: torch.nn.Module) -> list[str]:
    """Make the last decoder layer's `o_proj` and `mlp` run only at the positions the loss reads (see above).
    Returns what now skips, e.g. ["layers[7].self_attn.o_proj", "layers[7].mlp"], or [] where it does not
    apply. Idempotent."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if hasattr(decoder, "sftlab_read_positions"):
        return _skipped(layers)
    if not layers or _checkpointing(layers[-1]):
        return []
    last = layers[-1]
    attn, mlp = getattr(last, "self_attn", None), getattr(last, "mlp", None)
    o_proj = getattr(attn, "o_proj", None)
    dense = mlp is not None and hasattr(mlp, "down_proj") and not hasattr(mlp, "experts")
    if not isinstance(o_proj, torch.nn.Module) or not dense:
        return []
    read = ReadPositions(last)
    own = [(module, module.__dict__.get("forward")) for module in (o_proj, mlp)]
    for module, _ in own:
        module.forward = _only_read_rows(module.forward, read)
    if not _probe_agrees(decoder, read, decoder.get_input_embeddings().weight.shape[0]):
        for module, forward in own:  # back to what it was
            if forward is None:
                del module.__dict__["forward"]
            else:
                module.forward = forward
        return []
    decoder.sftlab_read_positions = read
    return _skipped(layers)


@contextmanager
def reading_only(decoder: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor, length: int) -> Iterator[None]:
    """During this forward, the last layer skips every position but (rows, cols) of a [R, length] batch."""
    read: Any = getattr(decoder, "sftlab_read_positions", None)
    if read is None or _checkpointing(read.layer):
        yield
        return
    read.index = rows * length + cols
    try:
        yield
    finally:
        read.index = None
