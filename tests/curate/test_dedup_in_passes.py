"""Dedup in passes (compact state: digests + a uint32 signature array, candidate rows re-read for the exact
Jaccard), near or exact, keeping the first or the best-scored record, writes the same kept and dropped rows as
dedup_records on the whole list."""

from __future__ import annotations

import json

import numpy as np
import pytest
from record_helpers import rec

from sftlab.cli import main
from sftlab.curate.dedup import dedup_in_passes, dedup_records
from sftlab.curate.files import iter_record_chunks, load_records
from sftlab.curate.step import write_result, write_result_stream
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError

TAIL = " ".join(f"word{k}" for k in range(30))


def _records(n: int) -> list[dict]:
    """Exact repeats (case/spacing changed), near duplicates across groups (one word differs), unrelated
    texts and empty answers, spread over many chunks."""
    out = []
    for i in range(n):
        g = i // 3
        if i % 7 == 5:
            text = f"unrelated text {i} " + " ".join(f"tok{i}_{k}" for k in range(20))
        elif i % 11 == 4:
            text = "..." if i % 2 else "ok"  # no tokens at all, or fewer than a shingle
        else:
            text = f"answer number {g % 4} is about the river bank " + TAIL
            text = text.upper() if i % 3 == 1 else text + ("  " if i % 3 else "")
        out.append(rec(f"d{i}", f"Prompt {i % 2}?", text, q=(i * 7) % 5))  # tied scores: the earlier wins
    return out


SCORE = {"keep": "score", "score_key": "q"}


@pytest.mark.parametrize(("mode", "field", "verify", "keep"), [
    ("near", "answer", True, {}), ("near", "both", True, {}), ("near", "answer", False, {}),
    ("near", "answer", True, SCORE), ("near", "both", False, SCORE), ("exact", "answer", True, SCORE)])
def test_dedup_in_passes_matches_dedup_records(tmp_path, mode, field, verify, keep):
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(40), path)
    cfg = {"mode": mode, "field": field, "verify": verify, **keep}
    whole = dedup_records(load_records(path), cfg)
    write_result(whole, tmp_path / "list.jsonl")
    tally = write_result_stream(dedup_in_passes(lambda: iter_record_chunks(path, chunk_size=4), cfg),
                                tmp_path / "stream.jsonl", "dedup")
    summary = tally.summary()
    assert summary == whole.summary() and tally.info == whole.info  # the pair counts too
    assert ("near_duplicate" in summary) == (mode == "near") and "exact_duplicate" in summary
    if keep:  # the best-scored record of an exact group is kept, not the first
        dropped = [json.loads(line) for line in (tmp_path / "stream.dropped.jsonl").open()]
        later = [d for d in dropped if d["reason"] == "exact_duplicate" and int(d["duplicate_of"][1:]) > int(d["id"][1:])]
        assert later and all((int(d["duplicate_of"][1:]) * 7) % 5 > (int(d["id"][1:]) * 7) % 5 for d in later)
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()


@pytest.mark.parametrize("args", [[], ["--keep", "score", "--score-key", "q"], ["--mode", "exact", "--keep", "score",
                                                                           "--score-key", "q"]])
def test_dedup_cli_streams(tmp_path, capsys, monkeypatch, args):
    from sftlab.curate import files as curate_io

    path = tmp_path / "in.jsonl"
    write_jsonl(_records(40), path)
    cfg = {"mode": "exact" if "exact" in args else "near"} | ({"keep": "score", "score_key": "q"} if args else {})
    whole = dedup_records(load_records(path), cfg)
    monkeypatch.setattr(curate_io, "load_records", None)  # the CLI must not read the whole list
    main(["data", "dedup", str(path), "-o", str(tmp_path / "out.jsonl"), *args])
    assert whole.summary() in capsys.readouterr().out


class _WordEmbedder:
    """A deterministic stand-in for a sentence-transformers model: a text's vector depends on the text alone
    (its words hashed into 16 dims), never on the batch, so list and stream paths must agree exactly."""

    def encode(self, texts, **_):
        out = np.zeros((len(texts), 16), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split()[:3]:  # the first words: records sharing them are "paraphrases"
                out[i, sum(map(ord, w)) % 16] += 1.0
            out[i, len(t) % 16] += 0.3
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.mark.parametrize("keep", [{}, SCORE])
@pytest.mark.parametrize("group_size", [10000, 7])  # one exact search; K-means groups
def test_dedup_in_passes_semantic_matches_dedup_records(tmp_path, monkeypatch, keep, group_size):
    import sftlab.curate.embed as embed

    monkeypatch.setattr(embed, "load_model", lambda model: _WordEmbedder())
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(60), path)
    cfg = {"semantic_threshold": 0.9, "field": "answer", "semantic_group_size": group_size, **keep}
    whole = dedup_records(load_records(path), cfg, cache_dir=tmp_path / "c1")
    write_result(whole, tmp_path / "list.jsonl")
    tally = write_result_stream(dedup_in_passes(lambda: iter_record_chunks(path, chunk_size=4), cfg,
                                                cache_dir=tmp_path / "c2"), tmp_path / "stream.jsonl", "dedup")
    summary = tally.summary()
    assert summary == whole.summary() and "semantic_duplicate" in summary
    assert tally.info == whole.info and tally.info["semantic_duplicates"] > 0
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()


def test_dedup_in_passes_refuses_bad_scores(tmp_path):
    with pytest.raises(UserError, match="needs score_key"):
        next(dedup_in_passes(lambda: [[]], {"keep": "score"}))
    records = _records(10)
    records[6]["meta"]["q"] = "high"
    with pytest.raises(UserError, match=r"record 6 \(id 'd6'\): meta.q must be a number"):
        next(dedup_in_passes(lambda: [records[:4], records[4:]], {"keep": "score", "score_key": "q"}))


def test_dedup_cli_workers_use_the_process_pool(tmp_path, capsys, monkeypatch):
    """`workers` > 1 is honoured (the list path's process pool), not silently ignored by the streaming path."""
    import sftlab.curate.dedup as dedup_mod

    path = tmp_path / "in.jsonl"
    write_jsonl(_records(40), path)
    whole = dedup_records(load_records(path), {"mode": "near"})
    seen = []
    features = dedup_mod._features
    monkeypatch.setattr(dedup_mod, "_features", lambda texts, cfg, chunk_size: seen.append(cfg.workers) or
                        features(texts, cfg.model_copy(update={"workers": 1}), chunk_size))
    main(["data", "dedup", str(path), "-o", str(tmp_path / "out.jsonl"), "--set", "workers=2"])
    assert seen == [2] and whole.summary() in capsys.readouterr().out
