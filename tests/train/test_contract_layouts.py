"""The loss contract across layouts (docs/DESIGN.md §2): for the same samples in a global batch, the loss and the
gradient of every parameter are the same for pad (any micro-batch size × accumulation), padfree and pack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sftlab.data.render import render_records
from sftlab.train.attention import register_attention_kernels
from sftlab.train.balance import per_sample_values
from sftlab.train.batching import collate, move_batch, packed_micro_batch, plan_packed_micro_batches
from sftlab.train.loss import attach_loss_coefficients, micro_batch_loss, supervised_token_nll

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers

RECORDS = [
    {"id": "long-multi", "messages": [
        {"role": "system", "content": "answer in words"},
        {"role": "user", "content": "count the blue words in this sentence " * 6},
        {"role": "assistant", "content": "three blue words " * 12},
        {"role": "user", "content": "and the red ones?"},
        {"role": "assistant", "content": "none", "loss_weight": 2.0},
        {"role": "user", "content": "sort them"},
        {"role": "assistant", "content": "a b c d e f g", "loss_weight": 0.5}]},
    {"id": "short", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {"id": "weight0", "messages": [
        {"role": "user", "content": "repeat seven"},
        {"role": "assistant", "content": "seven seven seven seven seven seven seven", "loss_weight": 0.0},
        {"role": "user", "content": "now once"}, {"role": "assistant", "content": "seven"}]},
    {"id": "medium", "messages": [
        {"role": "user", "content": "list the numbers from one to ten"},
        {"role": "assistant", "content": "one two three four five six seven eight nine ten " * 2},
        {"role": "user", "content": "backwards"},
        {"role": "assistant", "content": "ten nine eight seven six five four three two one", "loss_weight": 1.5}]},
]

# (mode, micro-batch size, layout kwargs); pad 4x1 is the reference.
LAYOUTS = [("pad", 4), ("pad", 2), ("pad", 1), ("padfree", 4), ("padfree", 2), ("pack", 1), ("pack", 2)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():  # break the init's symmetries a little so every parameter gets a distinct gradient
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def base_samples(tiny_tokenizer):
    recs = [dict(r, task_type="chat", source="test", meta={}) for r in RECORDS]
    samples, _ = render_records(recs, tiny_tokenizer, max_length=512)
    assert len(samples) == 4 and len({s["num_tokens"] for s in samples}) == 4
    return samples


def micro_batch_layout(samples: list[dict], mode: str, size: int, pad_id: int,
                       impl: str = "sdpa") -> list[tuple[list[int], dict]]:
    """The global batch laid out as micro-batches of `size` samples (pack: `4 // size` packed micro-batches),
    each with the indices of its samples in collate order."""
    if mode == "pack":
        max_len = max(s["num_tokens"] for s in samples) + 8
        plans = plan_packed_micro_batches(samples, max_len, n_micro=len(samples) // size)
        out = []
        for rows in plans:
            micro, local = packed_micro_batch(samples, rows)
            order = [i for row in rows for i in row]
            out.append((order, collate(micro, "pack", pad_id, attn_implementation=impl, rows=local)))
        return out
    return [(list(range(i, min(i + size, len(samples)))),
             collate(samples[i:i + size], mode, pad_id, attn_implementation=impl)) for i in range(0, len(samples), size)]


def micro_batches(samples: list[dict], mode: str, size: int, pad_id: int, impl: str = "sdpa") -> list[dict]:
    return [b for _, b in micro_batch_layout(samples, mode, size, pad_id, impl)]


def loss_and_grads(model, batches: list, denominator: float,
                   weights: np.ndarray | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one global batch; with `weights` (per sample), `batches` is a micro_batch_layout."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for item in batches:
        idx, b = item if weights is not None else (None, item)
        w = None if weights is None else torch.tensor(weights[idx], dtype=torch.float32)
        loss = micro_batch_loss(supervised_token_nll(model, b), b, denominator, w)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_every_layout_matches_after(install, tiny_model_dir, tokenizer, kernel: str) -> None:
    """The pad reference's loss and gradients on the plain model; then `install(model)` (an exact optimization,
    returning what it installed) and every layout under `kernel` must give them again at 1e-5."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    with torch.no_grad():  # norms initialised to 1 would hide a wrong weight gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    samples, _ = render_records([dict(r, task_type="chat", source="test", meta={}) for r in RECORDS], tokenizer,
                                max_length=512)
    attach_loss_coefficients(samples, "turn")
    denominator = sum(s["loss_denom"] for s in samples)
    pad_id = tokenizer.pad_token_id
    ref_loss, ref_grads = loss_and_grads(model, micro_batches(samples, "pad", 4, pad_id), denominator)

    assert install(model)
    register_attention_kernels()
    model.set_attn_implementation(kernel)
    for mode, size in [("pad", 4), ("pad", 1), ("padfree", 2), ("pack", 1), ("pack", 2)]:
        batches = micro_batches(samples, mode, size, pad_id, "sdpa" if mode == "pad" else kernel)
        loss, grads = loss_and_grads(model, batches, denominator)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (mode, size, loss, ref_loss)
        for name, g in grads.items():
            assert (g - ref_grads[name]).norm() <= 1e-5 * ref_grads[name].norm() + 1e-12, (mode, size, name)


def direct_loss(model, samples: list[dict], reduction: str, task_weights: list[float] | None = None) -> float:
    """The DESIGN §2 formulas computed the plain way: one HF forward per sample, loops over samples and turns.
    `task_weights` (one per sample) multiply the numerator only, the denominator is left as it is."""
    num = den = 0.0
    seq_means = []
    with torch.no_grad():
        for k, s in enumerate(samples):
            big_w = 1.0 if task_weights is None else task_weights[k]
            ids = torch.tensor([s["input_ids"]])
            logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), -1)
            ti = torch.tensor(s["turn_index"])
            tok_sum = tok_w = 0.0
            for t, w in enumerate(s["turn_weights"]):
                pos = torch.nonzero(ti == t).flatten()
                nll = -logp[pos - 1, ids[0, pos]]
                if reduction == "turn":
                    num, den = num + big_w * w * nll.mean().item(), den + w
                elif reduction == "token":
                    num, den = num + big_w * w * nll.sum().item(), den + w * len(pos)
                tok_sum, tok_w = tok_sum + w * nll.sum().item(), tok_w + w * len(pos)
            seq_means.append(big_w * tok_sum / tok_w)
    return sum(seq_means) / len(seq_means) if reduction == "sequence" else num / den


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_varlen"])  # dense block mask, per-sample spans (Σ len²)
@pytest.mark.parametrize("reduction", ["token", "turn", "sequence"])
def test_loss_and_gradients_equal_across_layouts(model, base_samples, tiny_tokenizer, reduction, kernel):
    samples = [dict(s) for s in base_samples]
    attach_loss_coefficients(samples, reduction)
    denominator = sum(s["loss_denom"] for s in samples)  # global: counted before any backward
    pad_id = tiny_tokenizer.pad_token_id
    ref_loss, ref_grads = loss_and_grads(model, micro_batches(samples, "pad", 4, pad_id), denominator)

    expected = direct_loss(model, samples, reduction)
    assert abs(ref_loss - expected) <= 1e-5 * abs(expected), (ref_loss, expected)

    register_attention_kernels()
    model.set_attn_implementation(kernel)
    try:
        for mode, size in LAYOUTS[1:]:
            batches = micro_batches(samples, mode, size, pad_id, "sdpa" if mode == "pad" else kernel)
            if kernel == "sdpa_varlen" and mode != "pad":  # no dense mask: the kernel works from the spans
                assert all(b["attention_mask"] is None and "cu_seq_lens_q" in b for b in batches)
            assert sum(b["tokens"] for b in batches) == sum(s["num_tokens"] for s in samples)
            loss, grads = loss_and_grads(model, batches, denominator)
            assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (mode, size, loss, ref_loss)
            for name, g in grads.items():
                ref = ref_grads[name]
                err = (g - ref).norm().item()
                assert err <= 1e-5 * ref.norm().item() + 1e-12, (mode, size, name, err, ref.norm().item())
    finally:
        model.set_attn_implementation("sdpa")


def _cuda_kernels() -> list:
    import importlib.util

    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    no_flash = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
    return [pytest.param("sdpa_varlen", marks=[pytest.mark.gpu, no_cuda]),
            pytest.param("flex_attention", marks=[pytest.mark.gpu, no_cuda]),
            pytest.param("flash_attention_2", marks=[pytest.mark.gpu, no_cuda, no_flash])]


@pytest.mark.parametrize("kernel", _cuda_kernels())
def test_cuda_kernels_match_the_cpu_pad_reference(model, base_samples, tiny_tokenizer, kernel):
    """The GPU kernels obey the contract: padfree / pack on CUDA give the fp32 CPU pad loss and gradients
    (flash attention computes in bf16, hence its looser tolerance)."""
    import copy

    samples = [dict(s) for s in base_samples]
    attach_loss_coefficients(samples, "turn")
    denominator = sum(s["loss_denom"] for s in samples)
    pad_id = tiny_tokenizer.pad_token_id
    ref_loss, ref_grads = loss_and_grads(model, micro_batches(samples, "pad", 4, pad_id), denominator)
    register_attention_kernels()
    gpu = copy.deepcopy(model).cuda()
    gpu.set_attn_implementation(kernel)
    half = kernel.startswith("flash")
    tol = 2e-2 if half else 1e-4
    for mode, size in (("padfree", 4), ("padfree", 2), ("pack", 2)):
        batches = [move_batch(b, torch.device("cuda")) for b in micro_batches(samples, mode, size, pad_id, kernel)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=half):
            loss, grads = loss_and_grads(gpu, batches, denominator)
        assert abs(loss - ref_loss) <= tol * abs(ref_loss), (kernel, mode, loss, ref_loss)
        for name, g in grads.items():
            ref = ref_grads[name]
            assert (g.cpu() - ref).norm() <= tol * ref.norm() + 1e-8, (kernel, mode, name)


def test_eager_pack_matches_sdpa_pad(tiny_model_dir, base_samples, tiny_tokenizer):
    """The additive-mask layout (eager) obeys the same contract."""
    from transformers import AutoModelForCausalLM

    samples = [dict(s) for s in base_samples]
    attach_loss_coefficients(samples, "turn")
    denominator = sum(s["loss_denom"] for s in samples)
    pad_id = tiny_tokenizer.pad_token_id
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager", dtype=torch.float32)
    ref_loss, ref_grads = loss_and_grads(eager, micro_batches(samples, "pad", 4, pad_id, "eager"), denominator)
    loss, grads = loss_and_grads(eager, micro_batches(samples, "pack", 2, pad_id, "eager"), denominator)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert all((grads[n] - g).norm() <= 1e-5 * g.norm() + 1e-12 for n, g in ref_grads.items())


# Task weights (train.task_weights): per-sample multipliers of the coefficients, denominator unchanged.
TASK_OF = ["math/add", "chat", "tool", "math"]  # one task per RECORDS entry
TASK_WEIGHTS = {"math": 2.0, "math/add": 3.0, "chat": 0.5, "tool": 0.0}  # most specific key wins


@pytest.mark.parametrize("reduction", ["token", "turn", "sequence"])
def test_weighted_loss_and_gradients_equal_across_layouts(model, base_samples, tiny_tokenizer, reduction):
    samples = [dict(s, task_type=t) for s, t in zip(base_samples, TASK_OF, strict=True)]
    attach_loss_coefficients(samples, reduction)
    weights = per_sample_values(TASK_OF, TASK_WEIGHTS, "task_weights")
    assert weights.tolist() == [3.0, 0.5, 0.0, 2.0]
    denominator = sum(s["loss_denom"] for s in samples)  # unchanged by the weights
    pad_id = tiny_tokenizer.pad_token_id
    ref_loss, ref_grads = loss_and_grads(model, micro_batch_layout(samples, "pad", 4, pad_id), denominator, weights)

    expected = direct_loss(model, samples, reduction, weights.tolist())  # Σ W_s c_i l_i / unchanged D
    assert abs(ref_loss - expected) <= 1e-5 * abs(expected), (ref_loss, expected)
    unweighted, plain_grads = loss_and_grads(model, micro_batches(samples, "pad", 4, pad_id), denominator)
    assert abs(unweighted - ref_loss) > 1e-3 * unweighted  # the weights change the objective

    for mode, size in LAYOUTS[1:]:
        loss, grads = loss_and_grads(model, micro_batch_layout(samples, mode, size, pad_id), denominator, weights)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (mode, size, loss, ref_loss)
        for name, g in grads.items():
            ref = ref_grads[name]
            err = (g - ref).norm().item()
            assert err <= 1e-5 * ref.norm().item() + 1e-12, (mode, size, name, err, ref.norm().item())
    flat = torch.cat([g.flatten() for g in ref_grads.values()])
    plain = torch.cat([g.flatten() for g in plain_grads.values()])
    assert (flat - plain).norm() > 1e-3 * flat.norm()


@pytest.mark.parametrize("mode", ["pad", "padfree", "pack"])
def test_weight_zero_task_contributes_exactly_zero_gradient(model, base_samples, tiny_tokenizer, mode):
    samples = [dict(s, task_type=t) for s, t in zip(base_samples, TASK_OF, strict=True)]
    attach_loss_coefficients(samples, "turn")
    weights = per_sample_values(TASK_OF, TASK_WEIGHTS, "task_weights")
    zero = [i for i, w in enumerate(weights) if w == 0]
    denominator = sum(s["loss_denom"] for s in samples)
    pad_id = tiny_tokenizer.pad_token_id
    # the weight-0 task's samples alone: every gradient entry is exactly 0, while their loss is not 0
    only = [samples[i] for i in zero]
    loss, grads = loss_and_grads(model, micro_batch_layout(only, mode, 1, pad_id), denominator, weights[zero])
    assert loss == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads.values())
    with torch.no_grad():
        nll = supervised_token_nll(model, collate(only, mode, pad_id, attn_implementation="sdpa", max_len=512))
    assert float(nll.sum()) > 0  # the channel loss still has something to report
    # and the whole batch equals the batch without them (same, unchanged denominator)
    _, with_zero = loss_and_grads(model, micro_batch_layout(samples, mode, 2, pad_id), denominator, weights)
    rest = [i for i in range(len(samples)) if i not in zero]
    _, without = loss_and_grads(model, micro_batch_layout([samples[i] for i in rest], mode, 1, pad_id),
                                denominator, weights[rest])
    for name, g in with_zero.items():
        assert (g - without[name]).norm() <= 1e-5 * g.norm() + 1e-12, name
