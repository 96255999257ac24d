"""The estimator against measurement: parameter bytes equal the instantiated model's, activations match the
bytes autograd saves for backward (saved_tensors_hooks, deduplicated by storage)."""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, replace
from unittest import mock

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from sftlab.config import FsdpConfig, LoraConfig, ModelConfig
from sftlab.train.attention import register_attention_kernels
from sftlab.train.batching import collate
from sftlab.train.estimate import (
    GIB,
    RunShape,
    attention_mask_kind,
    estimate_activations,
    estimate_loss_head,
    estimate_memory,
    flops_per_token,
    matmul_params,
    mfu,
    parameter_bytes,
    peak_flops,
)
from sftlab.train.loss import supervised_token_nll
from sftlab.train.model import meta_model_from_config

SHAPES = {
    "tiny": LlamaConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=128),
    "512x8": LlamaConfig(vocab_size=4096, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=1376),
    "qwen2-gqa": Qwen2Config(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, intermediate_size=704),
}


# what the training forward hands the decoder (sftlab/train/loss.py): ids, positions, the mask, varlen boundaries
DECODER_INPUTS = ("input_ids", "position_ids", "attention_mask", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                  "max_length_k")


def saved_bytes(model, batch: dict, decoder_only: bool) -> int:
    """Bytes saved for backward during one forward, each storage once (its StorageImpl, so views and fake tensors
    count right), parameters excluded."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if decoder_only:
            model.get_decoder()(**{k: batch[k] for k in DECODER_INPUTS if batch.get(k) is not None}, use_cache=False)
        else:
            supervised_token_nll(model, batch)
    return sum(seen.values())


def fixed_length_batch(b: int, s: int, vocab: int, mode: str, attn: str) -> dict:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(b):
        ids = rng.integers(0, vocab, s)
        samples.append({"input_ids": ids, "labels": ids.copy(), "loss_coef": np.ones(s), "num_tokens": s})
    return collate(samples, mode, 0, attn_implementation=attn, max_len=s * b)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # a config copy per model: from_config records the attention backend on the config object it is given
    return {(name, attn): AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=attn).train()
            for name, cfg in SHAPES.items() for attn in ("sdpa", "eager")}


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_match_saved_tensors(models, name, attn, checkpointing):
    cfg, model = SHAPES[name], models[(name, attn)]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        # 512x8 is the slow one on CPU: fewer tokens (the formulas are per token, the shape is what matters)
        cases = [(1, 12, "pad"), (2, 16, "pad"), (2, 8, "padfree")] if name == "512x8" else \
            [(1, 24, "pad"), (3, 32, "pad"), (2, 16, "padfree")]
        for b, s, mode in cases:
            batch = fixed_length_batch(b, s, cfg.vocab_size, mode, attn)
            est = estimate_activations(cfg, b, s, checkpointing, attn, batching=mode)
            if b == 1:  # the decoder alone (embedding to final norm)
                measured = saved_bytes(model, batch, decoder_only=True)
                assert abs(est / measured - 1) <= 0.15, (name, attn, checkpointing, b, s, mode, est, measured)
            # with sftlab's loss head: supervised-only logits of every next token
            measured_all = saved_bytes(model, batch, decoder_only=False)
            head = estimate_loss_head(cfg, int(batch["targets"].numel()), fused=False)["saved"]
            assert abs((est + head) / measured_all - 1) <= 0.15, (name, attn, checkpointing, b, s, mode)
    finally:
        model.gradient_checkpointing_disable()


def test_activations_bf16_autocast_within_15_percent(models):
    """Under bf16 autocast the saved tensors also hold the half weight copies autocast keeps (a separate term)."""
    cfg, model = SHAPES["qwen2-gqa"], models[("qwen2-gqa", "sdpa")]
    batch = fixed_length_batch(4, 96, cfg.vocab_size, "pad", "sdpa")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = saved_bytes(model, batch, decoder_only=True)
    copies = (matmul_params(cfg) - cfg.vocab_size * cfg.hidden_size) * 2
    est = estimate_activations(cfg, 4, 96, False, "sdpa", dtype="bf16") + copies
    assert abs(est / measured - 1) <= 0.15


# ------------------------------------------------- activations: every attention kernel over a grid of shapes
#
# What each kernel keeps for backward (estimate.attention_saves) is checked against the saved-tensor measurement on
# the paths that run here: sdpa's CPU flash kernel with and without a mask, its math kernel (attention dropout),
# sftlab's per-sample sdpa_varlen, eager, flex (below) and gradient checkpointing, in fp32 and bf16 autocast, with
# and without grouped-query heads. Large shapes are measured under FakeTensorMode: the same forward, the same
# kernel choices and saved tensors, no memory (test_fake_measurement_is_the_real_one holds it to the real one).


@dataclass(frozen=True)
class KernelPath:
    """One way a micro-batch reaches attention: backend, batching, padding, precision, dropout, checkpointing."""

    attn: str
    batching: str
    padded: bool = False
    dtype: str = "fp32"
    dropout: float = 0.0
    checkpointing: bool = False


PATHS = {
    "sdpa": KernelPath("sdpa", "pad"),  # CPU flash, no mask (is_causal)
    "sdpa padded": KernelPath("sdpa", "pad", padded=True),  # CPU flash + its copy of the mask
    "sdpa padfree": KernelPath("sdpa", "padfree"),  # the dense block mask of a whole row
    "sdpa_varlen": KernelPath("sdpa_varlen", "padfree"),  # one flash call per sample, outputs concatenated
    "sdpa_varlen pack": KernelPath("sdpa_varlen", "pack"),
    "eager": KernelPath("eager", "pad", padded=True),
    "eager padfree": KernelPath("eager", "padfree"),
    "math": KernelPath("sdpa", "pad", padded=True, dropout=0.1),  # CPU sdpa with dropout runs the math kernel
    "math padfree": KernelPath("sdpa", "padfree", dropout=0.1),
    "checkpointing": KernelPath("sdpa_varlen", "padfree", checkpointing=True),
}
PATHS.update({f"{name} bf16": replace(p, dtype="bf16") for name, p in list(PATHS.items())})


def llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, dropout: float = 0.0) -> LlamaConfig:
    return LlamaConfig(vocab_size=512, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, intermediate_size=intermediate, attention_dropout=dropout)


def padded_only_if_it_can(path: KernelPath, batch: int) -> KernelPath:
    """A micro-batch of one sample has no padding (estimate_run sees the same: its lengths do not differ)."""
    return replace(path, padded=path.padded and batch > 1)


def path_batch(cfg, batch: int, length: int, path: KernelPath) -> dict:
    """The micro-batch the estimate describes: `batch` samples of `length` (padded: the others shorter); pack:
    `batch` rows of `length`, two samples each."""
    rng = np.random.default_rng(0)
    if path.batching == "pack":
        lengths = [length // 2, length - length // 2] * batch
    else:
        lengths = [length - (7 * i if path.padded else 0) for i in range(batch)]
    samples = [{"input_ids": rng.integers(0, cfg.vocab_size, n), "labels": rng.integers(0, cfg.vocab_size, n),
                "loss_coef": np.ones(n), "num_tokens": n} for n in lengths]
    return collate(samples, path.batching, 0, attn_implementation=path.attn, max_len=length)


def measure_path(cfg, batch: int, length: int, path: KernelPath, fake: bool) -> int:
    """Bytes the decoder saves for backward on this path (real tensors, or fake ones: no memory used).

    transformers reads two things from the data (a row of several samples? a mask of all ones?) and, on fake
    tensors, assumes the worst; both are decided here on the real batch, as a real forward decides them."""
    from transformers import masking_utils

    register_attention_kernels()
    path = padded_only_if_it_can(path, batch)
    cfg = copy.deepcopy(cfg)
    cfg.attention_dropout = path.dropout
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=path.attn).train()
    if path.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # the 4-D block mask of a long row is large: built under the fake mode; everything else from the real arrays
    block_mask = path.batching != "pad" and attention_mask_kind(path.attn, path.batching, path.padded)
    with mode if fake and block_mask else contextlib.nullcontext():
        batch_tensors = path_batch(cfg, batch, length, path)
    mask = batch_tensors.get("attention_mask")
    if mask is not None and mask.dim() == 2 and bool(mask.all()):
        batch_tensors["attention_mask"] = None  # unpadded: transformers drops it and sdpa runs causal
    with contextlib.ExitStack() as stack:
        if fake:
            pos = batch_tensors["position_ids"]
            packed = None if is_fake(pos) else masking_utils.find_packed_sequence_indices(pos)
            stack.enter_context(mock.patch.object(masking_utils, "find_packed_sequence_indices",
                                                  lambda _: None if packed is None else mode.from_tensor(packed)))
            stack.enter_context(mode)
            batch_tensors = {k: mode.from_tensor(v) if k in ("input_ids", "position_ids", "attention_mask")
                             and isinstance(v, torch.Tensor) and not is_fake(v) else v
                             for k, v in batch_tensors.items()}
        if path.dtype == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return saved_bytes(model, batch_tensors, decoder_only=True)


def is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


def estimate_path(cfg, batch: int, length: int, path: KernelPath, device_type: str = "cpu") -> int:
    """The estimator's activations for the path, plus what autocast adds to the measured set: the half copy of
    every decoder weight (the estimate's autocast term), except under checkpointing (recomputed in backward)."""
    path = padded_only_if_it_can(path, batch)
    cfg = copy.deepcopy(cfg)
    cfg.attention_dropout = path.dropout
    est = estimate_activations(cfg, batch, length, path.checkpointing, path.attn, batching=path.batching,
                               dtype=path.dtype, padded=path.padded, device_type=device_type)
    if path.dtype == "bf16" and not path.checkpointing:
        est += (matmul_params(cfg) - cfg.vocab_size * cfg.hidden_size) * 2
    return est


# issue 35: Llama 256 x 4 (4 heads, MLP 688) at 2 x 256 and 4 x 512, and 512 x 6 at 4 x 512 (+33 % / +15 %
# reported), and a grouped-query shape beside them
ISSUE_SHAPES = [(llama(256, 4, 4, 4, 688), 2, 256), (llama(256, 4, 4, 4, 688), 4, 512),
                (llama(512, 6, 8, 8, 1376), 4, 512), (llama(256, 4, 8, 2, 688), 4, 512)]


@pytest.mark.parametrize("name", list(PATHS))
def test_fake_measurement_is_the_real_one(name):
    """The fake-tensor measurement (used for the grid's large shapes) saves exactly what a real forward saves."""
    path = PATHS[name]
    cfg = llama(128, 2, 4, 2, 344)
    assert measure_path(cfg, 3, 40, path, fake=True) == measure_path(cfg, 3, 40, path, fake=False)


@pytest.mark.parametrize("name", list(PATHS))
def test_activation_estimate_per_kernel_issue_shapes(name):
    """Issue 35's shapes on every path: within 10 % of the saved tensors (most paths exactly)."""
    path = PATHS[name]
    for cfg, batch, length in ISSUE_SHAPES:
        measured = measure_path(cfg, batch, length, path, fake=True)
        est = estimate_path(cfg, batch, length, path)
        assert abs(est / measured - 1) <= 0.10, (name, cfg.hidden_size, batch, length, est, measured)


def test_activation_estimate_issue_shape_measured_for_real():
    """The issue's 256 x 4 shape at 4 x 512 as CPU training runs it (sdpa_varlen, fused norms and rotary), with
    real tensors: the estimate that read +33 % is exact."""
    from transformers.models.llama import modeling_llama

    from sftlab.train.fused_ops import install_fused_ops

    cfg, batch, length = ISSUE_SHAPES[1]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa_varlen").train()
    with mock.patch.object(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb):
        assert install_fused_ops(model)
        measured = saved_bytes(model, path_batch(cfg, batch, length, PATHS["sdpa_varlen"]), decoder_only=True)
    est = estimate_activations(cfg, batch, length, False, "sdpa_varlen", batching="padfree", fused_ops=True)
    assert abs(est / measured - 1) <= 0.01, (est, measured)


# hidden x layers (heads of 64), micro-batch x length, grouped-query or not: issue 35's grid
GRID_MODELS = [(128, 2), (128, 8), (256, 4), (512, 6), (1024, 2), (1024, 8)]
GRID_BATCHES = [(1, 128), (1, 2048), (2, 1024), (4, 512), (8, 128), (8, 2048)]


def grid_errors() -> list[tuple[float, str]]:
    """(relative error, case) over the whole grid: every path of PATHS on every shape."""
    out = []
    for hidden, layers in GRID_MODELS:
        heads = hidden // 64
        for kv_heads in sorted({heads, max(heads // 4, 1)}):
            cfg = llama(hidden, layers, heads, kv_heads, (hidden * 8 // 3 + 63) // 64 * 64)
            for batch, length in GRID_BATCHES:
                for name, path in PATHS.items():
                    measured = measure_path(cfg, batch, length, path, fake=True)
                    err = estimate_path(cfg, batch, length, path) / measured - 1
                    out.append((err, f"{name}: hidden {hidden} x {layers} layers, {heads}/{kv_heads} heads, "
                                     f"{batch} x {length}"))
    return out


@pytest.mark.slow
def test_activation_estimate_over_the_grid():
    """Issue 35's grid (hidden 128-1024, layers 2-8, batch 1-8, length 128-2048, GQA and not) on every path:
    worst error <= 10 %. `pytest -m slow tests/test_estimate.py -k grid -s` prints the worst cases."""
    errors = sorted(grid_errors(), key=lambda x: -abs(x[0]))
    print(f"\n{len(errors)} cases; worst errors:")
    for err, case in errors[:8]:
        print(f"  {err:+.2%}  {case}")
    assert abs(errors[0][0]) <= 0.10, errors[0]


def test_flex_attention_saves_what_the_estimate_says(monkeypatch):
    """flex keeps q, k, v (its own heads only when the head count is a power of two: transformers repeats them
    otherwise), the output and the log-sum-exp. Measured here with real tensors on flex's uncompiled CPU forward:
    torch refuses it under autograd only because flex has no CPU backward (training runs it on CUDA)."""
    import torch.nn.attention.flex_attention as flex
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(flex, "_validate_device", lambda *a, **k: None)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex.flex_attention(q, k, v, **kw))
    path = KernelPath("flex_attention", "padfree")  # the document mask, built (and compiled) once for both
    for heads, kv_heads in [(4, 2), (6, 2)]:
        cfg = llama(32 * heads, 2, heads, kv_heads, 344)
        measured = measure_path(cfg, 2, 48, path, fake=False)
        est = estimate_path(cfg, 2, 48, path)
        assert abs(est / measured - 1) <= 0.01, (heads, kv_heads, est, measured)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attn, batching, padded, dtype", [
    ("sdpa", "pad", False, "bf16"),  # flash (cuDNN on H100/B200)
    ("sdpa", "pad", False, "fp32"),  # memory-efficient (no flash in fp32)
    ("sdpa", "pad", True, "bf16"),  # memory-efficient / cuDNN with the mask
    ("sdpa", "padfree", False, "fp32"),
    ("sdpa_varlen", "padfree", False, "bf16"),
    ("flex_attention", "padfree", False, "bf16"),
    ("eager", "pad", True, "bf16"),
])
def test_activation_estimate_on_cuda_kernels(attn, batching, padded, dtype):
    """The CUDA kernels' saved tensors (real, on the GPU) against the estimate for device_type cuda."""
    cfg = llama(512, 2, 8, 2, 1376)
    path = KernelPath(attn, batching, padded, dtype)
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in path_batch(cfg, 4, 512, path).items()}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=attn).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        measured = saved_bytes(model, batch, decoder_only=True)
    est = estimate_path(cfg, 4, 512, path, device_type="cuda")
    assert abs(est / measured - 1) <= 0.10, (est, measured)


def _real_bytes(model, optimizer=None) -> dict[str, int]:
    def nbytes(tensors) -> int:
        seen = {}
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    out = {"weights_bytes": nbytes(model.parameters()),
           "gradients_bytes": nbytes(p.grad for p in model.parameters() if p.grad is not None)}
    if optimizer is not None:
        out["optimizer_bytes"] = sum(
            (v.to_local() if hasattr(v, "to_local") else v).untyped_storage().nbytes()
            for st in optimizer.state.values() for v in st.values())
    return out


def _one_step(engine, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 12))
    batch = {"input_ids": ids, "position_ids": torch.arange(12).expand(2, 12),
             "target_pos": (torch.tensor([0, 1]), torch.tensor([3, 4])), "targets": torch.tensor([5, 6])}
    engine(batch).sum().backward()


@pytest.mark.parametrize("lora_r", [None, 8, 64])
def test_parameter_bytes_equal_instantiated_model(tiny_model_dir, tiny_tokenizer, lora_r):
    """Weights, gradients and AdamW states of the real run (sftlab's load_model + build_optimizer, one step)
    equal the estimate from the meta-device model, byte for byte."""
    from transformers import AutoConfig

    from sftlab.config import build_config
    from sftlab.train.loss import SupervisedTokenNLL
    from sftlab.train.model import load_model
    from sftlab.train.optim import build_optimizer

    lora = {"r": lora_r, "alpha": 16} if lora_r else None
    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir), "lora": lora},
                        "data": {"train": ["x.jsonl"]}, "train": {"output_dir": "unused"}})
    model = load_model(cfg.model, tiny_tokenizer, torch.device("cpu"))
    engine = SupervisedTokenNLL(model)
    optimizer = build_optimizer(engine, cfg, torch.device("cpu"))
    _one_step(engine, len(tiny_tokenizer))
    optimizer.step()
    real = _real_bytes(engine, optimizer)
    meta = meta_model_from_config(AutoConfig.from_pretrained(tiny_model_dir), cfg.model, len(tiny_tokenizer))
    est = parameter_bytes(meta)
    # optimizer: exp_avg + exp_avg_sq per trainable parameter, and one fp32 `step` scalar per tensor
    assert {k: est[k] for k in real} == real
    assert est["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("world", [2, 8])
def test_fsdp_shard_bytes_equal_instantiated_model(world):
    """FSDP2's per-rank shards (dim 0 padded to the world size), in one process on a fake process group."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from sftlab.train import parallel
    from sftlab.train.loss import SupervisedTokenNLL

    cfg = LlamaConfig(vocab_size=1001, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=130)  # odd sizes: shards need padding
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        engine = parallel.wrap_model(SupervisedTokenNLL(AutoModelForCausalLM.from_config(cfg)), "fsdp",
                                     parallel.DistInfo(rank=0, world_size=world), torch.float32)
        _one_step(engine, cfg.vocab_size)
        optimizer = torch.optim.AdamW(engine.parameters(), foreach=True)
        optimizer.step()
        real = _real_bytes(engine, optimizer)
    finally:
        dist.destroy_process_group()
    est = parameter_bytes(meta_model_from_config(cfg, ModelConfig(name_or_path="unused")), world, sharded=True)
    assert {k: est[k] for k in real} == real


QWEN25_7B = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                        tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6)


def qwen7b_table(length: int = 2048) -> dict[str, object]:
    """Full vs LoRA vs QLoRA on one 80 GB GPU and full fine-tuning with FSDP over 8 (bf16 autocast,
    gradient checkpointing, micro-batch 1 × `length`, answers half the tokens); docs/estimate.md prints it."""
    run = RunShape(micro_batch=1, length=length, supervised_per_sample=length / 2, basis="max_length", padded=False)
    h100 = int(79.1 * GIB)
    rows = {}
    for label, lora, parallel, world in [("full", None, "none", 1), ("lora r=16", LoraConfig(r=16), "none", 1),
                                         ("qlora r=16", LoraConfig(r=16, load_in_4bit=True), "none", 1),
                                         ("full, fsdp x 8", None, "fsdp", 8)]:
        mc = ModelConfig(name_or_path="Qwen/Qwen2.5-7B", dtype="bf16", lora=lora)
        rows[label] = estimate_memory(meta_model_from_config(QWEN25_7B, mc), QWEN25_7B, run, dtype="bf16",
                                      gradient_checkpointing=True, parallel=parallel, world_size=world,
                                      load_in_4bit=bool(lora and lora.load_in_4bit),
                                      memory_bytes=h100)
    return rows


def qwen7b_fsdp_table(length: int = 2048) -> dict[str, object]:
    """Full fine-tuning of Qwen2.5-7B over 8 GPUs in each train.fsdp setting (bf16, checkpointing, 1 x `length`);
    docs/estimate.md prints it."""
    run = RunShape(micro_batch=1, length=length, supervised_per_sample=length / 2, basis="max_length", padded=False)
    meta = meta_model_from_config(QWEN25_7B, ModelConfig(name_or_path="Qwen/Qwen2.5-7B", dtype="bf16"))
    settings = {"zero-3 (default)": FsdpConfig(), "zero-2": FsdpConfig(reshard_after_forward=False),
                "zero-2 + optimizer": FsdpConfig(reshard_after_forward=False, offload="optimizer"),
                "zero-3 + params": FsdpConfig(offload="params")}
    return {label: estimate_memory(meta, QWEN25_7B, run, dtype="bf16", gradient_checkpointing=True, parallel="fsdp",
                                   world_size=8, memory_bytes=int(79.1 * GIB), fsdp=fsdp)
            for label, fsdp in settings.items()}


def test_fsdp_settings_in_the_estimate():
    """train.fsdp as the estimate counts it: ZeRO-2 holds every layer's gathered bf16 weights until backward (the
    difference is exactly the other layers'), optimizer offload takes AdamW's states off the device and puts them,
    the fp32 shard copies and their gradients in host memory, params offload takes the shards off as well."""
    zero3, zero2, zero2_opt, zero3_params = qwen7b_fsdp_table().values()
    layer = sum(p.numel() for n, p in meta_model_from_config(QWEN25_7B, ModelConfig(name_or_path="x")).named_parameters()
                if ".layers.0." in n)
    assert zero2.parallel_buffers_bytes - zero3.parallel_buffers_bytes == (QWEN25_7B.num_hidden_layers - 2) * layer * 2
    assert zero2_opt.optimizer_bytes == 0 and zero2_opt.weights_bytes == zero2.weights_bytes
    assert zero2_opt.offloaded_bytes == zero2.optimizer_bytes + 2 * zero2.gradients_bytes
    assert zero2_opt.optimizer_step_bytes == 0 < zero2.optimizer_step_bytes
    assert zero3_params.weights_bytes == zero3_params.gradients_bytes == zero3_params.optimizer_bytes == 0
    assert zero3_params.offloaded_bytes == zero3.weights_bytes + zero3.gradients_bytes + zero3.optimizer_bytes
    assert zero3_params.total_bytes < zero3.total_bytes < zero2.total_bytes
    assert zero2_opt.total_bytes < zero2.total_bytes and zero3.offloaded_bytes == zero2.offloaded_bytes == 0


def test_offloaded_adamw_keeps_the_bytes_the_estimate_moves(tiny_model_dir, tiny_tokenizer):
    """The optimizer offload as it runs (FSDP2 on a fake 2-rank group): AdamW's states and the fp32 copies it steps
    are the host bytes the estimate gives, and a step through it equals plain AdamW on the shards."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import AutoConfig

    from sftlab.config import build_config
    from sftlab.train import parallel
    from sftlab.train.loss import SupervisedTokenNLL
    from sftlab.train.optim import OffloadedAdamW, build_optimizer

    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": ["x.jsonl"]},
                        "train": {"output_dir": "unused", "parallel": "fsdp", "fsdp": {"offload": "optimizer"}}})
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        engines = [parallel.wrap_model(SupervisedTokenNLL(AutoModelForCausalLM.from_pretrained(tiny_model_dir)),
                                       "fsdp", parallel.DistInfo(rank=0, world_size=2), torch.float32, cfg.train.fsdp)
                   for _ in range(2)]
        offloaded = build_optimizer(engines[0], cfg, torch.device("cpu"))
        plain = build_optimizer(engines[1], cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"fsdp": FsdpConfig()})}), torch.device("cpu"))
        assert isinstance(offloaded, OffloadedAdamW) and not isinstance(plain, OffloadedAdamW)
        for engine, optimizer in zip(engines, (offloaded, plain), strict=True):
            torch.manual_seed(0)
            _one_step(engine, len(tiny_tokenizer))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in engines[0].parameters())
        a = [p.to_local() for p in engines[0].parameters()]
        b = [p.to_local() for p in engines[1].parameters()]
        assert max((x - y).abs().max().item() for x, y in zip(a, b, strict=True)) <= 1e-6
        states = sum(v.untyped_storage().nbytes() for st in offloaded.state.values() for v in st.values())
        copies = sum(p.untyped_storage().nbytes() for g in offloaded.param_groups for p in g["params"])
    finally:
        dist.destroy_process_group()
    meta = meta_model_from_config(AutoConfig.from_pretrained(tiny_model_dir), cfg.model, len(tiny_tokenizer))
    counts = parameter_bytes(meta, 2, sharded=True)
    assert states == counts["optimizer_bytes"] and copies == counts["gradients_bytes"]


def test_qwen25_7b_table():
    rows = qwen7b_table()
    full, lora, qlora, fsdp = rows.values()
    assert full.params == 7_615_616_512  # Qwen2.5-7B's published parameter count
    # fp32 master weights + fp32 grads + AdamW: 16 bytes per parameter before activations
    assert full.weights_bytes + full.gradients_bytes + full.optimizer_bytes >= 16 * full.params
    assert not full.fits and lora.fits and qlora.fits and fsdp.fits
    assert qlora.total_bytes < lora.total_bytes < full.total_bytes and fsdp.total_bytes < full.total_bytes
    assert fsdp.weights_bytes == pytest.approx(full.weights_bytes / 8, rel=0.01)
    assert 0 < lora.trainable_params < 0.01 * lora.params
    assert qlora.max_micro_batch > lora.max_micro_batch > 0 and full.max_micro_batch == 0


def test_flops_and_peak():
    cfg = QWEN25_7B
    # 6N dominates; attention adds 12 · L · H · s
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * matmul_params(cfg) + 12 * 28 * 3584 * 2048)
    assert 6 * 6.5e9 < flops_per_token(cfg, 0) < 6 * 7.7e9
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp32") == 156e12
    assert peak_flops("cpu") is None and peak_flops(None) is None
    # 4 H100s at 10k tokens/s each: MFU = tokens/s x FLOPs/token / (peak x devices)
    assert mfu(40_000, cfg, 2048, "NVIDIA H100 80GB HBM3", "bf16", 4) == pytest.approx(
        40_000 * flops_per_token(cfg, 2048) / (989e12 * 4))
    assert mfu(40_000, cfg, 2048, None, "bf16") is None


def test_report_shows_estimate_peak_and_mfu(tmp_path):
    from sftlab.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": s, "loss": 1.0 / s, "tokens_per_s": 1000.0, "memory_estimate_gb": 61.5,
             "memory_peak_gb": 58.0 + s, "mfu": 0.40 + 0.01 * s} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    page = write_report(run).read_text()
    assert "61.500 / 60.000" in page and "41.5%" in page


def test_estimate_cli_json_and_table(tmp_path, tiny_model_dir, capsys):
    """`sftlab estimate CONFIG --json` gives the documented fields; the data's real lengths are the basis
    when the data is there; a memory size gives the largest micro-batch and a warning when it does not fit."""
    import yaml

    from sftlab.cli import main

    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"count to {i}"},
                          {"role": "assistant", "content": " ".join(str(j) for j in range(i))}]} for i in range(3, 30)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)},
                                   "data": {"train": [str(data)], "max_length": 256},
                                   "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4}}))
    main(["estimate", str(cfg), "--json", "--memory-gb", "0.01"])
    out = json.loads(capsys.readouterr().out)
    for key in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes", "loss_head_bytes",
                "total_bytes", "max_micro_batch", "basis"):
        assert key in out
    assert out["basis"].startswith("data:")
    assert out["max_micro_batch"] >= 1 and out["fits"] is True
    total = sum(out[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "margin_bytes"))
    total += max(sum(out[k] for k in ("activations_bytes", "loss_head_bytes", "recompute_bytes",
                                      "autocast_weights_bytes", "parallel_buffers_bytes")), out["optimizer_step_bytes"])
    assert out["total_bytes"] == total

    main(["estimate", str(cfg), "--no-data", "train.per_device_train_batch_size=64", "--memory-gb", "0.01"])
    text = capsys.readouterr().out
    assert "does not fit" in text and "max_length" in text

    with pytest.raises(SystemExit) as e:
        main(["estimate", str(cfg), "--gpu", "h100-81gb"])
    assert e.value.code == 2
    assert "h100-80gb" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:  # was "-1024.0 MiB: does NOT fit"
        main(["estimate", str(cfg), "--memory-gb", "-1"])
    assert e.value.code == 2
    assert "--memory-gb must be > 0 (got -1.0)" in capsys.readouterr().err


def test_estimate_resolves_dtype_and_device_as_training_will(tmp_path, tiny_model_dir, monkeypatch):
    """model.dtype auto was estimated as fp32 on every target (training uses bf16 on Ampere+), and the loss head's
    chunk was sized for CUDA on a CPU run unless train.device=cpu was written out."""
    import yaml

    from sftlab.config import load_config
    from sftlab.train import loss as loss_mod
    from sftlab.train.estimate import GIB, estimate_run

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir), "lora": {"r": 8}},
                                   "data": {"train": [str(tmp_path / "absent.jsonl")], "max_length": 512},
                                   "train": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4}}))

    def total(*overrides: str, **kw) -> int:
        return estimate_run(load_config(cfg, list(overrides)), **kw).total_bytes

    h100, v100 = {"memory_bytes": 80 * GIB, "gpu": "h100-80gb"}, {"memory_bytes": 32 * GIB, "gpu": "v100-32gb"}
    assert total("model.dtype=auto", **h100) == total("model.dtype=bf16", **h100) != total("model.dtype=fp32", **h100)
    assert total("model.dtype=auto", **v100) == total("model.dtype=bf16", **v100) == total("model.dtype=fp32", **v100)
    note = estimate_run(load_config(cfg, ["model.dtype=auto"]), **h100).notes
    assert "model.dtype auto: estimated as bf16, what training uses on h100-80gb" in note

    if torch.cuda.is_available():
        return
    # a CPU chunk smaller than the CUDA one, so the loss head's peak depends on the device it is sized for
    monkeypatch.setitem(loss_mod.AUTO_CHUNK_BYTES, "cpu", 4 * 1100 * 128)
    monkeypatch.setitem(loss_mod.AUTO_CHUNK_BYTES, "cuda", 4 * 1100 * 1024)
    assert total() == total("train.device=cpu") < total(memory_bytes=80 * GIB)
