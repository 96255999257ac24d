"""select ifd / reward on the tiny local model: batched scores equal an independent per-sample computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from record_helpers import rec

from sftlab.curate.ifd import ifd_scores, ifd_select
from sftlab.curate.reward import reward_scores, reward_select
from sftlab.curate.scoring import load_causal_lm


def _records():
    rs = [rec(f"r{i}", f"please add {i} and {i + 1}", f"the sum is {2 * i + 1}") for i in range(5)]
    rs.append(rec("long", "reverse the words: red green blue", "blue green red " * 6))
    rs.append({"id": "mt", "task_type": "general", "source": "t", "tools": None, "meta": {},
               "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                            {"role": "assistant", "content": "hello world"}, {"role": "user", "content": "count"},
                            {"role": "assistant", "content": "one two three"}]})
    return rs


def _independent_loss(model, tok, messages, answer_only):
    """Mean NLL of the last assistant message's tokens (up to and including <|im_end|>), one sample, no padding."""
    if answer_only:
        messages = [{"role": "user", "content": ""}, messages[-1]]
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    end = len(f_ids) - f_ids[::-1].index(tok.convert_tokens_to_ids("<|im_end|>"))
    with torch.no_grad():
        logits = model(torch.tensor([f_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    tgt = list(range(len(p_ids), end))
    return float(-logp[[t - 1 for t in tgt], [f_ids[t] for t in tgt]].mean())


def test_ifd_matches_independent_per_sample_computation(tiny_model_dir, tiny_tokenizer):
    model = load_causal_lm(str(tiny_model_dir))
    records = _records()
    ifd, lc, ld = ifd_scores(records, model, tiny_tokenizer, batch_size=3)
    for i, r in enumerate(records):
        c = _independent_loss(model, tiny_tokenizer, r["messages"], False)
        d = _independent_loss(model, tiny_tokenizer, r["messages"], True)
        assert abs(lc[i] - c) / c <= 1e-4 and abs(ld[i] - d) / d <= 1e-4
        assert abs(ifd[i] - c / d) / (c / d) <= 1e-4


def test_ifd_cut_direction(tiny_model_dir, tiny_tokenizer):
    records = _records()
    model = load_causal_lm(str(tiny_model_dir))
    ifd, _, _ = ifd_scores(records, model, tiny_tokenizer)
    max_ifd = float(np.median(ifd))  # force some records over the limit
    res = ifd_select(records, str(tiny_model_dir), {"max_ifd": max_ifd, "k": 2}, model=model,
                     tokenizer=tiny_tokenizer)
    by_id = {r["id"]: s for r, s in zip(records, ifd, strict=True)}
    kept = [r["id"] for r in res.kept]
    assert len(kept) == 2 and all(by_id[k] < max_ifd for k in kept)
    too_high = {d["id"] for d in res.dropped if d["reason"] == "ifd_too_high"}
    assert too_high == {i for i, s in by_id.items() if s >= max_ifd}
    below = [d["id"] for d in res.dropped if d["reason"] == "below_cut"]
    assert min(by_id[k] for k in kept) >= max(by_id[b] for b in below)  # the highest IFD are kept
    assert res.kept[0]["meta"]["ifd"] == pytest.approx(by_id[kept[0]], rel=1e-5)


@pytest.fixture(scope="module")
def tiny_reward_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_labels = 1
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    out = tmp_path_factory.mktemp("reward")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_reward_batched_equals_single_and_threshold(tiny_reward_dir):
    from sftlab.curate.reward import load_reward_model

    model, tok = load_reward_model(str(tiny_reward_dir))
    records = _records()
    batched = reward_scores(records, model, tok, batch_size=4)
    single = np.array([reward_scores([r], model, tok, batch_size=1)[0] for r in records])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    alpha = float(np.median(batched))
    res = reward_select(records, str(tiny_reward_dir), {"min_score": alpha}, model=model, tokenizer=tok)
    assert {r["id"] for r in res.kept} == {r["id"] for r, s in zip(records, batched, strict=True) if s >= alpha}
    assert all(d["reason"] == "below_min_score" and d["reward"] < alpha for d in res.dropped)


def test_reward_and_ifd_refuse_keep_fraction_together_with_k():
    """Both given: one would be ignored silently (select reward kept the top fraction and dropped --k)."""
    from sftlab.curate.config import parse_config
    from sftlab.curate.ifd import IFDConfig
    from sftlab.curate.reward import RewardConfig
    from sftlab.errors import UserError

    for cls, step in ((RewardConfig, "select reward"), (IFDConfig, "select ifd")):
        with pytest.raises(UserError, match="give keep_fraction or k, not both"):
            parse_config(cls, step, {"keep_fraction": 0.5, "k": 3})


def test_ifd_and_reward_stream_write_what_the_list_paths_write(tiny_model_dir, tiny_tokenizer, tiny_reward_dir,
                                                               tmp_path, monkeypatch):
    from sftlab.curate import scoring
    from sftlab.curate.files import iter_record_chunks, load_records
    from sftlab.curate.ifd import ifd_select_stream
    from sftlab.curate.reward import load_reward_model, reward_select_stream
    from sftlab.curate.step import write_result, write_result_stream
    from sftlab.data.records import write_jsonl

    model = load_causal_lm(str(tiny_model_dir))
    records = _records()
    tok = tiny_tokenizer
    whole_window = ifd_scores(records, model, tok, batch_size=2)
    monkeypatch.setattr(scoring, "SCORE_WINDOW", 3)  # windows of 3 across read chunks of 2
    for a, b in zip(ifd_scores(records, model, tok, batch_size=2), whole_window, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)  # the window changes batches, not the scores
    path = tmp_path / "in.jsonl"
    write_jsonl(records, path)
    cfg = {"max_ifd": 100.0, "k": 4, "batch_size": 2}
    whole = ifd_select(load_records(path), str(tiny_model_dir), cfg, model=model, tokenizer=tok)
    write_result(whole, tmp_path / "ifd_list.jsonl")
    tally = write_result_stream(ifd_select_stream(lambda: iter_record_chunks(path, chunk_size=2), str(tiny_model_dir),
                                                  cfg, model=model, tokenizer=tok), tmp_path / "ifd_stream.jsonl",
                                "select_ifd")
    assert tally.summary() == whole.summary() == "select_ifd: kept 4 of 7; below_cut: 3" and tally.info == whole.info
    rm, rtok = load_reward_model(str(tiny_reward_dir))
    aligned = reward_scores(records, rm, rtok, batch_size=2)  # window 3 -> 4: whole batches of 2
    monkeypatch.setattr(scoring, "SCORE_WINDOW", 1024)
    assert aligned.tobytes() == reward_scores(records, rm, rtok, batch_size=2).tobytes()
    monkeypatch.setattr(scoring, "SCORE_WINDOW", 3)
    whole = reward_select(load_records(path), str(tiny_reward_dir), {"keep_fraction": 0.5, "batch_size": 2},
                          model=rm, tokenizer=rtok)
    write_result(whole, tmp_path / "rw_list.jsonl")
    write_result_stream(reward_select_stream(lambda: iter_record_chunks(path, chunk_size=2), str(tiny_reward_dir),
                                             {"keep_fraction": 0.5, "batch_size": 2}, model=rm, tokenizer=rtok),
                        tmp_path / "rw_stream.jsonl", "select_reward")
    for step in ("ifd", "rw"):
        for name in ("", ".dropped"):
            assert (tmp_path / f"{step}_stream{name}.jsonl").read_bytes() == \
                (tmp_path / f"{step}_list{name}.jsonl").read_bytes()


def test_ifd_and_reward_commands(tiny_model_dir, tiny_reward_dir, tmp_path, capsys, monkeypatch):
    from sftlab.cli import main
    from sftlab.curate import files
    from sftlab.curate.files import load_records
    from sftlab.data.records import write_jsonl

    path = tmp_path / "in.jsonl"
    write_jsonl(_records(), path)
    monkeypatch.setattr(files, "load_records", None)  # both commands stream: they never load the whole list
    cfg = tmp_path / "ifd.yaml"
    cfg.write_text("max_ifd: 100.0\nbatch_size: 4\n")
    main(["data", "select", "ifd", str(path), "-o", str(tmp_path / "ifd.jsonl"), "--model", str(tiny_model_dir),
          "--config", str(cfg), "--k", "3"])
    monkeypatch.undo()
    kept = load_records(tmp_path / "ifd.jsonl")
    assert len(kept) == 3 and all("ifd" in r["meta"] for r in kept)
    monkeypatch.setattr(files, "load_records", None)
    main(["data", "select", "reward", str(path), "-o", str(tmp_path / "rw.jsonl"), "--model", str(tiny_reward_dir),
          "--keep-fraction", "0.5"])
    out = capsys.readouterr().out
    assert "select_reward: kept 4 of 7" in out and "below_cut: 3" in out


def _mods_case(tiny_model_dir, tiny_reward_dir):
    """Records, embeddings, models and thresholds that put records in every MoDS stage."""
    from sftlab.curate.mods import _with_answer, generate_answers
    from sftlab.curate.reward import load_reward_model
    from sftlab.data.render import load_tokenizer

    rm, rtok = load_reward_model(str(tiny_reward_dir))
    lm, ltok = load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    records = _records() + [rec(f"x{i}", f"list {i} numbers", " ".join(map(str, range(i)))) for i in range(2, 7)]
    emb = np.random.default_rng(0).normal(size=(len(records), 8))
    scores = reward_scores(records, rm, rtok)
    alpha = float(np.quantile(scores, 0.25))
    good = [i for i in range(len(records)) if scores[i] >= alpha]
    # necessity threshold from the generated answers' scores, so that some but not all are "needed"
    answers = generate_answers([records[i] for i in good], lm, ltok, max_new_tokens=6)
    gen = reward_scores([_with_answer(records[i], a) for i, a in zip(good, answers, strict=True)], rm, rtok)
    beta = float(np.median(gen))
    cfg = {"alpha": alpha, "seed_k": 3, "beta": beta, "aug_k": 2, "max_new_tokens": 6}
    return records, emb, cfg, scores, (rm, rtok, lm, ltok)


def test_mods_quality_coverage_necessity(tiny_model_dir, tiny_reward_dir):
    from sftlab.curate.mods import mods_select

    records, emb, cfg, scores, (rm, rtok, lm, ltok) = _mods_case(tiny_model_dir, tiny_reward_dir)
    alpha, beta = cfg["alpha"], cfg["beta"]
    res = mods_select(records, emb, cfg, reward_model=rm, reward_tokenizer=rtok, necessity_model=lm,
                      necessity_tokenizer=ltok)
    stage = {r["id"]: r["meta"]["mods_stage"] for r in res.kept}
    assert list(stage.values()).count("seed") == 3 and list(stage.values()).count("augmented") == 2
    idx = {r["id"]: i for i, r in enumerate(records)}
    assert all(scores[idx[i]] >= alpha for i in stage)  # quality first
    for r in res.kept:
        if r["meta"]["mods_stage"] == "augmented":
            assert r["meta"]["mods_generated_reward"] < beta  # the fine-tuned model still answers it badly
    reasons = {d["id"]: d["reason"] for d in res.dropped}
    assert {i for i, s in reasons.items() if s == "low_quality"} == {r["id"] for r, s in zip(records, scores,
                                                                                             strict=True) if s < alpha}
    assert all(d["generated_reward"] >= beta - 1e-6 for d in res.dropped if d["reason"] == "not_necessary")


def test_mods_stream_writes_what_the_list_path_writes(tiny_model_dir, tiny_reward_dir, tmp_path, monkeypatch):
    from sftlab.curate import scoring
    from sftlab.curate.files import iter_record_chunks
    from sftlab.curate.mods import mods_select, mods_select_stream
    from sftlab.curate.step import write_result, write_result_stream
    from sftlab.data.records import write_jsonl

    records, emb, cfg, _, (rm, rtok, lm, ltok) = _mods_case(tiny_model_dir, tiny_reward_dir)
    whole = mods_select(records, emb, cfg, reward_model=rm, reward_tokenizer=rtok, necessity_model=lm,
                        necessity_tokenizer=ltok)
    monkeypatch.setattr(scoring, "SCORE_WINDOW", 3)  # windows of whole batches (2) across read chunks of 3
    cfg = {**cfg, "batch_size": 2}
    write_jsonl(records, tmp_path / "in.jsonl")
    write_result(mods_select(records, emb, cfg, reward_model=rm, reward_tokenizer=rtok, necessity_model=lm,
                             necessity_tokenizer=ltok), tmp_path / "list.jsonl")
    tally = write_result_stream(mods_select_stream(lambda: iter_record_chunks(tmp_path / "in.jsonl", chunk_size=3),
                                                   emb, cfg, reward_model=rm, reward_tokenizer=rtok,
                                                   necessity_model=lm, necessity_tokenizer=ltok),
                                tmp_path / "stream.jsonl", "select_mods")
    for name in ("", ".dropped"):
        assert (tmp_path / f"stream{name}.jsonl").read_bytes() == (tmp_path / f"list{name}.jsonl").read_bytes()
    assert tally.info == whole.info and tally.info["answered"] > 0 and tally.info["augmented"] == 2


def test_mods_command_without_necessity_stage(tiny_reward_dir, tmp_path, capsys, monkeypatch):
    from sftlab.cli import main
    from sftlab.curate import files
    from sftlab.curate.embed import save_embeddings
    from sftlab.curate.files import load_records
    from sftlab.data.records import write_jsonl

    records = _records()
    write_jsonl(records, tmp_path / "in.jsonl")
    save_embeddings(tmp_path / "e.npz", [r["id"] for r in records], np.eye(len(records), dtype=np.float32))
    monkeypatch.setattr(files, "load_records", None)  # the command streams: never the whole list
    main(["data", "select", "mods", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "m.jsonl"), "--reward-model",
          str(tiny_reward_dir), "--alpha", "-1000", "--seed-k", "3", "--embeddings", str(tmp_path / "e.npz")])
    monkeypatch.undo()
    kept = load_records(tmp_path / "m.jsonl")
    assert len(kept) == 3 and {r["meta"]["mods_stage"] for r in kept} == {"seed"}
    assert "not_selected: 4" in capsys.readouterr().out


def test_pipeline_scores_in_passes_without_the_list(tiny_model_dir, tiny_reward_dir, tmp_path, monkeypatch):
    import yaml

    from sftlab.curate import pipeline
    from sftlab.curate.files import load_records
    from sftlab.curate.reward import load_reward_model
    from sftlab.data.records import write_jsonl
    from sftlab.data.render import load_tokenizer

    write_jsonl(_records(), tmp_path / "in.jsonl")
    steps = [{"select_ifd": {"model": str(tiny_model_dir), "max_ifd": 100.0, "k": 5}},
             {"select_reward": {"model": str(tiny_reward_dir), "k": 3}}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"inputs": ["in.jsonl"], "output": "out.jsonl", "steps": steps}))

    def refuse(_read):
        raise AssertionError("the pipeline loaded the whole list for a step that streams")

    monkeypatch.setattr(pipeline, "_whole", refuse)
    monkeypatch.setattr(pipeline, "CHUNK", 2)
    report = pipeline.run_pipeline(tmp_path / "p.yaml", echo=lambda _line: None)
    monkeypatch.undo()
    model, tok = load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    first = ifd_select(_records(), str(tiny_model_dir), {"max_ifd": 100.0, "k": 5}, model=model, tokenizer=tok)
    rm, rtok = load_reward_model(str(tiny_reward_dir))
    second = reward_select(first.kept, str(tiny_reward_dir), {"k": 3}, model=rm, tokenizer=rtok)
    assert load_records(tmp_path / "out.jsonl") == second.kept
    assert report["steps"][0]["scored"] == 7 and report["output"] == 3
