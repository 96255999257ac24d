"""Streaming curation: chunked reading gives the same records as the list reader, and `data clean` streams
with byte-identical outputs to cleaning the whole list at once."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from record_helpers import rec

from sftlab.cli import main
from sftlab.curate.clean import clean_records, clean_stream
from sftlab.curate.files import iter_record_chunks, load_records
from sftlab.curate.step import write_result, write_result_stream
from sftlab.data.formats import iter_records, read_many_detailed
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError

GOOD = "Paris is the capital of France, and it has been for a long time."


def _mixed(n: int) -> list[dict]:
    """n records where about a third break a clean rule, with non-ASCII text."""
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(rec(f"r{i}", "Hi", "   "))
        elif kind == 1:
            out.append(rec(f"r{i}", "Help", "As an AI language model, I cannot help."))
        else:
            out.append(rec(f"r{i}", f"Question {i}: où est Paris? 问题", f"{GOOD} ({i})", task_type=f"t{i % 3}"))
    return out


@pytest.fixture()
def inputs(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    records = _mixed(23)
    write_jsonl(records[:10], a)
    write_jsonl(records[10:], b)
    return [a, b]


def test_iter_records_chunks_match_read_many(inputs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "messages": []}\nnot json\n' + json.dumps(rec("y", "Q", GOOD)) + "\n")
    paths = [*inputs, bad]
    records, rejects, info = read_many_detailed(paths, on_error="skip")
    got_recs, got_rejs, got_info = [], [], []
    sizes = []
    for recs, rejs in iter_records(paths, chunk_size=4, on_error="skip", info=got_info):
        sizes.append(len(recs) + len(rejs))
        got_recs += recs
        got_rejs += rejs
    assert got_recs == records and got_rejs == rejects and got_info == info
    assert max(sizes) == 4 and len(rejects) == 6  # chunks bounded; rejects (4 empty answers, 2 bad lines) streamed too


def test_iter_record_chunks_keeps_load_records_errors(inputs, tmp_path):
    dup = tmp_path / "dup.jsonl"
    write_jsonl([rec("r3", "Q", GOOD)], dup)  # r3 is already in a.jsonl
    with pytest.raises(UserError, match="duplicate id 'r3'"):
        list(iter_record_chunks([*inputs, dup], chunk_size=5, allow_empty_answers=True))
    with pytest.raises(UserError, match="no such file"):
        list(iter_record_chunks([tmp_path / "missing.jsonl"]))
    assert [r for c in iter_record_chunks(inputs, chunk_size=5, allow_empty_answers=True) for r in c] == \
        load_records(inputs, allow_empty_answers=True)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_clean_stream_writes_what_clean_records_writes(inputs, tmp_path, suffix):
    whole = clean_records(load_records(inputs, allow_empty_answers=True))
    write_result(whole, tmp_path / f"list{suffix}")
    summary = write_result_stream(clean_stream(iter_record_chunks(inputs, chunk_size=4, allow_empty_answers=True)),
                                  tmp_path / f"stream{suffix}", "clean").summary()
    assert summary == whole.summary() == "clean: kept 15 of 23; empty_answer: 4; refusal: 4"
    assert (tmp_path / "stream.dropped.jsonl").read_bytes() == (tmp_path / "list.dropped.jsonl").read_bytes()
    if suffix == ".jsonl":
        assert (tmp_path / "stream.jsonl").read_bytes() == (tmp_path / "list.jsonl").read_bytes()
    else:  # row groups differ, the table does not
        assert pq.read_table(tmp_path / "stream.parquet").equals(pq.read_table(tmp_path / "list.parquet"))
        assert load_records(tmp_path / "stream.parquet") == whole.kept
    assert not list(tmp_path.glob("*.tmp"))


def test_clean_cli_streams_and_fails_atomically(inputs, tmp_path, capsys):
    out = tmp_path / "clean.jsonl"
    main(["data", "clean", *map(str, inputs), "-o", str(out)])
    assert "clean: kept 15 of 23; empty_answer: 4; refusal: 4" in capsys.readouterr().out
    whole = clean_records(load_records(inputs, allow_empty_answers=True))
    write_result(whole, tmp_path / "list.jsonl")
    assert out.read_bytes() == (tmp_path / "list.jsonl").read_bytes()
    before = out.read_bytes()
    bad = tmp_path / "late_bad.jsonl"
    bad.write_text("\n".join(json.dumps(rec(f"z{i}", "Q", GOOD)) for i in range(3)) + "\n{broken\n")
    with pytest.raises(SystemExit) as e:
        main(["data", "clean", *map(str, inputs), str(bad), "-o", str(out)])
    assert e.value.code == 2
    assert "late_bad.jsonl" in capsys.readouterr().err
    assert out.read_bytes() == before  # a bad record late in the input leaves the old outputs untouched
    assert not list(tmp_path.glob("*.tmp"))


TAIL = " ".join(f"word{k}" for k in range(40)) + " the end"


def _dups(n: int) -> list[dict]:
    """Records whose answers repeat (case and spacing changed) every third one, plus a near duplicate."""
    out = []
    for i in range(n):
        base = f"answer number {i // 3} is about the river bank on a sunny day " + TAIL
        out.append(rec(f"d{i}", "Same prompt?", base.upper() if i % 3 == 1 else base + ("  " if i % 3 else ""),
                       score=i))
    out.append(rec("near", "Same prompt?", "answer number 0 is about the river bank on a sunny day " +
                   TAIL.replace("end", "finish")))
    return out


@pytest.mark.parametrize("field", ["answer", "both"])
def test_dedup_exact_stream_matches_dedup_records(tmp_path, field):
    from sftlab.curate.dedup import dedup_exact_stream, dedup_records

    path = tmp_path / "in.jsonl"
    write_jsonl(_dups(20), path)
    cfg = {"mode": "exact", "field": field}
    whole = dedup_records(load_records(path), cfg)
    write_result(whole, tmp_path / "list.jsonl")
    tally = write_result_stream(dedup_exact_stream(iter_record_chunks(path, chunk_size=4), cfg),
                                tmp_path / "stream.jsonl", "dedup")
    assert tally.summary() == whole.summary() == "dedup: kept 8 of 21; exact_duplicate: 13"
    assert tally.info == whole.info
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()


def test_dedup_cli_streams_exact_and_keeps_near_path(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    write_jsonl(_dups(20), path)
    main(["data", "dedup", str(path), "-o", str(tmp_path / "exact.jsonl"), "--mode", "exact"])
    assert "dedup: kept 8 of 21; exact_duplicate: 13" in capsys.readouterr().out
    main(["data", "dedup", str(path), "-o", str(tmp_path / "near.jsonl"), "--field", "answer"])
    assert "near_duplicate: " in capsys.readouterr().out  # near mode runs too (streamed in passes)
    from sftlab.curate.dedup import dedup_exact_stream

    with pytest.raises(UserError, match="only mode=exact"):
        next(dedup_exact_stream([[]], {"mode": "near"}))


def test_iter_records_is_lazy(tmp_path):
    """The first chunk arrives before the reader reaches a bad line further down: the file is not read whole."""
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(rec(f"x{i}", "Q", GOOD)) for i in range(4)) + "\n{broken\n")
    chunks = iter_records([path], chunk_size=2)
    assert [r["id"] for r in next(chunks)[0]] == ["x0", "x1"]
    assert [r["id"] for r in next(chunks)[0]] == ["x2", "x3"]
    with pytest.raises(UserError, match="line 5"):
        next(chunks)
