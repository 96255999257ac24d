"""`sftlab data convert` streams: reading in small chunks writes the same bytes (records and rejects) as
converting the whole list at once, and a failed run leaves neither OUT nor OUT.tmp behind."""

from __future__ import annotations

import json

from cli_helpers import run_cli

from sftlab.data.formats import read_many_detailed, write_rejects
from sftlab.data.records import write_jsonl


def _alpaca(path, start: int, n: int) -> None:
    """n alpaca rows with non-ASCII text; every 4th lacks its output (a reject under --on-error skip)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            row = {"instruction": f"Question {i}: où est Paris? 问题", "input": "", "output": f"Paris ({i}) ✓"}
            if i % 4 == 0:
                del row["output"]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def test_convert_streamed_in_small_chunks_is_byte_identical(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _alpaca(a, 0, 13)
    _alpaca(b, 13, 11)
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(["data", "convert", a, b, "-o", out, "--on-error", "skip", "--chunk-size", "3",
                                 "--warn-rejected-share", "0.5"], capsys)
    assert code == 0, err
    records, rejects, _ = read_many_detailed([a, b], on_error="skip")
    assert len(records) == 18 and len(rejects) == 6  # several chunks, rejects spread across them
    write_jsonl(records, tmp_path / "want.jsonl")
    write_rejects(rejects, tmp_path / "want.rejects.jsonl")
    assert out.read_bytes() == (tmp_path / "want.jsonl").read_bytes()
    assert (tmp_path / "out.jsonl.rejects.jsonl").read_bytes() == (tmp_path / "want.rejects.jsonl").read_bytes()
    assert "wrote 18 records" in stdout
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_convert_error_mid_stream_leaves_old_out_and_no_tmp(tmp_path, capsys):
    a = tmp_path / "a.jsonl"
    _alpaca(a, 1, 9)  # row 4 (line 4) lacks its output: with --on-error raise it stops after two chunks
    out = tmp_path / "out.jsonl"
    out.write_text("old\n", encoding="utf-8")
    code, _, err = run_cli(["data", "convert", a, "-o", out, "--chunk-size", "2"], capsys)
    assert code == 2 and "error:" in err and "line 4" in err
    assert out.read_text(encoding="utf-8") == "old\n"
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_convert_to_parquet_writes_parquet(tmp_path, capsys):
    """-o OUT.parquet writes Parquet as every curation command does (it wrote JSONL text into OUT.parquet, which
    no reader could open); reading it back gives the same records as the JSONL output."""
    a = tmp_path / "a.jsonl"
    _alpaca(a, 0, 13)
    for out in (tmp_path / "out.parquet", tmp_path / "out.jsonl"):
        code, _, err = run_cli(["data", "convert", a, "-o", out, "--on-error", "skip", "--chunk-size", "3",
                                "--warn-rejected-share", "0.5"], capsys)
        assert code == 0, err
    assert (tmp_path / "out.parquet").read_bytes()[:4] == b"PAR1"
    code, _, err = run_cli(["data", "convert", tmp_path / "out.parquet", "-o", tmp_path / "back.jsonl"], capsys)
    assert code == 0, err
    assert (tmp_path / "back.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
