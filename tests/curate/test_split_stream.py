"""`data split` in passes (compact state per record, candidate rows re-read for the exact Jaccard) writes the
same train / val / test / dropped files as split_records on the whole list, in any chunking."""

from __future__ import annotations

import json

import pytest
from record_helpers import rec

from sftlab.cli import main
from sftlab.curate.files import load_records, reread_record_chunks, save_records
from sftlab.curate.split import split_records, split_stream, write_split_stream
from sftlab.data.records import write_jsonl
from sftlab.errors import UserError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def _records(n: int) -> list[dict]:
    """Prompts repeated exactly (case changed), nearly (one word added), unrelated, and empty, in 3 task types,
    so every split gets copies of train prompts."""
    out = []
    for i in range(n):
        base = " ".join(WORDS[(i // 6 + k) % len(WORDS)] for k in range(10)) + f" group{i // 6}"
        prompt = [base, base.upper(), base + " extra", f"unrelated {i} " + " ".join(WORDS[: i % 7]), "...", base][i % 6]
        out.append(rec(f"s{i}", prompt, f"answer {i}", task_type=("math", "chat", "code")[i % 3]))
    return out


def _write_whole(records: list[dict], cfg: dict, out) -> dict:
    parts, dropped, info = split_records(records, cfg)
    for name, recs in parts.items():
        save_records(recs, out / f"{name}.jsonl")
    write_jsonl(dropped, out / "dropped.jsonl")
    return info


@pytest.mark.parametrize("cfg", [{"val": 0.2, "test": 0.2}, {"val": 0.25, "test": 0.1, "leakage": "exact"},
                                 {"val": 0.1, "test": 0.3, "threshold": 0.5, "seed": 7}, {"leakage": "off"}])
def test_split_stream_matches_split_records(tmp_path, cfg):
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(120), path)
    whole = _write_whole(load_records(path), cfg, tmp_path / "list")
    info = write_split_stream(split_stream(reread_record_chunks(path, chunk_size=7), cfg), tmp_path / "stream")
    assert info == whole
    if cfg.get("leakage") != "off":
        reasons = {json.loads(line)["reason"] for line in (tmp_path / "stream" / "dropped.jsonl").open()}
        assert reasons == ({"leak_exact"} if cfg.get("leakage") == "exact" else {"leak_exact", "leak_near"})
    for name in ("train", "val", "test", "dropped"):
        assert (tmp_path / "stream" / f"{name}.jsonl").read_bytes() == \
            (tmp_path / "list" / f"{name}.jsonl").read_bytes()


def test_split_stream_reads_candidates_only_when_needed(tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(60), path)
    calls = []
    read = reread_record_chunks(path, chunk_size=5)

    def counted():
        calls.append(1)
        return read()

    for cfg, passes in (({"leakage": "off"}, 2), ({"leakage": "exact"}, 2), ({}, 3)):
        calls.clear()
        for _ in split_stream(counted, cfg):
            pass
        assert len(calls) == passes, cfg


def test_split_cli_streams_and_warns_once(tmp_path, capsys):
    records = _records(60)
    records[3]["messages"][0]["content"] += " <|im_start|>"  # the reader warns about chat-control strings
    path = tmp_path / "in.jsonl"
    write_jsonl(records, path)
    whole = _write_whole(load_records(path), {}, tmp_path / "list")
    capsys.readouterr()
    main(["data", "split", str(path), "-o", str(tmp_path / "cli")])
    out, err = capsys.readouterr()
    assert f"train {whole['train']}, val {whole['val']}, test {whole['test']}; removed {whole['leaked']}" in out
    assert err.count("chat-control") == 1  # three passes over the input, one warning
    for name in ("train", "val", "test", "dropped"):
        assert (tmp_path / "cli" / f"{name}.jsonl").read_bytes() == (tmp_path / "list" / f"{name}.jsonl").read_bytes()


def test_split_stream_bad_record_late_writes_nothing(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in _records(40)] + ['{"id": "bad", "messages": "not a list"}']
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="line 41"):
        write_split_stream(split_stream(reread_record_chunks(path, chunk_size=4), {}), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_input_changed_between_passes_is_refused(tmp_path):
    """The passes match records by position: a file written to between them is refused, not misread."""
    path = tmp_path / "in.jsonl"
    write_jsonl(_records(30), path)
    read = reread_record_chunks(path, chunk_size=8)
    passes = []

    def read_chunks():
        if passes:  # something appends to the input while the step is between passes
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec(f"late{len(passes)}", "a late prompt", "a")) + "\n")
        passes.append(1)
        return read()

    with pytest.raises(UserError, match="changed while it was being read"):
        write_split_stream(split_stream(read_chunks, {}), tmp_path / "out")
    assert len(passes) == 2 and not (tmp_path / "out" / "train.jsonl").exists()
