"""The loss contract (docs/DESIGN.md §2) as property tests through the loop's own micro-batch code:
same samples in a global batch -> same gradient and logged loss, whatever the micro-batch size,
accumulation steps and ranks; and `turn` equals a direct per-turn computation written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sftlab.config import build_config
from sftlab.data.render import render_records
from sftlab.train import parallel
from sftlab.train.balance import per_sample_values
from sftlab.train.loop import DataSet, run_micro_batches, split_global_batch
from sftlab.train.loss import SupervisedTokenNLL, attach_loss_coefficients

TASKS = ["math/add", "text/copy", "chat"]


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    recs = []
    for i in range(8):
        msgs = []
        for t in range(1 + i % 3):  # 1-3 turns, very different answer lengths
            msgs.append({"role": "user", "content": " ".join(rng.choice(words, 2 + i))})
            m = {"role": "assistant", "content": " ".join(rng.choice(words, 1 + (i * 7 + t * 5) % 13))}
            if t == 1:
                m["loss_weight"] = 0.5
            msgs.append(m)
        recs.append({"id": f"s{i}", "messages": msgs, "task_type": TASKS[i % 3], "source": "t", "meta": {}})
    return recs


def _dataset(tokenizer, reduction: str) -> DataSet:
    samples, _ = render_records(_records(), tokenizer, max_length=256)
    attach_loss_coefficients(samples, reduction)
    channels = sorted({s["task_type"] for s in samples})
    matrix = torch.tensor([[float(s["task_type"] == c) for c in channels] for s in samples], dtype=torch.float64)
    return DataSet(samples, channels, matrix, np.array([s["loss_denom"] for s in samples]),
                   np.array([s["num_tokens"] for s in samples]))


def _cfg(tmp_path, model_dir, reduction: str, batching: str = "pad"):
    return build_config({"model": {"name_or_path": str(model_dir)},
                         "data": {"train": ["x.jsonl"], "batching": batching, "max_length": 256},
                         "train": {"output_dir": str(tmp_path), "loss": reduction}})


def _step_grads(engine, data, cfg, world: int, accum: int, pad_id: int, weighted: bool = False):
    """Gradient and logged loss of one optimizer step, simulating `world` ranks in one process
    (each rank's gradient is computed separately, then averaged as DDP would)."""
    idx = np.arange(len(data.samples))
    denom = float(data.denoms[idx].sum())
    lengths = data.lengths if cfg.data.batching == "pack" else None
    eot = torch.tensor([0])
    total_sums = total_weighted = None
    grads = None
    for rank in range(world):
        engine.zero_grad(set_to_none=True)
        info = parallel.DistInfo(rank=rank, world_size=world)
        stats = run_micro_batches(engine, data, split_global_batch(idx, world, accum, rank, lengths, 96), denom, cfg, info,
                                  pad_id, eot, train=True)
        g = [p.grad.detach().clone() for p in engine.parameters()]
        grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
        total_sums = stats.sums if total_sums is None else total_sums + stats.sums
        total_weighted = stats.weighted if total_weighted is None else total_weighted + stats.weighted
    grads = [g / world for g in grads]
    out = torch.cat([g.flatten() for g in grads]), float(total_sums[0]) / denom, total_sums
    return (*out, total_weighted) if weighted else out


@pytest.mark.parametrize("reduction", ["token", "turn", "sequence"])
def test_gradient_and_loss_invariant_to_layout(reduction, tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine = SupervisedTokenNLL(model)
    data = _dataset(tiny_tokenizer, reduction)
    cfg = _cfg(tmp_path, tiny_model_dir, reduction)
    pad = tiny_tokenizer.pad_token_id
    # 8 samples: micro 8 x accum 1, micro 1 x accum 8, micro 2 x accum 4, and 2 ranks x accum 2 (micro 2)
    ref_g, ref_loss, ref_sums = _step_grads(engine, data, cfg, 1, 1, pad)
    assert ref_loss > 0 and torch.linalg.norm(ref_g) > 0
    for world, accum in [(1, 8), (1, 4), (2, 2), (4, 1)]:
        g, loss, sums = _step_grads(engine, data, cfg, world, accum, pad)
        rel = float(torch.linalg.norm(g - ref_g) / torch.linalg.norm(ref_g))
        assert rel <= 1e-5, (reduction, world, accum, rel)
        assert abs(loss - ref_loss) / ref_loss <= 1e-5
        # channel numerators are layout-invariant too
        assert torch.allclose(sums[1:1 + len(data.channels)], ref_sums[1:1 + len(data.channels)], rtol=1e-5)
    # padfree and pack (rows of <= 96 tokens, dealt to micro-batches) through the same loop code
    for batching, world, accum in [("padfree", 1, 1), ("padfree", 2, 2), ("pack", 1, 1), ("pack", 2, 2),
                                   ("pack", 1, 4)]:
        g, loss, sums = _step_grads(engine, data, _cfg(tmp_path, tiny_model_dir, reduction, batching), world,
                                    accum, pad)
        rel = float(torch.linalg.norm(g - ref_g) / torch.linalg.norm(ref_g))
        assert rel <= 1e-5, (reduction, batching, world, accum, rel)
        assert abs(loss - ref_loss) / ref_loss <= 1e-5
        assert torch.allclose(sums[1:1 + len(data.channels)], ref_sums[1:1 + len(data.channels)], rtol=1e-5)


def _direct_turn_loss(model, samples, weight_of) -> torch.Tensor:
    """Independent reference: per sample forward, per turn mean NLL, weighted mean over all turns."""
    num, den = torch.zeros(()), torch.zeros(())
    for s in samples:
        ids = torch.tensor([s["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        for t, w in enumerate(s["turn_weights"]):
            pos = [p for p, ti in enumerate(s["turn_index"]) if ti == t]
            nll = torch.stack([-logp[p - 1, s["input_ids"][p]] for p in pos])
            num = num + w * nll.mean()
            den = den + w
    return num / den


def test_turn_loss_matches_direct_computation(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    data = _dataset(tiny_tokenizer, "turn")
    cfg = _cfg(tmp_path, tiny_model_dir, "turn")
    _, loss, _ = _step_grads(SupervisedTokenNLL(model), data, cfg, 1, 2, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        ref = float(_direct_turn_loss(model, data.samples, None))
    assert abs(loss - ref) / ref <= 1e-5
    # and the weights matter: a turn with loss_weight 0.5 exists, so token and turn reductions differ
    data_tok = _dataset(tiny_tokenizer, "token")
    _, loss_tok, _ = _step_grads(SupervisedTokenNLL(model), data_tok, _cfg(tmp_path, tiny_model_dir, "token"), 1, 1,
                                 tiny_tokenizer.pad_token_id)
    assert abs(loss_tok - loss) > 1e-4


def test_channel_losses_recombine_into_total(tiny_model_dir, tiny_tokenizer, tmp_path):
    """Σ_ch numerator / Σ_ch denominator == total (channels partition the samples here)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for reduction in ("token", "turn"):
        data = _dataset(tiny_tokenizer, reduction)
        _, loss, sums = _step_grads(SupervisedTokenNLL(model), data, _cfg(tmp_path, tiny_model_dir, reduction), 1, 4,
                                    tiny_tokenizer.pad_token_id)
        ch_den = data.channel_matrix.T @ torch.as_tensor(data.denoms)
        ch_loss = sums[1:1 + len(data.channels)] / ch_den
        recombined = float((ch_loss * ch_den).sum() / ch_den.sum())
        assert abs(recombined - loss) <= 1e-6 * max(1.0, loss)
        assert len({round(float(x), 4) for x in ch_loss}) == len(data.channels)  # channels really differ


@pytest.mark.parametrize("reduction", ["token", "turn"])
def test_task_weights_through_the_loop(reduction, tiny_model_dir, tiny_tokenizer, tmp_path):
    """With task weights: gradient and weighted loss invariant across micro-batch x accumulation x ranks x
    pad/padfree/pack; the weighted loss is Σ_ch W_ch numerator_ch / unchanged D; a weight-0 task gives no
    gradient at all, and its channel loss is still there."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine = SupervisedTokenNLL(model)
    data = _dataset(tiny_tokenizer, reduction)
    task_weights = {"math": 2.5, "chat": 0.0}  # 'math' covers 'math/add'; text/copy keeps 1
    data.weights = per_sample_values([s["task_type"] for s in data.samples], task_weights, "task_weights")
    pad = tiny_tokenizer.pad_token_id
    cfg = _cfg(tmp_path, tiny_model_dir, reduction)
    ref_g, _, ref_sums, ref_w = _step_grads(engine, data, cfg, 1, 1, pad, weighted=True)
    denom = float(data.denoms.sum())
    by_channel = dict(zip(data.channels, ref_sums[1:1 + len(data.channels)].tolist(), strict=True))
    assert by_channel["chat"] > 0  # the weight-0 channel's loss is still measured
    expected = (2.5 * by_channel["math/add"] + by_channel["text/copy"]) / denom
    assert abs(float(ref_w[0]) / denom - expected) <= 1e-6 * expected
    assert float(ref_w[1 + data.channels.index("chat")]) == 0.0
    for batching, world, accum in [("pad", 1, 8), ("pad", 2, 2), ("padfree", 4, 1), ("pack", 2, 2)]:
        g, _, sums, w = _step_grads(engine, data, _cfg(tmp_path, tiny_model_dir, reduction, batching), world, accum,
                                    pad, weighted=True)
        assert float(torch.linalg.norm(g - ref_g) / torch.linalg.norm(ref_g)) <= 1e-5, (batching, world, accum)
        assert torch.allclose(w, ref_w, rtol=1e-5) and torch.allclose(sums, ref_sums, rtol=1e-5)

    # weight 0 for the chat samples == those samples contributing nothing (same denominator)
    keep = [i for i, s in enumerate(data.samples) if s["task_type"] != "chat"]
    engine.zero_grad(set_to_none=True)
    info = parallel.DistInfo(rank=0, world_size=1)
    run_micro_batches(engine, data, [(np.array(keep), None)], denom, cfg, info, pad, torch.tensor([0]), train=True)
    g_keep = torch.cat([p.grad.flatten() for p in engine.parameters()])
    assert float(torch.linalg.norm(g_keep - ref_g) / torch.linalg.norm(ref_g)) <= 1e-5
    chat = [i for i, s in enumerate(data.samples) if s["task_type"] == "chat"]
    engine.zero_grad(set_to_none=True)
    run_micro_batches(engine, data, [(np.array(chat), None)], denom, cfg, info, pad, torch.tensor([0]), train=True)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in engine.parameters())
