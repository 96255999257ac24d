"""The embedded default model: a tiny Llama-architecture model with a locally trained byte-level BPE tokenizer.

No model hub is needed: the tokenizer is trained with the `tokenizers` library on given or built-in
texts, the model is randomly initialised from a `LlamaConfig`, and both are saved in the ordinary
Hugging Face layout, so `AutoModelForCausalLM` / `AutoTokenizer` load them like any hub model.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sftlab.data.render import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def builtin_texts(n: int = 4000, seed: int = 0) -> list[str]:
    """A small English-ish corpus covering words, digits and punctuation the demo tasks use."""
    rng = random.Random(seed)
    words = ["the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was", "are", "be", "this", "by", "at", "from", "or", "have", "not", "what", "which", "who", "how", "why", "when", "where", "answer", "question", "reverse", "sort", "count", "add", "sum", "list", "word", "words", "number", "numbers", "letters", "uppercase", "lowercase", "capital", "country", "city", "copy", "repeat", "sentence", "text", "please", "give", "me", "your", "my", "result", "solve", "compute", "total", "first", "last", "next", "previous", "yes", "no", "true", "false", "system", "user", "assistant", "tool", "function", "call", "arguments", "name", "value", "hello", "world", "good", "great", "small", "large", "red", "green", "blue", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero"]
    texts = []
    for _ in range(n):
        k = rng.randint(3, 16)
        parts = []
        for _ in range(k):
            r = rng.random()
            if r < 0.2:
                parts.append(str(rng.randint(0, 999)))
            elif r < 0.3:
                parts.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 6))))
            else:
                parts.append(rng.choice(words))
        texts.append(" ".join(parts) + rng.choice([".", "?", "!", ":", ",", ""]) + rng.choice(["", "\n"]))
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE trained locally, wrapped as a transformers fast tokenizer with ChatML."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, texts: Iterable[str] | None = None, *, vocab_size: int = 1024,
                     hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                     intermediate_size: int = 384, max_position_embeddings: int = 2048, seed: int = 0) -> Path:
    """Write a tiny Llama model + tokenizer (HF layout) to out_dir and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts if texts is not None else builtin_texts(), vocab_size=vocab_size)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, attention_dropout=0.0,
                      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=None)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
