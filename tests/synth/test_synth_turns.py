"""data turns: --split / --merge round trip, and pseudo multi-turn detection on planted real dialogues."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from pseudo_turns_corpus import planted

from sftlab.cli import main
from sftlab.curate.text import dominant_script

DIALOGUE = {"id": "d1", "task_type": "chat", "source": "t", "tools": None, "meta": {"k": 1}, "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "How many people live there?"},
    {"role": "assistant", "content": "About two million.", "loss_weight": 2.0},
    {"role": "user", "content": "And in the metro area?"},
    {"role": "assistant", "content": "About twelve million."}]}
SINGLE = {"id": "s1", "task_type": "chat", "source": "t", "tools": None, "meta": {}, "messages": [
    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_split_then_merge_round_trip(tmp_path):
    src = _write(tmp_path / "in.jsonl", [DIALOGUE, SINGLE])
    main(["data", "turns", str(src), "--split", "-o", str(tmp_path / "split.jsonl")])
    split = _read(tmp_path / "split.jsonl")
    assert [r["id"] for r in split] == ["d1-t0", "d1-t1", "d1-t2", "s1"]
    for t, rec in enumerate(split[:3]):
        assistants = [m for m in rec["messages"] if m["role"] == "assistant"]
        assert len(assistants) == t + 1 and rec["messages"][-1] == DIALOGUE["messages"][2 * t + 2]
        # only the last assistant turn is supervised: each turn is learned once, in its own sample
        assert all(m["loss_weight"] == 0.0 for m in assistants[:-1])
        assert rec["meta"]["turns"]["source_id"] == "d1" and rec["meta"]["k"] == 1
    main(["data", "turns", str(tmp_path / "split.jsonl"), "--merge", "-o", str(tmp_path / "merged.jsonl")])
    assert _read(tmp_path / "merged.jsonl") == [DIALOGUE, SINGLE]
    folded = _read(tmp_path / "merged.dropped.jsonl")
    assert [(f["id"], f["reason"], f["into"]) for f in folded] == [(f"d1-t{t}", "merged", "d1") for t in range(3)]


def test_split_skips_unsupervised_turns_and_merge_restores_them(tmp_path):
    """A loss_weight 0 assistant turn is history only: its own split sample would supervise nothing (not
    renderable: no_supervised_tokens). A dialogue with no supervised turn passes through whole."""
    quiet = json.loads(json.dumps(DIALOGUE))
    quiet["messages"][2]["loss_weight"] = 0.0
    silent = {**SINGLE, "id": "s0", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "loss_weight": 0.0},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!", "loss_weight": 0.0}]}
    src = _write(tmp_path / "in.jsonl", [quiet, silent])
    main(["data", "turns", str(src), "--split", "-o", str(tmp_path / "split.jsonl")])
    split = _read(tmp_path / "split.jsonl")
    assert [r["id"] for r in split] == ["d1-t1", "d1-t2", "s0"]
    assert all(r["messages"][-1].get("loss_weight", 1) > 0 for r in split[:2])
    main(["data", "turns", str(tmp_path / "split.jsonl"), "--merge", "-o", str(tmp_path / "merged.jsonl")])
    assert _read(tmp_path / "merged.jsonl") == [quiet, silent]  # complete: no meta.turns_incomplete


def test_turns_needs_exactly_one_mode(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [SINGLE])
    with pytest.raises(SystemExit) as e:
        main(["data", "turns", str(src), "--split", "--merge", "-o", str(tmp_path / "o.jsonl")])
    assert e.value.code == 2 and "exactly one of" in capsys.readouterr().err


def _real_data() -> Path:
    """The shared real data (conftest's place, or a `shared/` folder above the checkout)."""
    here = Path(__file__).resolve()
    for base in here.parents[2:5]:
        if (base / "shared" / "data" / "real" / "glaive_toolcall_en_demo.json").exists():
            return base / "shared" / "data" / "real"
    pytest.skip("shared real data (glaive_toolcall_en_demo.json) not found")


def _exchange_starts(messages: list[dict]) -> list[int]:
    return [k for k, m in enumerate(messages) if m["role"] == "user"] + [len(messages)]


def _called(messages: list[dict]) -> set[str]:
    return {c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}


def planted_dialogues(real_data_dir: Path) -> tuple[list[dict], set[str]]:
    """Real glaive tool-call dialogues, labelled by structure, not by embeddings. Many glaive dialogues switch
    topic after the first exchange themselves, so coherent = the longest prefix (>= 2 exchanges) in which every
    exchange calls the first exchange's function (e.g. area of a rectangle, then of a circle). Spliced = the first
    exchange of one such dialogue followed by the later exchanges of one that calls a different function."""
    from sftlab.data.formats import read_records

    records, _ = read_records(real_data_dir / "glaive_toolcall_en_demo.json")
    chains = []
    for r in records:
        starts = _exchange_starts(r["messages"])
        ex = [r["messages"][a:b] for a, b in zip(starts, starts[1:], strict=False)]
        first = _called(ex[0]) if ex else set()
        k = 1
        while first and k < len(ex) and _called(ex[k]) & first:
            k += 1
        if k >= 2:
            head = r["messages"][:starts[0]]  # system prompt, if any
            chains.append({**r, "messages": head + [m for e in ex[:k] for m in e], "fn": first})
    half = len(chains) // 2
    coherent = [{k: v for k, v in c.items() if k != "fn"} for c in chains[:half]]
    donors = chains[half:]
    spliced = []
    for i, a in enumerate(donors):
        b = next(d for d in donors[i + 1:] + donors[:i] if not d["fn"] & a["fn"])
        cut_a, cut_b = _exchange_starts(a["messages"])[1], _exchange_starts(b["messages"])[1]
        spliced.append({**{k: v for k, v in a.items() if k != "fn"}, "id": f"spliced-{i}",
                        "messages": a["messages"][:cut_a] + b["messages"][cut_b:],
                        "tools": (a.get("tools") or []) + (b.get("tools") or [])})
    return coherent + spliced, {r["id"] for r in spliced}


def test_detect_pseudo_multiturn_precision_recall(tmp_path):
    rows, spliced = planted_dialogues(_real_data())
    src = _write(tmp_path / "planted.jsonl", rows)
    main(["data", "turns", str(src), "--detect-pseudo", "-o", str(tmp_path / "scored.jsonl")])
    scored = _read(tmp_path / "scored.jsonl")
    assert len(scored) == len(rows)  # every record kept
    flagged = {r["id"] for r in scored if r["meta"]["pseudo_multiturn"]}
    tp = len(flagged & spliced)
    precision, recall = tp / max(1, len(flagged)), tp / len(spliced)
    print(f"pseudo multi-turn: {len(rows) - len(spliced)} coherent + {len(spliced)} spliced; "
          f"precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9
    assert all(isinstance(r["meta"]["pseudo_multiturn_coherence"], float) for r in scored)


def _precision_recall(scored: list[dict], spliced: set[str], prefix: str) -> tuple[float, float]:
    rows = [r for r in scored if r["id"].startswith(prefix)]
    flagged = {r["id"] for r in rows if r["meta"]["pseudo_multiturn"]}
    truth = {i for i in spliced if i.startswith(prefix)}
    tp = len(flagged & truth)
    return tp / max(1, len(flagged)), tp / len(truth)


def test_detect_pseudo_english_and_chinese(tmp_path, capsys):
    """Issue 35: one file of planted English and Chinese dialogues (24 coherent + 24 spliced each, spliced within a
    topic family, tests/synth/pseudo_turns_corpus.py). The shipped embedder is English-only; Chinese is judged by the
    lexical signal. Before: Chinese recall 0.13 (every Chinese text looked alike to MiniLM)."""
    rows, spliced = [], set()
    for lang in ("en", "zh"):
        r, s = planted(lang)
        rows, spliced = rows + r, spliced | s
    src = _write(tmp_path / "planted.jsonl", rows)
    main(["data", "turns", str(src), "--detect-pseudo", "-o", str(tmp_path / "scored.jsonl")])
    scored = _read(tmp_path / "scored.jsonl")
    assert "flagged pseudo multi-turn" in capsys.readouterr().out
    for lang in ("en", "zh"):
        precision, recall = _precision_recall(scored, spliced, lang)
        with capsys.disabled():  # shown with -s: the numbers docs/synthesis.md quotes
            print(f"pseudo multi-turn {lang}: precision {precision:.3f} recall {recall:.3f}")
        assert precision >= 0.85 and recall >= 0.85, (lang, precision, recall)


def test_detect_pseudo_chinese_needs_no_embedder(tmp_path, monkeypatch):
    """Chinese text never goes to the English-only default embedder (its similarities would be noise), so a
    Chinese data set is scored without sentence-transformers at all; a multilingual model, when given, reads it."""
    import sftlab.synth.turns as turns_mod
    from sftlab.synth.turns import detect_pseudo

    asked: list[str] = []

    def fake_embed(texts, model=None, **_):  # noqa: ANN001, ANN202
        asked.extend(texts)
        rng = np.random.default_rng(len(asked))
        vecs = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    monkeypatch.setattr(turns_mod, "embed_texts", fake_embed)
    rows, spliced = planted("zh")
    scored = detect_pseudo(rows)
    assert not [t for t in asked if dominant_script(t) == "cjk"]  # the default model is English-only
    precision, recall = _precision_recall(scored, spliced, "zh")
    assert precision >= 0.85 and recall >= 0.85
    asked.clear()
    detect_pseudo(rows, model="paraphrase-multilingual-MiniLM-L12-v2")
    assert sum(dominant_script(t) == "cjk" for t in asked) > 100


def test_detect_pseudo_too_little_text_is_not_scored(tmp_path, capsys):
    """Chance overlap is measured on other dialogues: with too few, a dialogue is left unscored (null), and the
    summary line says so, instead of a guess."""
    src = _write(tmp_path / "in.jsonl", [DIALOGUE, SINGLE])
    main(["data", "turns", str(src), "--detect-pseudo", "--embed-model", "none", "-o", str(tmp_path / "o.jsonl")])
    d1, s1 = _read(tmp_path / "o.jsonl")
    assert d1["meta"]["pseudo_multiturn"] is None and d1["meta"]["pseudo_multiturn_coherence"] is None
    assert s1["meta"]["pseudo_multiturn"] is False  # one exchange: nothing to be incoherent with
    assert "1 not scored" in capsys.readouterr().out


def test_detect_pseudo_old_threshold_option_says_what_replaced_it(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", [DIALOGUE])
    code, _, err = run_cli(["data", "turns", str(src), "--detect-pseudo", "--min-similarity", "0.35",
                            "-o", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "--min-coherence" in err
