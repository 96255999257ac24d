"""synth multi-turn --chain: related single-turn records joined into dialogues with the shipped MiniLM model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main

ROWS = [  # (id, task_type, question)
    ("s1", "qa", "How do I bake sourdough bread at home?"),
    ("p1", "qa", "What is a list comprehension in Python?"),
    ("s2", "qa", "How long should sourdough bread dough proof before baking?"),
    ("x1", "qa", "Who won the football world cup in 1998?"),
    ("p2", "qa", "How do I write a Python list comprehension with an if condition?"),
    ("s3", "qa", "Which flour is best for baking sourdough bread?"),
    ("c1", "chat", "How do I bake sourdough bread at home?"),  # same topic, other task_type: never chained
]


def _write(path: Path) -> Path:
    rows = [{"id": i, "task_type": t, "messages": [{"role": "user", "content": q},
                                                    {"role": "assistant", "content": f"Answer to {i}."}]}
            for i, t, q in ROWS]
    rows.append({"id": "m1", "task_type": "qa", "messages": [  # already multi-turn: passes through
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How do I feed a sourdough starter?"}, {"role": "assistant", "content": "Daily."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path: Path, *extra: str) -> tuple[list[dict], list[dict], dict]:
    out = tmp_path / "chained.jsonl"
    main(["synth", "multi-turn", str(_write(tmp_path / "in.jsonl")), "--chain", "-o", str(out), *extra])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "chained.dropped.jsonl").read_text().splitlines()]
    return kept, dropped, json.loads((tmp_path / "chained.summary.json").read_text())


def test_chain_joins_related_records_of_one_task_type(tmp_path, capsys):
    kept, dropped, summary = _run(tmp_path, "--max-turns", "3", "--seed", "0")
    assert "8 records -> 2 dialogues from 5 records, 3 passed through, 0 dropped" in capsys.readouterr().out
    chains = {r["id"]: r for r in kept if "synth" in (r.get("meta") or {})}
    sources = sorted(sorted(r["meta"]["synth"]["source_ids"]) for r in chains.values())
    assert sources == [["p1", "p2"], ["s1", "s2", "s3"]]
    for r in chains.values():
        ids = r["meta"]["synth"]["source_ids"]
        assert r["id"] == f"{ids[0]}-chain"
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * len(ids)
        assert [m["content"] for m in r["messages"][1::2]] == [f"Answer to {i}." for i in ids]
        assert all(s >= 0.5 for s in r["meta"]["synth"]["similarity_to_first"])
    passed = {r["id"] for r in kept if r["id"] not in chains}
    assert passed == {"x1", "c1", "m1"} and dropped == []
    assert summary["chains"] == 2 and summary["chained_records"] == 5 and summary["turns"] == {"3": 1, "2": 1}


def test_chain_max_turns_seed_and_only_chained(tmp_path):
    kept, dropped, _ = _run(tmp_path, "--max-turns", "2", "--only-chained", "--seed", "3")
    assert all(len(r["meta"]["synth"]["source_ids"]) == 2 for r in kept)
    covered = [i for r in kept for i in r["meta"]["synth"]["source_ids"]] + [d["id"] for d in dropped]
    assert sorted(covered) == sorted([i for i, _, _ in ROWS] + ["m1"])  # nothing lost, nothing twice
    reasons = {d["id"]: d["reason"] for d in dropped}
    assert reasons["x1"] == reasons["c1"] == "no_related_record" and reasons["m1"] == "not_single_turn"
    again, _, _ = _run(tmp_path, "--max-turns", "2", "--only-chained", "--seed", "3")
    assert again == kept  # deterministic with --seed


def test_multi_turn_without_teacher_or_chain_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "multi-turn", str(_write(tmp_path / "in.jsonl")), "-o", str(tmp_path / "o.jsonl")])
    assert e.value.code == 2 and "--teacher" in capsys.readouterr().err


def test_chain_never_joins_copies_of_one_question(tmp_path):
    """Duplicate records (alpaca_en_demo has 11 pairs) have cosine 1.0: chaining them made the user ask the same
    question twice. A copy may join a chain with other questions, or pass through."""
    from sftlab.synth.multiturn import chain_related

    def rec(i: str, q: str) -> dict:
        return {"id": i, "task_type": "qa", "source": "", "tools": None, "meta": {},
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"Answer to {i}."}]}
    recs = [rec("a", "How do I bake sourdough bread at home?"), rec("b", "How do I bake  sourdough bread at home?"),
            rec("c", "Which flour is best for baking sourdough bread?"),
            rec("d", "Describe the color yellow in 3 words."),
            rec("e", "describe the color yellow in 3 words.")]
    for seed in range(4):
        res = chain_related(recs, max_turns=3, seed=seed)
        for r in res.kept:
            users = [" ".join(m["content"].casefold().split()) for m in r["messages"] if m["role"] == "user"]
            assert len(users) == len(set(users)), (seed, users)
        assert {r["id"] for r in res.kept} >= {"d", "e"}  # only copies of each other: no chain
