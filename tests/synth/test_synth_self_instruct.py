"""self-instruct against a real HTTP teacher that plants near-copies of the seeds (English and Chinese)."""

from __future__ import annotations

import json

from synth_server import ScriptedTeacher  # noqa: E402

from sftlab.cli import main

SEEDS = {
    "writing": ["Write a short poem about the autumn sea at night.",
                "Compose a friendly email inviting colleagues to a Friday lunch.",
                "Draft a product description for a waterproof hiking backpack."],
    "zh_qa": ["请解释为什么天空在白天是蓝色的。", "简要介绍长城的历史和建造原因。", "如何在家里种植番茄？请给出步骤。"],
}
# What the teacher "invents": near-copies of seeds (must go), novel ones (must stay), filter bait.
PLANTED = {
    "writing": ["Write a short poem about the autumn sea at night please.",           # near copy
                "Compose a friendly email inviting colleagues to a Friday dinner.",   # near copy
                "Explain the rules of chess castling to a ten-year-old.",             # novel
                "Summarise the story of a heist film in three sentences.",            # novel
                "Draw a picture of a cat wearing boots.",                             # blocked keyword
                "Hi.",                                                                # too short
                "Explain the rules of chess castling to a ten-year-old child."],      # near copy of a kept one
    "zh_qa": ["请解释为什么天空在白天是蓝色的呢。",                                      # near copy
              "简要介绍长城的历史和修建原因。",                                          # near copy
              "列出三种提高睡眠质量的方法。",                                            # novel
              "比较火车和飞机出行的优缺点。",                                            # novel
              "给我一张猫的图片。",                                                     # blocked keyword (图片)
              "写一首关于春天的短诗。",                                                  # novel
              "用三句话总结西游记的故事。"],                                              # novel
}
NEAR = {"writing": 3, "zh_qa": 2}


def script(body: dict, choice: int) -> str:
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("Come up with"):
        kind = "zh_qa" if '"zh_qa"' in prompt else "writing"
        return "\n".join(f"{i}. {s}" for i, s in enumerate(PLANTED[kind], 1))
    if "睡眠" in prompt:
        return "I'm sorry, but as an AI language model I cannot help with that."  # clean: refusal
    if any("\u4e00" <= c <= "\u9fff" for c in prompt):
        return "这是一个认真的回答，包含几句有用的内容。"
    return f"Here is a careful answer to: {prompt[:40]} It has several useful sentences of content."


def test_self_instruct_drops_planted_near_copies(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"{t}-{i}", "task_type": t, "messages": [
        {"role": "user", "content": s}, {"role": "assistant", "content": "An answer."}]}, ensure_ascii=False) + "\n"
        for t, ss in SEEDS.items() for i, s in enumerate(ss)), encoding="utf-8")
    out = tmp_path / "si.jsonl"
    with ScriptedTeacher(script) as t:
        main(["synth", "self-instruct", str(seeds), "--teacher", t.base_url, "-n", "7", "--seed", "1", "-o", str(out)])
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "si.dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((tmp_path / "si.summary.json").read_text(encoding="utf-8"))
    generated = sum(len(v) for v in PLANTED.values())
    assert len(kept) + len(dropped) == generated == summary["generated"]
    for t in PLANTED:
        per = summary["per_task_type"][t]
        assert per["generated"] == len(PLANTED[t]) and per["dropped"]["near_duplicate"] == NEAR[t]
        assert per["kept"] + sum(per["dropped"].values()) == per["generated"]
    near = {d["instruction"] for d in dropped if d["reason"] == "near_duplicate"}
    assert near == {PLANTED["writing"][0], PLANTED["writing"][1], PLANTED["writing"][6],
                    PLANTED["zh_qa"][0], PLANTED["zh_qa"][1]}
    assert all(d["rouge_l"] >= 0.7 for d in dropped if d["reason"] == "near_duplicate")
    reasons = {d["instruction"]: d["reason"] for d in dropped}
    assert reasons["Hi."] == "too_short" and reasons["Draw a picture of a cat wearing boots."] == "blocked_keyword"
    assert reasons["给我一张猫的图片。"] == "blocked_keyword" and reasons["列出三种提高睡眠质量的方法。"] == "clean:refusal"
    assert {r["messages"][0]["content"] for r in kept} == {PLANTED["writing"][2], PLANTED["writing"][3],
                                                          *PLANTED["zh_qa"][3:4], *PLANTED["zh_qa"][5:]}
    assert len({r["id"] for r in kept} | {d["id"] for d in dropped}) == generated  # one id per candidate
    for r in kept:
        assert r["meta"]["synth"]["step"] == "self_instruct" and r["meta"]["synth"]["max_rouge_l"] < 0.7
        assert r["messages"][1]["content"].startswith(("Here is a careful answer", "这是"))


def test_rouge_tokenizer_is_public_and_matches_the_metric_tokenizer():
    from sftlab.eval import metrics
    from sftlab.synth.self_instruct import RougeL

    tok = metrics.RougeTokenizer()
    assert tok.tokenize("The Cat, sat!") == metrics.tokenize("The Cat, sat!")
    assert metrics._Tokenizer is metrics.RougeTokenizer  # old name still works on other branches
    assert isinstance(RougeL().scorer._tokenizer, metrics.RougeTokenizer)


def test_self_instruct_near_duplicates_across_task_types(tmp_path):
    """A candidate that copies another task_type's seed, or one kept under another task_type, is a near duplicate:
    the same prompt under two task_types is still a duplicate in the training data."""
    seeds = tmp_path / "seeds.jsonl"
    rows = [{"id": "a", "task_type": "alpha", "messages": [{"role": "user", "content": "Explain why the sky is blue."},
                                                           {"role": "assistant", "content": "Scattering."}]},
            {"id": "b", "task_type": "beta", "messages": [{"role": "user", "content": "What is 2 + 3?"},
                                                          {"role": "assistant", "content": "5"}]}]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = "1. Describe the process of photosynthesis in plants.\n2. Explain why the sky is blue."

    def script(body: dict, choice: int) -> str:
        return lines if body["messages"][-1]["content"].startswith("Come up with") else "A careful useful answer here."
    out = tmp_path / "si.jsonl"
    with ScriptedTeacher(script) as t:
        main(["synth", "self-instruct", str(seeds), "--teacher", t.base_url, "-n", "2", "-o", str(out)])
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    dropped = [json.loads(x) for x in (tmp_path / "si.dropped.jsonl").read_text().splitlines()]
    assert [(r["task_type"], r["messages"][0]["content"]) for r in kept] == [
        ("alpha", "Describe the process of photosynthesis in plants.")]
    assert sorted((d["task_type"], d["reason"], d["similar_to"]) for d in dropped) == [
        ("alpha", "near_duplicate", "Explain why the sky is blue."),
        ("beta", "near_duplicate", "Describe the process of photosynthesis in plants."),
        ("beta", "near_duplicate", "Explain why the sky is blue.")]


def test_self_instruct_identical_requests_get_distinct_seeds(tmp_path):
    """One seed instruction: every request shows the same few-shot example. A seeded teacher (same request + seed
    -> same reply, as vLLM) must still get a distinct seed per copy, else -n 16 yields only 4 new instructions."""
    import hashlib

    words = ["apple", "river", "quantum", "poetry", "market", "violin", "desert", "orbit", "garden", "ledger",
             "canyon", "sonnet"]

    def script(body: dict, choice: int) -> str:
        q = body["messages"][-1]["content"]
        h = hashlib.sha256(f"{q}|{body.get('seed')}|{choice}".encode()).digest()
        if not q.startswith("Come up with"):
            return "A useful answer with several words."
        return "\n".join(f"{k}. " + " ".join(f"{words[h[(k * 7 + j) % 32] % 12]}{h[(k * 5 + j) % 32]}"
                                              for j in range(6)) for k in range(1, 5))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"id": "s", "task_type": "essay", "messages": [
        {"role": "user", "content": "Write a limerick about a cat."}, {"role": "assistant", "content": "ok"}]}) + "\n")
    out = tmp_path / "si.jsonl"
    with ScriptedTeacher(script) as t:
        main(["synth", "self-instruct", str(seeds), "--teacher", t.base_url, "-n", "16", "--per-request", "4",
              "-o", str(out)])
        seeds_sent = [b["seed"] for b in t.bodies if b["messages"][-1]["content"].startswith("Come up with")]
    assert len(set(seeds_sent)) == len(seeds_sent) == 4
    assert len(out.read_text().splitlines()) == 16


def test_parse_instructions_skips_a_chatty_preamble_and_closing():
    from sftlab.synth.self_instruct import parse_instructions

    reply = ('Sure! Here are 3 new, diverse task instructions of the type "qa":\n\n1. Explain how tides work.\n'
             "2) Describe the life cycle of a frog.\n- List three causes of inflation.\n\nI hope these help!")
    assert parse_instructions(reply) == ["Explain how tides work.", "Describe the life cycle of a frog.",
                                         "List three causes of inflation."]
    assert parse_instructions("Explain tides.\nName a frog.") == ["Explain tides.", "Name a frog."]  # unnumbered
