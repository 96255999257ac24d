"""dedup: exact + MinHash LSH near duplicates against brute-force Jaccard, short texts, priorities, CJK."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from record_helpers import rec

from sftlab.curate.dedup import DedupConfig, dedup_records, lsh_bands, near_pairs, shingle_hashes
from sftlab.curate.text import shingles, token_hashes, tokens
from sftlab.errors import UserError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dedup.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_dedup", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_precision_and_recall_against_brute_force_jaccard():
    bench = _bench()
    records, planted = bench.planted_corpus(1500, seed=3)
    cfg = DedupConfig(field="answer")
    res = dedup_records(records, cfg)
    q = bench.quality(records, planted, {d["id"] for d in res.dropped}, cfg, bench.clusters(res))
    assert q["true_dropped"] > 100  # the instance really has duplicates, English and Chinese
    assert q["precision"] >= 0.99 and q["recall"] >= 0.95, q
    assert q["planted_recall_by_edit_rate"]["0.0"] == 1.0  # every planted exact duplicate found


def test_vectorised_token_and_shingle_hashes_match_string_tokens():
    texts = ["A b, c d e f g", "x y", "", "...", "这是一个中文句子 mixed ABC", "Straße strasse ﬁne", "a_b c1 Ñandú 😀"]
    th, lens = token_hashes(texts)
    assert lens.tolist() == [len(tokens(t)) for t in texts]
    by_token: dict[str, set[int]] = {}
    for tok, h in zip([t for x in texts for t in tokens(x)], th.tolist(), strict=True):
        by_token.setdefault(tok, set()).add(h)
    assert all(len(v) == 1 for v in by_token.values())  # equal tokens, equal hashes
    assert len({next(iter(v)) for v in by_token.values()}) == len(by_token)  # different tokens, different
    flat, off = shingle_hashes(th, lens, 5)
    assert np.diff(off).tolist() == [len(shingles(tokens(t), 5)) for t in texts]
    f2, _ = shingle_hashes(*token_hashes(["c d e f g h"]), 5)
    assert flat[2] == f2[0] and flat[0] != f2[0]  # same 5-gram "c d e f g" in both texts


def test_keeps_first_and_records_cluster_and_reasons():
    base = "the quick brown fox jumps over the lazy dog near the river bank on a sunny day"
    records = [rec("a", "q1", base), rec("b", "q2", base.upper() + "!!"),
               rec("c", "q3", base.replace("sunny", "rainy")), rec("d", "q4", "something completely different here")]
    res = dedup_records(records, {"field": "answer"})
    assert [r["id"] for r in res.kept] == ["a", "d"]
    assert {d["id"]: d["reason"] for d in res.dropped} == {"b": "exact_duplicate", "c": "near_duplicate"}
    assert all(d["duplicate_of"] == "a" for d in res.dropped)
    assert res.kept[0]["meta"]["dedup_cluster"] == "a" and res.kept[1]["meta"]["dedup_cluster"] == "d"
    near = next(d for d in res.dropped if d["id"] == "c")
    assert 0.7 <= near["similarity"] < 1


def test_keep_highest_score():
    base = "one two three four five six seven eight nine ten eleven twelve"
    records = [rec("a", "q", base, ifd=0.2), rec("b", "q", base + " thirteen", ifd=0.9)]
    res = dedup_records(records, {"field": "answer", "keep": "score", "score_key": "ifd"})
    assert [r["id"] for r in res.kept] == ["b"]
    with pytest.raises(UserError, match="meta.missing"):
        dedup_records(records, {"keep": "score", "score_key": "missing"})


def test_short_and_empty_texts_do_not_crash_and_match_only_exactly():
    records = [rec("e1", "q", "?"), rec("e2", "q", "!"), rec("w1", "q", "yes"), rec("w2", "q", "Yes."),
               rec("w3", "q", "no"), rec("t4", "q", "one two three four"), rec("t4b", "q", "one two three five")]
    res = dedup_records(records, {"field": "answer"})
    assert {d["id"]: d["duplicate_of"] for d in res.dropped} == {"e2": "e1", "w2": "w1"}


def test_prompt_field_and_chinese_near_duplicates():
    zh = "今天天气很好我们一起去公园散步然后去图书馆看书最后回家吃晚饭"
    records = [rec("a", zh, "x"), rec("b", zh.replace("晚饭", "午饭"), "y"), rec("c", "完全不同的问题内容在这里出现", "z")]
    res = dedup_records(records, {"field": "prompt"})
    assert [d["id"] for d in res.dropped] == ["b"]
    assert not dedup_records(records, {"field": "answer"}).dropped


def test_near_pairs_finds_all_pairs_and_bands():
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa"] * 3 + ["", "other words entirely here"]
    assert [(i, j) for i, j, _ in near_pairs(texts)] == [(0, 1), (0, 2), (1, 2)]
    bands = lsh_bands(0.7, 128)
    rows = 128 // bands
    assert 1 - (1 - 0.7 ** rows) ** bands >= 0.99


def test_deterministic():
    bench = _bench()
    records, _ = bench.planted_corpus(400, seed=5)
    a, b = dedup_records(records, {"field": "answer"}), dedup_records(list(records), {"field": "answer"})
    assert a.kept == b.kept and a.dropped == b.dropped


def test_wrong_threshold_type():
    with pytest.raises(UserError, match="threshold"):
        dedup_records([rec("a", "q", "x")], {"threshold": "high"})


def test_two_worker_processes_give_the_same_result():
    bench = _bench()
    records, _ = bench.planted_corpus(600, seed=7)
    one = dedup_records(records, {"field": "answer"}, chunk_size=100)
    two = dedup_records(records, {"field": "answer", "workers": 2}, chunk_size=100)
    assert one.kept == two.kept and one.dropped == two.dropped and one.dropped
