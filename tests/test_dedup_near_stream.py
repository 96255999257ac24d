"""Near dedup in passes (compact state: digests + a uint32 signature array, candidate rows re-read for the
exact Jaccard) writes the same kept and dropped rows as dedup_records on the whole list."""

from __future__ import annotations

import pytest
from test_curate_helpers import rec

from sftlab.cli import main
from sftlab.data.curate.dedup import dedup_near_stream, dedup_records
from sftlab.data.curate.io import iter_record_chunks, load_records, write_result, write_result_stream
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
        out.append(rec(f"d{i}", f"Prompt {i % 2}?", text))
    return out


@pytest.mark.parametrize(("field", "verify"), [("answer", True), ("both", True), ("answer", False)])
def test_dedup_near_stream_matches_dedup_records(tmp_path, field, verify):
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(40), path)
    cfg = {"mode": "near", "field": field, "verify": verify}
    whole = dedup_records(load_records(path), cfg)
    write_result(whole, tmp_path / "list.jsonl")
    summary = write_result_stream(dedup_near_stream(lambda: iter_record_chunks(path, chunk_size=4), cfg),
                                  tmp_path / "stream.jsonl", "dedup")
    assert summary == whole.summary()
    assert "near_duplicate" in summary and "exact_duplicate" in summary
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()


def test_dedup_cli_streams_near_keep_first(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(40), path)
    whole = dedup_records(load_records(path), {"mode": "near"})
    main(["data", "dedup", str(path), "-o", str(tmp_path / "near.jsonl")])
    assert whole.summary() in capsys.readouterr().out
    with pytest.raises(UserError, match="only mode=near"):
        next(dedup_near_stream(lambda: [[]], {"mode": "near", "keep": "score", "score_key": "s"}))
