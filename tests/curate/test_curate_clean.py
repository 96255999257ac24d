"""clean: every rule fires on its bad case with its own reason, and only there."""

from __future__ import annotations

import pytest
from record_helpers import rec

from sftlab.curate.clean import clean_records
from sftlab.errors import UserError

GOOD = "Paris is the capital of France, and it has been for a long time."


def _reasons(records, **cfg):
    res = clean_records(records, cfg)
    return {d["id"]: d["reason"] for d in res.dropped}, [r["id"] for r in res.kept]


def test_each_rule_names_its_reason():
    bad_alt = rec("alt", "Q", GOOD)
    bad_alt["messages"] = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                           {"role": "assistant", "content": GOOD}]
    records = [
        rec("ok", "What is the capital of France?", GOOD),
        rec("ws", "What?", "   \n\t "),
        rec("short_p", "", GOOD),
        rec("long_a", "Tell me.", "word " * 500),
        rec("chars", "Draw a line.", "a" * 80 + " ok"),
        rec("lines", "List things.", "\n".join(["same line here"] * 6 + ["other"])),
        rec("echo", "Repeat after me: the quick brown fox jumps over the lazy dog",
            "Repeat after me: the quick brown fox jumps over the lazy dog"),
        rec("fence", "Code?", "Here:\n```python\nprint(1)\n"),
        rec("refuse", "Help me.", "As an AI language model, I cannot do that."),
        rec("mixed", "Translate.", "This sentence is written in plain English and then 这是一个中文句子混在"),
        bad_alt,
    ]
    reasons, kept = _reasons(records, max_answer_len=1000)
    assert kept == ["ok"]
    assert reasons == {"ws": "empty_answer", "short_p": "prompt_too_short", "long_a": "answer_too_long",
                       "chars": "repeated_chars", "lines": "repeated_lines", "echo": "answer_repeats_prompt",
                       "fence": "unbalanced_code_fence", "refuse": "refusal", "mixed": "mixed_language",
                       "alt": "bad_alternation"}


def test_rules_can_be_switched_off_and_balanced_fences_pass():
    records = [rec("fence", "Code?", "```python\nprint(1)\n```"), rec("refuse", "Help", "As an AI language model, no.")]
    reasons, kept = _reasons(records, refusal_phrases=None)
    assert kept == ["fence", "refuse"] and not reasons


def test_pure_chinese_and_pure_english_are_not_mixed_language():
    records = [rec("zh", "翻译", "这是一个很长的中文句子，用来测试语言混合规则是否误报。" * 2), rec("en", "Say", GOOD)]
    assert _reasons(records)[1] == ["zh", "en"]


def test_token_lengths_with_tokenizer(tiny_tokenizer):
    records = [rec("a", "Tell me.", "one two three four five six seven eight nine ten")]
    n = len(tiny_tokenizer(records[0]["messages"][1]["content"], add_special_tokens=False)["input_ids"])
    assert clean_records(records, {"max_answer_len": n}, tokenizer=tiny_tokenizer).kept
    res = clean_records(records, {"max_answer_len": n - 1}, tokenizer=tiny_tokenizer)
    assert res.dropped[0]["reason"] == "answer_too_long" and "tokens" in res.dropped[0]["detail"]


@pytest.mark.parametrize("opts, needle", [({"max_answer_len": "abc"}, "max_answer_len"),
                                          ({"max_char_repeat_ratio": 2.0}, "max_char_repeat_ratio"),
                                          ({"no_such_rule": 1}, "no_such_rule")])
def test_bad_options_are_one_line_errors(opts, needle):
    with pytest.raises(UserError) as e:
        clean_records([rec("a", "q", "a")], opts)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_tokens_unit_without_tokenizer_is_an_error():
    with pytest.raises(UserError, match="tokenizer"):
        clean_records([rec("a", "q", "a")], {"length_unit": "tokens"})
