"""Padding-free and packed batching: attention isolation, position ids, best-fit-decreasing packing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sftlab.data.render import render_records
from sftlab.errors import UserError
from sftlab.train.attention import check_attention_isolation
from sftlab.train.batching import (
    collate,
    collate_rows,
    pack_samples,
    packed_micro_batch,
    plan_packed_micro_batches,
    verify_isolation,
)
from sftlab.train.loss import attach_loss_coefficients

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "sorted", "seven", "numbers", "then", "counted", "blue",
         "words", "twice"]


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Multi-turn chats of very different lengths, with loss_weight variety (0 included)."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        msgs = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        for t in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))})
            msg = {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.choice([1, 3, 8, 40])))}
            if t == 1:
                msg["loss_weight"] = rng.choice([0.0, 0.5, 2.0])
            msgs.append(msg)
        recs.append({"id": f"r{i}", "messages": msgs, "task_type": "chat", "source": "test", "meta": {}})
    return recs


@pytest.fixture(scope="module")
def samples(tiny_tokenizer) -> list[dict]:
    out, _ = render_records(make_records(9), tiny_tokenizer, max_length=512)
    attach_loss_coefficients(out, "turn")
    return out


def _model(tiny_model_dir, impl: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl,
                                                dtype=torch.float32).eval()


def _spans(samples: list[dict], rows: list[list[int]]) -> dict[int, tuple[int, int]]:
    """(row, start column) of each sample in a row layout."""
    out = {}
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            out[i] = (r, col)
            col += samples[i]["num_tokens"]
    return out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["padfree", "pack"])
def test_each_sample_in_a_shared_row_has_its_solo_logits(tiny_model_dir, samples, impl, mode):
    model = _model(tiny_model_dir, impl)
    assert check_attention_isolation(impl, mode, "cpu") in ("bool_mask", "float_mask")
    rows = [list(range(len(samples)))] if mode == "padfree" else pack_samples(samples, 160)
    if mode == "pack":
        assert len(rows) > 1 and any(len(r) > 1 for r in rows)
    batch = collate(samples, mode, 0, attn_implementation=impl, rows=rows if mode == "pack" else None)
    assert batch["attention_mask"].shape == (len(rows), 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    with torch.no_grad():
        shared = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"], use_cache=False).logits
        for i, (r, c) in _spans(samples, rows).items():
            ids = torch.tensor([samples[i]["input_ids"]])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            got = shared[r, c:c + samples[i]["num_tokens"]]
            assert (got - alone).abs().max().item() <= 1e-5, (i, (got - alone).abs().max().item())


def test_without_block_mask_samples_leak(tiny_model_dir, samples):
    """Why the explicit masks: position ids alone (with a KV cache, transformers skips its packed-sequence
    detection) or a boolean mask under eager (added to the scores as 0/1) let attention cross samples."""
    sdpa, eager = _model(tiny_model_dir, "sdpa"), _model(tiny_model_dir, "eager")
    batch = collate(samples[:3], "padfree", 0, attn_implementation="sdpa")
    n0 = samples[0]["num_tokens"]
    with torch.no_grad():
        alone = sdpa(input_ids=torch.tensor([samples[1]["input_ids"]]), use_cache=False).logits[0]
        pos_only = sdpa(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
        bool_eager = eager(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           attention_mask=batch["attention_mask"], use_cache=False).logits
    for leaked in (pos_only, bool_eager):
        assert (leaked[0, n0:n0 + len(alone)] - alone).abs().max().item() > 1e-2


def test_verify_isolation_passes_with_masks_and_catches_a_leak(tiny_model_dir):
    for impl, layout in (("sdpa", "bool_mask"), ("eager", "float_mask")):
        assert verify_isolation(_model(tiny_model_dir, impl), layout) < 1e-6
    with pytest.raises(UserError, match="leaks across packed samples"):
        verify_isolation(_model(tiny_model_dir, "eager"), "bool_mask")  # eager adds a bool mask: leak


def test_backends_that_cannot_isolate_are_refused():
    assert check_attention_isolation("eager", "pad", "cpu") is None  # pad needs no isolation
    with pytest.raises(UserError, match="'xformers_like'.*sdpa"):
        check_attention_isolation("xformers_like", "padfree", "cpu")
    with pytest.raises(UserError, match="flex_attention.*CUDA"):
        check_attention_isolation("flex_attention", "pack", "cpu")
    with pytest.raises(UserError, match="flash_attention_2.*CUDA"):
        check_attention_isolation("flash_attention_2", "padfree", "cpu")
    one = [{"input_ids": [1, 2], "labels": [-100, 2], "loss_coef": [0, 1], "num_tokens": 2}]
    with pytest.raises(UserError):
        collate(one, "padfree", 0, attn_implementation="xformers_like")
    with pytest.raises(ValueError, match="needs attn_implementation"):  # no default: a wrong mask leaks silently
        collate(one, "pack", 0, max_len=8)


def test_padfree_positions_restart_and_targets_match_pad(samples):
    pad = collate(samples, "pad", 0)
    free = collate(samples, "padfree", 0, attn_implementation="sdpa")
    lens = [s["num_tokens"] for s in samples]
    assert free["input_ids"].shape == (1, sum(lens)) and free["padded_tokens"] == free["tokens"] == sum(lens)
    expect = np.concatenate([np.arange(n) for n in lens])
    assert np.array_equal(free["position_ids"][0].numpy(), expect)
    assert np.array_equal(free["input_ids"][0].numpy(), np.concatenate([s["input_ids"] for s in samples]))
    # Same supervised tokens, coefficients and owners as pad (both in row-major order, sample by sample).
    for key in ("targets", "target_coef", "target_sample"):
        assert torch.equal(pad[key], free[key]), key
    # The sample boundary is never a target, even if a sample's first token were labelled.
    first = dict(samples[1], labels=[samples[1]["input_ids"][0]] + list(samples[1]["labels"][1:]))
    b = collate([samples[0], first], "padfree", 0, attn_implementation="sdpa")
    assert samples[0]["num_tokens"] - 1 not in b["target_pos"][1].tolist()


def test_varlen_and_doc_id_layouts_use_positions_only(samples):
    rows = pack_samples(samples, 160)
    flat = collate_rows(samples, rows, 0, layout="varlen")
    assert flat["attention_mask"] is None and flat["input_ids"].shape[0] == 1  # flash varlen: one row
    doc = collate_rows(samples, rows, 0, layout="doc_ids", pad_to_multiple_of=64)
    assert doc["attention_mask"] is None and doc["input_ids"].shape[0] == len(rows)
    pos = doc["position_ids"]
    # Every sample and every padding tail starts at position 0, so boundaries are visible from position ids.
    starts = (pos[:, 1:] != pos[:, :-1] + 1).sum().item() + len(rows)
    padded_rows = (doc["input_ids"].shape[1] > torch.tensor([sum(samples[i]["num_tokens"] for i in r)
                                                              for r in rows])).sum().item()
    assert starts == len(samples) + padded_rows


def test_pack_rows_and_targets(samples):
    rows = pack_samples(samples, 200)
    batch = collate(samples, "pack", 7, attn_implementation="sdpa", rows=rows)
    lens = np.array([s["num_tokens"] for s in samples])
    assert batch["input_ids"].shape == (len(rows), max(lens[r].sum() for r in rows))
    assert batch["tokens"] == lens.sum() and (batch["input_ids"] == 7).sum() == batch["padded_tokens"] - lens.sum()
    # Each sample's supervised targets and coefficients are carried over unchanged.
    pad = collate(samples, "pad", 0)
    for i in range(len(samples)):
        a, b = pad["target_sample"] == i, batch["target_sample"] == i
        assert torch.equal(pad["targets"][a], batch["targets"][b])
        assert torch.equal(pad["target_coef"][a], batch["target_coef"][b])


def test_bfd_respects_max_len_loses_nothing_and_is_deterministic():
    rng = np.random.default_rng(0)
    lens = np.concatenate([rng.integers(1, 60, 500), rng.integers(200, 1024, 40)]).tolist()
    rows = pack_samples(lens, 1024)
    assert sorted(i for r in rows for i in r) == list(range(len(lens)))
    assert all(sum(lens[i] for i in r) <= 1024 for r in rows)
    assert rows == pack_samples(lens, 1024) == pack_samples(list(lens), 1024)
    lower = -(-sum(lens) // 1024)
    assert len(rows) <= lower + 1  # many small items: BFD is near the bound
    # Best fit: 5 goes into the row with 6 free (not the one with 10 free); oversize items get their own row.
    assert pack_samples([10, 14, 5, 30], 20) == [[3], [1, 2], [0]]
    assert pack_samples([8, 8, 8], 10) == [[0], [1], [2]]


def test_bfd_is_fast_for_a_big_batch():
    import time

    lens = np.random.default_rng(1).integers(1, 2048, 100_000).tolist()
    t = time.perf_counter()
    rows = pack_samples(lens, 4096)
    assert time.perf_counter() - t < 5.0
    assert sum(len(r) for r in rows) == len(lens)


def test_plan_packed_micro_batches_covers_the_global_batch_and_balances(samples):
    lens = [s["num_tokens"] for s in samples]
    for n_micro in (1, 2, 4, len(samples)):
        plan = plan_packed_micro_batches(samples, 320, n_micro)
        assert len(plan) == n_micro and all(plan)
        assert sorted(i for rows in plan for r in rows for i in r) == list(range(len(samples)))
        assert all(sum(lens[i] for i in r) <= 320 for rows in plan for r in rows)
    big = np.random.default_rng(2).integers(1, 300, 400)
    plan = plan_packed_micro_batches(big.tolist(), 512, 8)
    loads = [sum(int(big[r].sum()) for r in rows) for rows in plan]
    assert max(loads) - min(loads) <= 512  # largest-first to the lightest: spread below one row
    assert sorted(plan_packed_micro_batches([5, 5, 5], 100, 3)) == [[[0]], [[1]], [[2]]]  # rows split when too few
    micro, local = packed_micro_batch(samples, plan_packed_micro_batches(samples, 320, 2)[1])
    assert sorted(i for r in local for i in r) == list(range(len(micro)))
    b = collate(micro, "pack", 0, attn_implementation="eager", rows=local)
    assert b["attention_mask"].dtype == torch.float32
    assert b["target_sample"].max().item() < len(micro)
    with pytest.raises(ValueError):
        plan_packed_micro_batches(samples[:2], 200, 3)
