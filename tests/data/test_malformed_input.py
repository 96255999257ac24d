"""The malformed-input corpus (tests/data/malformed_corpus.py) through every `sftlab data` command: no traceback
anywhere, one-line errors, and with `--on-error skip` kept + rejected = the records the file holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from malformed_corpus import write_corpus  # noqa: E402

from sftlab.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def run(capsys, argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _check_one_line(code, out, err, argv):
    assert "Traceback" not in out + err, argv
    assert "internal error" not in err, (argv, err)
    assert code == 2, (argv, code, out, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, (argv, err)


def _no_constants(c: str) -> None:
    raise AssertionError(f"invalid JSON constant {c} written")


def test_skip_mode_accounts_for_every_record(corpus, tmp_path, capsys):
    for entry in corpus:
        f, rows = entry["file"], entry["rows"]
        out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
        for argv in (["data", "convert", f, "-o", out, "--on-error", "skip", "--rejects", rejects],
                     ["data", "inspect", f, "--on-error", "skip", "--rejects", rejects]):
            rejects.unlink(missing_ok=True)
            code, stdout, err = run(capsys, argv)
            assert "Traceback" not in stdout + err and "internal error" not in err, (argv, err)
            if rows is None:  # the whole file is refused: one line, nothing written
                _check_one_line(code, stdout, err, argv)
                assert not rejects.exists()
                continue
            n_rejected = len(rejects.read_text(encoding="utf-8").splitlines())
            if argv[1] == "convert":
                kept = int(re.search(r"wrote (\d+) records", stdout)[1])
                assert kept == len(out.read_text(encoding="utf-8").splitlines())
            else:
                kept = sum(i for i in map(int, re.findall(r"^(\d+) records \(", stdout, re.M)))
            assert kept + n_rejected == rows, (argv, kept, n_rejected, rows, stdout, err)
            assert n_rejected >= 1, (f, "every corpus file has a defect")
            assert code == (2 if kept == 0 else 0), (argv, code, err)
            for line in rejects.read_text(encoding="utf-8").splitlines():
                json.loads(line, parse_constant=_no_constants)


def _commands(f: str, tmp: Path, tiny: Path) -> list[list]:
    missing = tmp / "no-such-model"
    (tmp / "pipe.yaml").write_text(json.dumps({"inputs": [f], "output": str(tmp / "p.jsonl"),
                                               "steps": [{"clean": {}}]}), encoding="utf-8")
    return [
        ["data", "convert", f, "-o", tmp / "c.jsonl"],
        ["data", "inspect", f],
        ["data", "clean", f, "-o", tmp / "c.jsonl"],
        ["data", "dedup", f, "-o", tmp / "d.jsonl"],
        ["data", "split", f, "-o", tmp / "split"],
        ["data", "embed", f, "-o", tmp / "e.npz"],
        ["data", "stats", f, "-o", tmp / "stats"],
        ["data", "mix", f, "-o", tmp / "m.jsonl"],
        ["data", "pipeline", tmp / "pipe.yaml"],
        ["data", "select", "kcenter", f, "-o", tmp / "k.jsonl", "--k", "1"],
        ["data", "select", "cluster", f, "-o", tmp / "k.jsonl", "--n-clusters", "1"],
        ["data", "select", "ifd", f, "-o", tmp / "k.jsonl", "--model", missing],
        ["data", "select", "reward", f, "-o", tmp / "k.jsonl", "--model", missing],
        ["data", "select", "mods", f, "-o", tmp / "k.jsonl", "--reward-model", missing],
    ]


# Files whose only defect is an empty answer: `clean` (alone or in a pipeline) accepts them and drops
# those records with the reason empty_answer (docs/curation.md).
CLEAN_ACCEPTS = ("empty_answer.jsonl", "csv_missing_answer.csv")


# The default suite runs every command on these (one per kind of defect); the slow test runs the whole corpus.
SAMPLE = ("truncated_line.jsonl", "tool_args_not_json.jsonl", "nan_values.jsonl", "lone_surrogate.jsonl",
          "deep_nesting.jsonl", "utf16_jsonl.jsonl", "binary.jsonl", "empty.jsonl", "deep_array.json",
          "csv_unterminated_quote.csv", "preference_pairs.jsonl", "empty_answer.jsonl")


def test_every_data_command_fails_with_one_line(corpus, tmp_path, capsys, tiny_model_dir):
    _every_command([e for e in corpus if e["file"].endswith(SAMPLE)], tmp_path, capsys, tiny_model_dir)


@pytest.mark.slow
def test_every_data_command_fails_with_one_line_whole_corpus(corpus, tmp_path, capsys, tiny_model_dir):
    _every_command(corpus, tmp_path, capsys, tiny_model_dir)


def _every_command(corpus, tmp_path, capsys, tiny_model_dir):
    assert corpus
    for entry in corpus:
        for argv in _commands(entry["file"], tmp_path, tiny_model_dir):
            code, out, err = run(capsys, argv)
            if argv[1] in ("clean", "pipeline") and entry["file"].endswith(CLEAN_ACCEPTS):
                assert code == 0 and "empty_answer: 1" in out, (argv, out, err)
                continue
            _check_one_line(code, out, err, argv)


def test_render_never_tracebacks(corpus, tmp_path, capsys, tiny_model_dir):
    for entry in corpus:
        for index in (0, 1):
            argv = ["data", "render", entry["file"], "--tokenizer", tiny_model_dir, "--index", index, "--plain"]
            code, out, err = run(capsys, argv)
            assert "Traceback" not in out + err and "internal error" not in err, (argv, err)
            assert code in (0, 2), (argv, code, err)
            if code == 2:
                assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) == 1, (argv, err)
            else:
                assert "── record" in out
