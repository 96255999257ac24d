"""split (stratified, id-hash deterministic, leakage) and select kcenter / cluster on embeddings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from cli_helpers import run_sftlab, write_lines
from record_helpers import rec

from sftlab.curate.mix import largest_remainder, mix_records
from sftlab.curate.select import cluster_select, covering_radius, kcenter_greedy, kcenter_select
from sftlab.curate.split import split_records
from sftlab.errors import UserError


def _records(n=400):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(words, 12)) + f" item{i}"
        out.append(rec(f"id{i}", prompt, f"answer {i}", task_type="math" if i % 4 == 0 else "chat"))
    return out


def test_split_stratified_and_deterministic_by_id():
    recs = _records()
    parts, dropped, info = split_records(recs, {"val": 0.1, "test": 0.1, "leakage": "off"})
    assert not dropped and sum(len(v) for v in parts.values()) == len(recs)
    for t, n in (("math", 100), ("chat", 300)):
        assert sum(r["task_type"] == t for r in parts["val"]) == round(0.1 * n)
        assert sum(r["task_type"] == t for r in parts["test"]) == round(0.1 * n)
    # same split whatever the input order; another seed gives another split
    parts2, _, _ = split_records(list(reversed(recs)), {"val": 0.1, "test": 0.1, "leakage": "off"})
    assert {r["id"] for r in parts["test"]} == {r["id"] for r in parts2["test"]}
    parts3, _, _ = split_records(recs, {"val": 0.1, "test": 0.1, "leakage": "off", "seed": 1})
    assert {r["id"] for r in parts["test"]} != {r["id"] for r in parts3["test"]}
    assert all(r["meta"]["split"] == "val" for r in parts["val"])


def test_split_leakage_removed_from_val_and_test():
    recs = _records()
    parts, _, _ = split_records(recs, {"val": 0.1, "test": 0.1, "leakage": "off"})
    train_prompt = parts["train"][0]["messages"][0]["content"]
    test_id, val_id = parts["test"][0]["id"], parts["val"][0]["id"]
    for r in recs:  # plant an exact (case-changed) and a near copy of a train prompt in test and val
        if r["id"] == test_id:
            r["messages"][0]["content"] = train_prompt.upper()
        if r["id"] == val_id:
            r["messages"][0]["content"] = train_prompt + " extra"
    parts, dropped, info = split_records(recs, {"val": 0.1, "test": 0.1})
    reasons = {d["id"]: (d["reason"], d["leaks_with"], d["leaks_into"]) for d in dropped}
    assert reasons[test_id][0] == "leak_exact" and reasons[val_id][0] == "leak_near"
    assert reasons[test_id][2] == "train" and info["leaked"] >= 2
    assert test_id not in {r["id"] for r in parts["test"]} and val_id not in {r["id"] for r in parts["val"]}


def test_split_bad_fractions():
    with pytest.raises(UserError, match="val \\+ test"):
        split_records(_records(10), {"val": 0.6, "test": 0.5})


def _points():
    rng = np.random.default_rng(0)
    return rng.normal(size=(14, 3))


def test_kcenter_within_twice_optimum_better_than_random_deterministic():
    x = _points()
    k = 3
    chosen, r = kcenter_greedy(x, k, seed=0)
    assert r == pytest.approx(covering_radius(x, chosen))
    opt = min(covering_radius(x, c) for c in itertools.combinations(range(len(x)), k))
    assert r <= 2 * opt + 1e-12
    rng = np.random.default_rng(1)
    rand = np.mean([covering_radius(x, rng.choice(len(x), k, replace=False)) for _ in range(200)])
    assert r < rand
    assert kcenter_greedy(x, k, seed=0) == (chosen, r)


def test_kcenter_radius_stop_and_select_records():
    x = _points()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    recs = [rec(f"p{i}", "q", "a") for i in range(len(x))]
    res = kcenter_select(recs, x, {"radius": 0.3})
    # every record within cosine distance 0.3 of a kept one
    kept = [int(r["id"][1:]) for r in res.kept]
    cos_d = 1 - x @ x[kept].T
    assert cos_d.min(1).max() <= 0.3 + 1e-9 and len(res.kept) < len(recs)
    assert sorted(r["meta"]["kcenter_rank"] for r in res.kept) == list(range(len(kept)))
    with pytest.raises(UserError, match=r"^select kcenter: give k or radius$"):  # not "option 'options'"
        kcenter_select(recs, x, {})


def test_cluster_sample_one_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[5, 0], [0, 5], [-5, -5]], dtype=float)
    x = np.concatenate([c + rng.normal(scale=0.1, size=(10, 2)) for c in centres])
    recs = [rec(f"p{i}", "q", "a") for i in range(len(x))]
    res = cluster_select(recs, x, {"n_clusters": 3, "per_cluster": 2})
    groups = sorted(int(r["id"][1:]) // 10 for r in res.kept)
    assert groups == [0, 0, 1, 1, 2, 2]
    assert cluster_select(recs, x, {"n_clusters": 3}).kept == cluster_select(recs, x, {"n_clusters": 3}).kept


def test_mix_ratios_general_share_and_seed():
    recs = [rec(f"m{i}", "q", "a", task_type="math/arith") for i in range(50)]
    recs += [rec(f"c{i}", "q", "a", task_type="code") for i in range(50)]
    recs += [rec(f"x{i}", "q", "a", task_type="other") for i in range(10)]
    gen = [rec(f"g{i}", "q", "a", task_type="web") for i in range(30)]
    res = mix_records(recs, {"weights": {"math": 3, "code": 1}, "total": 50, "general_fraction": 0.2, "seed": 3},
                      general=gen)
    groups = [r["meta"]["mix_group"] for r in res.kept]
    assert groups.count("math") == 30 and groups.count("code") == 10 and groups.count("general") == 10
    assert sum(d["reason"] == "task_type_not_in_weights" for d in res.dropped) == 10
    again = mix_records(recs, {"weights": {"math": 3, "code": 1}, "total": 50, "general_fraction": 0.2, "seed": 3},
                        general=gen)
    assert again.kept == res.kept
    other = mix_records(recs, {"weights": {"math": 3, "code": 1}, "total": 50, "general_fraction": 0.2, "seed": 4},
                        general=gen)
    assert {r["id"] for r in other.kept} != {r["id"] for r in res.kept}
    up = mix_records(recs, {"weights": {"other": 1}, "total": 25, "upsample": True})
    assert len(up.kept) == 25 and sum("mix_copy_of" in r["meta"] for r in up.kept) == 15
    assert [r["meta"]["mix_group"] for r in up.kept] == ["other"] * 25  # copies are counted in their group too
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    with pytest.raises(UserError, match=r"weight 'maths' matches no task_type of the input"):  # a typo
        mix_records(recs, {"weights": {"maths": 3, "code": 1}, "total": 50})
    assert len(mix_records(recs, {"weights": {"maths": 0, "code": 1}, "total": 5}).kept) == 5  # weight 0: no share


def test_kcenter_stream_matches_list_and_cli_reads_no_list(tmp_path, capsys, monkeypatch):
    from sftlab.cli import main
    from sftlab.curate import files as curate_io
    from sftlab.curate.embed import save_embeddings
    from sftlab.curate.files import iter_record_chunks, load_records
    from sftlab.curate.select import kcenter_select_stream
    from sftlab.curate.step import write_result, write_result_stream
    from sftlab.data.records import write_jsonl

    recs = _records(50)
    emb = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    path = tmp_path / "in.jsonl"
    write_jsonl(recs, path)
    whole = kcenter_select(load_records(path), emb, {"k": 7, "seed": 3})
    write_result(whole, tmp_path / "list.jsonl")
    tally = write_result_stream(kcenter_select_stream(lambda: iter_record_chunks(path, chunk_size=6), emb,
                                                      {"k": 7, "seed": 3}), tmp_path / "stream.jsonl", "select_kcenter")
    assert tally.summary() == whole.summary() and "kept 7 of 50" in tally.summary()
    assert tally.info == whole.info  # the covering radius and the count, as the list path reports them
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()
    with pytest.raises(UserError, match="49 embeddings for more records"):
        list(kcenter_select_stream(lambda: iter_record_chunks(path, chunk_size=6), emb[:49], {"k": 2}))
    # the CLI: embeddings of the records in a shuffled .npz, two passes, never the whole list
    order = np.random.default_rng(2).permutation(50)
    save_embeddings(tmp_path / "e.npz", [recs[i]["id"] for i in order], emb[order])
    monkeypatch.setattr(curate_io, "load_records", None)
    main(["data", "select", "kcenter", str(path), "-o", str(tmp_path / "cli.jsonl"), "--k", "7", "--seed", "3",
          "--embeddings", str(tmp_path / "e.npz")])
    assert whole.summary() in capsys.readouterr().out
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "list.jsonl").read_bytes()


def test_kcenter_greedy_holds_one_float64_copy():
    """Each pick costs one matrix-vector product: no N x dim temporary per iteration (2 * x @ c did one: 8x slower)."""
    import tracemalloc

    emb = np.random.default_rng(0).normal(size=(20000, 64)).astype(np.float32)
    tracemalloc.start()
    kcenter_greedy(emb, 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.3 * emb.size * 8  # the float64 copy (10 MB) + vectors of N, not a second copy


@pytest.mark.parametrize("pick", ["closest", "random"])
def test_cluster_stream_matches_list_and_cli_reads_no_list(tmp_path, capsys, monkeypatch, pick):
    from sftlab.cli import main
    from sftlab.curate import files as curate_io
    from sftlab.curate.embed import save_embeddings
    from sftlab.curate.files import iter_record_chunks, load_records
    from sftlab.curate.select import cluster_select_stream
    from sftlab.curate.step import write_result, write_result_stream
    from sftlab.data.records import write_jsonl

    recs = _records(60)
    emb = np.random.default_rng(4).normal(size=(60, 8)).astype(np.float32)
    path = tmp_path / "in.jsonl"
    write_jsonl(recs, path)
    cfg = {"n_clusters": 5, "per_cluster": 2, "pick": pick, "seed": 1}
    whole = cluster_select(load_records(path), emb, cfg)
    write_result(whole, tmp_path / "list.jsonl")
    tally = write_result_stream(cluster_select_stream(lambda: iter_record_chunks(path, chunk_size=9), emb, cfg),
                                tmp_path / "stream.jsonl", "select_cluster")
    assert tally.summary() == whole.summary() and "kept 10 of 60" in tally.summary() and tally.info == whole.info
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()
    with pytest.raises(UserError, match="needs one answer perplexity per record"):
        next(cluster_select_stream(lambda: [], emb, {**cfg, "band": "middle"}))
    save_embeddings(tmp_path / "e.npz", [r["id"] for r in recs], emb)
    monkeypatch.setattr(curate_io, "load_records", None)
    main(["data", "select", "cluster", str(path), "-o", str(tmp_path / "cli.jsonl"), "--n-clusters", "5",
          "--per-cluster", "2", "--pick", pick, "--seed", "1", "--embeddings", str(tmp_path / "e.npz")])
    assert whole.summary() in capsys.readouterr().out
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "list.jsonl").read_bytes()


@pytest.mark.parametrize(("args", "cfg"), [
    (["--weight", "math=3", "--weight", "code=1", "--total", "50", "--general-fraction", "0.2", "--seed", "3"],
     {"weights": {"math": 3, "code": 1}, "total": 50, "general_fraction": 0.2, "seed": 3}),
    (["--weight", "other=1", "--weight", "code=1", "--total", "60", "--upsample"],
     {"weights": {"other": 1, "code": 1}, "total": 60, "upsample": True}),
    ([], {})])
def test_mix_cli_streams_same_bytes_as_mix_records(tmp_path, capsys, monkeypatch, args, cfg):
    """`data mix` plans from task types and counts, then re-reads the inputs to write: same files and summary as
    mix_records on the lists (kept: taken, general, copies; dropped: unmatched, not sampled, general)."""
    from sftlab.cli import main
    from sftlab.curate import files as curate_io
    from sftlab.curate.files import load_records
    from sftlab.curate.step import write_result
    from sftlab.data.records import write_jsonl

    recs = [rec(f"m{i}", f"q{i}", "a", task_type="math/arith") for i in range(2500)]
    recs += [rec(f"c{i}", f"q{i}", "a", task_type="code") for i in range(50)]
    recs += [rec(f"x{i}", f"q{i}", "a", task_type="other") for i in range(10)]
    recs = [recs[i] for i in np.random.default_rng(0).permutation(len(recs))]  # task types spread over chunks
    write_jsonl(recs, tmp_path / "in.jsonl")
    write_jsonl([rec(f"g{i}", f"q{i}", "a", task_type="web") for i in range(30)], tmp_path / "gen.jsonl")
    whole = mix_records(load_records(tmp_path / "in.jsonl"), cfg, general=load_records(tmp_path / "gen.jsonl"))
    write_result(whole, tmp_path / "list.jsonl")
    monkeypatch.setattr(curate_io, "load_records", None)
    main(["data", "mix", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "cli.jsonl"), "--general",
          str(tmp_path / "gen.jsonl"), *args])
    assert f"{whole.summary()} -> " in capsys.readouterr().out
    for name in ("", ".dropped"):
        assert (tmp_path / f"cli{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()


@pytest.mark.parametrize("strategy", [None, "dmt"])
def test_mix_general_ids_stay_distinct_from_the_inputs(tmp_path, capsys, strategy):
    """A --general file named like an input (en/train.json, zh/train.json) gets its own path-tail ids, as one read
    of both would give; a general record with an input record's id is refused instead of written twice."""
    import json

    from cli_helpers import run_cli

    from sftlab.data.records import write_jsonl

    for lang in ("en", "zh"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "train.json").write_text(json.dumps(
            [{"instruction": f"{lang} q{i}", "output": f"a{i}"} for i in range(20)]))
    how = ["--strategy", "dmt", "--dmt-k", "1"] if strategy else ["--general-fraction", "0.5"]
    out = tmp_path / ("stages" if strategy else "mix.jsonl")
    code, _, err = run_cli(["data", "mix", tmp_path / "en" / "train.json", "-o", out, "--general",
                            tmp_path / "zh" / "train.json", *how], capsys)
    assert code == 0, err
    files = sorted(out.glob("*.jsonl")) if strategy else [out]
    for f in files:
        ids = [json.loads(line)["id"] for line in f.read_text().splitlines()]
        assert len(ids) == len(set(ids)), f
    assert {i.split("-")[0] for i in ids} == {"en/train", "zh/train"}

    write_jsonl([rec(f"r{i}", f"q{i}", "a") for i in range(5)], tmp_path / "in.jsonl")
    write_jsonl([rec(f"r{i}", f"g{i}", "a") for i in range(3)], tmp_path / "gen.jsonl")
    code, _, err = run_cli(["data", "mix", tmp_path / "in.jsonl", "-o", tmp_path / "bad", "--general",
                            tmp_path / "gen.jsonl", *how], capsys)
    assert code == 2 and "id 'r0' is used by an input record and by a general record" in err
    assert "Traceback" not in err and not list(tmp_path.glob("bad*"))


def test_kcenter_embeddings_that_are_not_an_embed_npz_are_one_line_errors(tmp_path, capsys):
    """--embeddings given a records file, a bare .npy, an archive without ids or with too few rows: one line naming
    the file (was an internal error: pickled data / KeyError / IndexError)."""
    from cli_helpers import run_cli

    from sftlab.data.records import write_jsonl

    write_jsonl(_records(6), tmp_path / "in.jsonl")
    np.save(tmp_path / "arr.npy", np.zeros((6, 4)))
    np.savez(tmp_path / "noids.npz", x=np.zeros(3))
    np.savez(tmp_path / "short.npz", ids=np.array([f"id{i}" for i in range(6)]), embeddings=np.zeros((5, 4)))
    for bad in ("in.jsonl", "arr.npy", "noids.npz", "short.npz", "missing.npz"):
        code, _, err = run_cli(["data", "select", "kcenter", tmp_path / "in.jsonl", "-o", tmp_path / "k.jsonl",
                                "--k", "2", "--embeddings", tmp_path / bad], capsys)
        assert code == 2 and err.startswith(f"error: {tmp_path / bad}: ") and "internal" not in err, (bad, err)


# -- an English-only embedding model on Chinese text warns (the data-path audit, issue 15) -------------------


def test_kcenter_warns_about_english_only_model(tmp_path, capsys, monkeypatch):
    import numpy as np

    import sftlab.curate.embed as embed

    monkeypatch.setattr(embed, "embed_records", lambda records, model, **k: np.eye(len(records), dtype=np.float32))
    rows = [{"instruction": f"English question number {i}", "output": "ok"} for i in range(5)]
    rows += [{"instruction": f"这是第{i}个中文问题", "output": "好"} for i in range(5)]
    path = write_lines(tmp_path / "mix.jsonl", rows)
    code, _, err = run_sftlab(capsys, "data", "select", "kcenter", path, "-o", tmp_path / "k.jsonl", "--k", "4")
    assert code == 0, err
    assert "5 of 10 texts (50%) are mostly non-Latin script" in err and "--embed-model multilingual" in err
    code, _, err = run_sftlab(capsys, "data", "select", "kcenter", path, "-o", tmp_path / "k.jsonl", "--k", "4",
                       "--embed-model", "multilingual")
    assert code == 0 and "non-Latin" not in err
    assert embed.resolve_model_path("multilingual") == embed.MULTILINGUAL_MODEL
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(json.dumps({"inputs": [str(path)], "output": str(tmp_path / "p.jsonl"),
                                "steps": [{"select_kcenter": {"k": 4}}]}), encoding="utf-8")
    code, _, err = run_sftlab(capsys, "data", "pipeline", pipe)
    assert code == 0 and "mostly non-Latin script" in err
