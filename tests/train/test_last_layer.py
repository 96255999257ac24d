"""The last decoder layer runs its o_proj and MLP only where the loss reads (sftlab/train/last_layer.py): the
same loss and gradients in every layout and kernel, less work, and left alone where that is not provable."""

from __future__ import annotations

import pytest
import torch

from sftlab.train.last_layer import install_last_layer_skip, reading_only

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).norm().item() <= tol * b.norm().item() + 1e-12


def _perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():  # norms initialised to 1 would hide a wrong weight gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=128))


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_varlen"])
def test_loss_contract_holds_with_the_skip(tiny_model_dir, tiny_tokenizer, kernel):
    """Every layout of the global batch, with the skip, gives the pad reference's loss and gradients without it
    (the same 1e-5 as tests/train/test_contract_layouts.py)."""
    from test_contract_layouts import assert_every_layout_matches_after

    def install(model):
        n = model.config.num_hidden_layers - 1
        skips = install_last_layer_skip(model)
        assert skips == [f"layers[{n}].self_attn.o_proj", f"layers[{n}].mlp"]
        return skips

    assert_every_layout_matches_after(install, tiny_model_dir, tiny_tokenizer, kernel)


def test_the_mlp_runs_only_at_read_rows_and_outside_a_loss_forward_at_all():
    model = _perturbed(_qwen2()).train()
    model.model.layers[0].mlp.eval()  # a part the caller put in eval mode stays there
    assert install_last_layer_skip(model) == ["layers[1].self_attn.o_proj", "layers[1].mlp"]
    assert install_last_layer_skip(model) == ["layers[1].self_attn.o_proj", "layers[1].mlp"]  # idempotent
    assert model.model.training and model.model.layers[1].mlp.training and not model.model.layers[0].mlp.training
    decoder, seen = model.get_decoder(), []
    decoder.layers[1].mlp.down_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1]))
    ids = torch.randint(0, 300, (2, 9))
    full = decoder(input_ids=ids).last_hidden_state
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([3, 8, 5])
    with reading_only(decoder, rows, cols, ids.shape[1]):
        part = decoder(input_ids=ids).last_hidden_state
    assert seen == [(2, 9), (3,)]  # every position outside, only the three read rows inside
    assert _close(part[rows, cols], full[rows, cols])
    again = decoder(input_ids=ids).last_hidden_state  # the index is gone after the forward
    assert torch.equal(again, full)


def test_left_alone_with_gradient_checkpointing_or_a_mixture_of_experts():
    model = _qwen2()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert install_last_layer_skip(model) == []  # backward's recomputation would run outside the read index

    model = _qwen2()
    model.model.layers[-1].mlp.experts = torch.nn.ModuleList()  # what a mixture-of-experts block looks like
    assert install_last_layer_skip(model) == []
    assert "forward" not in model.model.layers[-1].mlp.__dict__


def test_a_layer_whose_output_mixes_positions_fails_the_probe_and_keeps_its_code():
    """A last layer that mixes positions after its MLP (here: a running sum) would read skipped rows: the probe
    sees it and restores the original forwards."""
    model = _perturbed(_qwen2())
    mlp = model.model.layers[-1].mlp
    original = type(mlp).forward
    type_forward = mlp.forward

    def mixing(x: torch.Tensor) -> torch.Tensor:
        return type_forward(x).cumsum(dim=-2)

    mlp.forward = mixing
    assert install_last_layer_skip(model) == []
    assert mlp.forward is mixing and "forward" not in model.model.layers[-1].self_attn.o_proj.__dict__
    assert type(mlp).forward is original


def _grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    from sftlab.train.loss import micro_batch_loss, supervised_token_nll

    model.zero_grad(set_to_none=True)
    loss = micro_batch_loss(supervised_token_nll(model, batch, chunk_size=8), batch, 10.0)
    loss.backward()
    return loss.item(), [p.grad.detach().clone() for p in model.parameters()]


def _padfree_batch():
    from test_attention_gpu import _samples

    from sftlab.train.batching import collate

    return collate(_samples([9, 20, 4, 13]), "padfree", 0, attn_implementation="sdpa_varlen")


def test_checkpointing_switched_on_after_install_makes_the_skip_stand_down(tiny_model_dir):
    """Backward's recomputation runs outside the read index, so the skip must not run in that forward either."""
    from test_attention_gpu import _model

    model, batch = _perturbed(_model(tiny_model_dir, "sdpa_varlen")), _padfree_batch()
    loss, grads = _grads(model, batch)
    assert install_last_layer_skip(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_ckpt, grads_ckpt = _grads(model, batch)  # would raise on a recomputed shape mismatch
    assert abs(loss - loss_ckpt) <= 1e-6 * abs(loss)
    assert all(_close(b, a) for a, b in zip(grads, grads_ckpt, strict=True))


@pytest.mark.slow
def test_torch_compile_with_the_skip_gives_the_same_loss_and_gradients(tiny_model_dir):
    """train.torch_compile compiles the decoder before the skip is installed; the first call traces it in."""
    from test_attention_gpu import _model

    model, batch = _perturbed(_model(tiny_model_dir, "sdpa_varlen")), _padfree_batch()
    loss, grads = _grads(model, batch)
    model.get_decoder().compile(dynamic=True)
    assert install_last_layer_skip(model)
    loss_compiled, grads_compiled = _grads(model, batch)
    assert abs(loss - loss_compiled) <= 1e-4 * abs(loss)
    assert all(_close(b, a, 1e-4) for a, b in zip(grads, grads_compiled, strict=True))
