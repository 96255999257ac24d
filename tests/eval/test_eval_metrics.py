"""Eval metrics against the reference packages (sacrebleu, rouge-score) on fixed English, Chinese and mixed pairs,
exact-match normalisation, custom checkers, bootstrap CIs and `sftlab eval metrics --pred`."""

from __future__ import annotations

import json
import re

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from sftlab.errors import UserError
from sftlab.eval import metrics as M
from sftlab.eval.stats import bootstrap_ci, describe, paired_diff

PAIRS_EN = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat is on the mat", "there is a cat on the mat"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("a completely different sentence", "nothing in common here"),
    ("I think the answer is 42", "42"),
]
PAIRS_ZH = [
    ("猫坐在垫子上", "猫坐在垫子上"),
    ("猫在垫子上", "猫坐在垫子上"),
    ("北京是中国的首都。", "中国的首都是北京。"),
    ("今天天气很好", "明天会下雨"),
]
PAIRS_MIXED = [
    ("我用 Python 3.11 写了一个 web server", "我用 Python 写了一个 web 服务器"),
    ("模型的 loss 下降到 0.5", "模型 loss 降到了 0.5"),
]


def test_identical_texts_score_perfectly_in_english_and_chinese():
    for text in ("the cat sat on the mat", "猫坐在垫子上，看着窗外。", "我用 Python 写 code"):
        r = M.rouge(text, text)
        assert r["rougeL"] == pytest.approx(1.0) and r["rouge1"] == pytest.approx(1.0)
        assert M.bleu(text, text) == pytest.approx(100.0)
        assert M.chrf(text, text) == pytest.approx(100.0)
        assert M.exact_match(text, text) == 1.0


def test_plain_rouge_score_is_zero_on_chinese_ours_is_not():
    """Why the tokenizer exists: rouge-score's default tokenizer drops every CJK character."""
    plain = RougeScorer(["rougeL"]).score("猫坐在垫子上", "猫在垫子上")["rougeL"].fmeasure
    assert plain == 0.0
    assert M.rouge("猫在垫子上", "猫坐在垫子上")["rouge1"] == pytest.approx(10 / 11)  # P 5/5, R 5/6


def test_rouge_equals_reference_implementation_on_english():
    ref = RougeScorer(["rouge1", "rouge2", "rougeL"])
    for hyp, gold in PAIRS_EN:
        want = ref.score(gold, hyp)
        got = M.rouge(hyp, gold)
        for k in M.ROUGE_KEYS:
            assert got[k] == pytest.approx(want[k].fmeasure, abs=1e-12), (hyp, gold, k)


def _ascii_tokens(text: str) -> str:
    """Each CJK character → a unique ASCII word, so the reference tokenizer sees the same character segmentation."""
    return " ".join(f"u{ord(t):x}" if M.has_cjk(t) else t for t in M.tokenize(text))


def test_rouge_on_chinese_and_mixed_equals_reference_on_the_same_segmentation():
    ref = RougeScorer(["rouge1", "rouge2", "rougeL"])
    for hyp, gold in PAIRS_ZH + PAIRS_MIXED:
        want = ref.score(_ascii_tokens(gold), _ascii_tokens(hyp))
        got = M.rouge(hyp, gold)
        for k in M.ROUGE_KEYS:
            assert got[k] == pytest.approx(want[k].fmeasure, abs=1e-12), (hyp, gold, k)
    assert M.tokenize("我用Python写") == ["我", "用", "python", "写"]


def test_bleu_and_chrf_equal_sacrebleu():
    for hyp, gold in PAIRS_EN:
        assert M.bleu(hyp, gold) == pytest.approx(sacrebleu.sentence_bleu(hyp, [gold], tokenize="13a").score)
        assert M.chrf(hyp, gold) == pytest.approx(sacrebleu.sentence_chrf(hyp, [gold]).score)
    for hyp, gold in PAIRS_ZH + PAIRS_MIXED:
        assert M.bleu(hyp, gold) == pytest.approx(sacrebleu.sentence_bleu(hyp, [gold], tokenize="zh").score)
        assert M.chrf(hyp, gold) == pytest.approx(sacrebleu.sentence_chrf(hyp, [gold]).score)
    # the zh tokenizer matters: unsegmented Chinese is one "word" for 13a, so a near match scores ~0
    near = ("北京是中国的首都", "北京是中国首都")
    assert sacrebleu.sentence_bleu(near[0], [near[1]], tokenize="13a").score < 1
    assert M.bleu(*near) > 30


def test_exact_match_normalisation():
    assert M.exact_match("Beijing.", "beijing") == 1.0
    assert M.exact_match("ＡＢＣ１２３", "abc123") == 1.0  # full-width
    assert M.exact_match("答案：北京。", "答案:北京") == 1.0  # CJK punctuation
    assert M.exact_match("the Paris", "Paris", strip_articles=True) == 1.0
    assert M.exact_match("Beijing.", "beijing", lower=False) == 0.0
    assert M.exact_match("42", "43") == 0.0


def my_checker(reply: str, reference: str | None, row: dict) -> bool:
    return reply.endswith("!")


def test_custom_checkers_by_task_type():
    rows = [{"id": "a", "task_type": "math/add", "reply": "so the total is 1,234.0", "reference": "1234"},
            {"id": "b", "task_type": "math/add", "reply": "I get 12", "reference": "13"},
            {"id": "c", "task_type": "tools", "reply": '```json\n{"name": "f"}\n```', "reference": None},
            {"id": "d", "task_type": "tools", "reply": "{name: f}", "reference": None},
            {"id": "e", "task_type": "chat", "reply": "hello!", "reference": "hi"}]
    M.score_rows(rows, ["exact_match"], [
        {"type": "numeric", "task_type": "math"},
        {"type": "json_valid", "task_type": ["tools"]},
        {"type": "regex", "name": "greets", "pattern": r"^(hello|hi)\b", "task_type": "chat"},
        {"type": "python", "fn": "test_eval_metrics.my_checker", "task_type": "chat"},
    ])
    assert rows[0]["scores"] == {"exact_match": 0.0, "numeric": 1.0}
    assert rows[1]["scores"]["numeric"] == 0.0
    assert rows[2]["scores"] == {"json_valid": 1.0} and rows[3]["scores"] == {"json_valid": 0.0}
    assert rows[4]["scores"] == {"exact_match": 0.0, "greets": 1.0, "my_checker": 1.0}
    with pytest.raises(UserError, match="cannot be imported"):
        M.make_checker({"type": "python", "fn": "no_such_module.fn"})
    with pytest.raises(UserError, match="unknown type"):
        M.make_checker({"type": "bogus"})


def test_bootstrap_ci_and_paired_diff():
    vals = [0, 1] * 50
    lo, hi = bootstrap_ci(vals)
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert bootstrap_ci(vals) == (lo, hi)  # seeded
    d = describe([1.0] * 10)
    assert d == {"n": 10, "mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert paired_diff([0.0] * 30, [1.0] * 30)["significant"]
    assert not paired_diff([0, 1] * 15, [1, 0] * 15)["significant"]


def test_cli_eval_metrics_on_predictions(tmp_path, capsys):
    from sftlab.cli import main

    pred = tmp_path / "pred.jsonl"
    lines = [{"id": f"en{i}", "task_type": "en", "reply": h, "reference": g} for i, (h, g) in enumerate(PAIRS_EN)]
    lines += [{"id": f"zh{i}", "task_type": "zh", "reply": h, "reference": g} for i, (h, g) in enumerate(PAIRS_ZH)]
    pred.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    out = tmp_path / "out"
    main(["eval", "metrics", "--pred", str(pred), "-o", str(out)])
    s = json.loads((out / "summary.json").read_text())
    for t in ("en", "zh", "all"):
        for m in ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf"):
            cell = s["metrics"][t][m]
            assert set(cell) == {"n", "mean", "ci_low", "ci_high"} and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert s["metrics"]["zh"]["rougeL"]["n"] == len(PAIRS_ZH) and s["metrics"]["all"]["bleu"]["n"] == len(lines)
    assert s["metrics"]["zh"]["exact_match"]["mean"] == pytest.approx(1 / len(PAIRS_ZH))
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["scores"]["bleu"] == pytest.approx(100.0)
    html = (out / "report.html").read_text()
    assert "rougeL" in html and re.search(r"<td>zh</td>", html)
    bad = [json.loads(x) for x in (out / "bad_cases.jsonl").read_text().splitlines()]
    assert {b["task_type"] for b in bad} == {"en", "zh"}
    assert all(b["primary_score"] == 0.0 for b in bad)  # exact-match misses only: hits are never bad cases
    assert len(bad) == 4 + 3  # en: 4 misses of 5, zh: 3 of 4

    pred.write_text('{"id": "x", "task_type": "t"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["eval", "metrics", "--pred", str(pred), "-o", str(out)])
    assert e.value.code == 2
    assert "line 1: missing field 'reply'" in capsys.readouterr().err
    pred.write_text('{"id": "x", "reply": "a"}\n{"id": "x", "reply": "b"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["eval", "metrics", "--pred", str(pred), "-o", str(out)])
    assert e.value.code == 2 and "line 2: field 'id': 'x' is also the id of line 1" in capsys.readouterr().err


def test_last_number_reads_the_final_answer():
    """The numeric checker and verifier read a math reply's stated answer: the last \\boxed{}, else after GSM8K's
    ####, else the last number; commas only as thousands separators (a check after the answer, "\\boxed{41}.
    Check: 6*7=42", passed for 42; "1,2,3" read as 123)."""
    from sftlab.eval.metrics import last_number

    cases = {"The answer is 42.": 42.0, r"so \boxed{41}. Check: 6*7=42": 41.0, "steps 3 4 #### 1,000": 1000.0,
             "1,2,3": 3.0, "Total: $1,234,567.89!": 1234567.89, r"\boxed{\frac{1}{2}} (not 7)": 0.5,
             r"\boxed{-\dfrac{3}{4}}": -0.75, "x = -3.5e2": -350.0, "１２３": 123.0, "no digits": None}
    assert {t: last_number(t) for t in cases} == cases
