"""best-of-n against a real HTTP teacher that is right only sometimes: chosen always verified, rejected never."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from synth_server import ScriptedTeacher, sometimes_right  # noqa: E402

from sftlab.cli import main
from sftlab.eval.metrics import last_number


def _prompts(path: Path, k: int = 24) -> Path:
    rows = [{"id": f"q{a}", "task_type": "math", "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"What is {a} + {a * 3 + 7}?"},
        {"role": "assistant", "content": f"The answer is {a + a * 3 + 7}."}]} for a in range(k)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _run(tmp_path: Path, url: str, out: str, *extra: str) -> Path:
    main(["synth", "best-of-n", str(_prompts(tmp_path / "prompts.jsonl")), "--teacher", url, "-n", "4",
          "--verifier", "numeric", "--seed", "3", "-o", str(tmp_path / out), *extra])
    return tmp_path / out


def _msgs(*texts: str) -> list[dict]:
    """Replies as verifiers get them: assistant messages."""
    return [{"role": "assistant", "content": t} for t in texts]


def _truth(prompt_text: str) -> int:
    a, b = map(int, re.search(r"(\d+) \+ (\d+)", prompt_text).groups())
    return a + b


def test_best_of_n_trl_pairs_chosen_correct_rejected_wrong(tmp_path):
    with ScriptedTeacher(sometimes_right) as t:
        out = _run(tmp_path, t.base_url, "bon")
        assert t.requests == 24 and all(b["n"] == 4 and b["seed"] == 3 for b in t.bodies)
    sft, pairs, dropped = (_lines(out / f) for f in ("sft.jsonl", "pairs.jsonl", "dropped.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    # k % 4 == 0 is never right -> dropped; k % 4 == 1 always right -> SFT but no pair; others mostly both
    assert {d["id"] for d in dropped} == {f"q{a}" for a in range(0, 24, 4)}
    assert all(d["reason"] == "no_reply_passed" and len(d["replies"]) == 4 for d in dropped)
    assert len(sft) + len(dropped) == 24 and summary["sft"] == len(sft) == 18
    for rec in sft:
        assert rec["messages"][-1]["role"] == "assistant" and rec["meta"]["synth"]["score"] == 1.0
        assert last_number(rec["messages"][-1]["content"]) == _truth(rec["messages"][1]["content"])
    assert summary["no_pair"]["no_pair_all_passed"] >= 6  # the always-right questions
    assert len(pairs) == summary["pairs"] >= 6
    for p in pairs:
        truth = _truth(p["prompt"][-1]["content"])
        assert [m["role"] for m in p["prompt"]] == ["system", "user"]
        assert last_number(p["chosen"][0]["content"]) == truth
        assert last_number(p["rejected"][0]["content"]) != truth
        assert p["meta"]["margin"] == 1.0 and p["meta"]["chosen_score"] == 1.0
    # same seed, same output
    url = summary["teacher"].rsplit(":", 1)[0]
    with ScriptedTeacher(sometimes_right) as t2:
        again = _run(tmp_path, t2.base_url, "bon2")
    for f in ("sft.jsonl", "pairs.jsonl", "dropped.jsonl"):
        assert (again / f).read_text().replace(t2.base_url, url) == (out / f).read_text()

    import datasets

    ds = datasets.load_dataset("json", data_files=str(out / "pairs.jsonl"), split="train")
    assert len(ds) == len(pairs) and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["chosen"][0]["role"] == "assistant"


def test_best_of_n_stdout_is_the_summary_line_only_off_a_terminal(tmp_path, capsys):
    """More prompts than one teacher chunk (64): the progress bar printed a blank line on stdout off a terminal."""
    prompts = _prompts(tmp_path / "p.jsonl", 70)
    with ScriptedTeacher(sometimes_right) as t:
        main(["synth", "best-of-n", str(prompts), "--teacher", t.base_url, "-n", "2", "-o", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert captured.out.startswith("best-of-n: kept ") and captured.out.count("\n") == 1 and captured.err == ""


def test_unwritable_output_fails_before_any_teacher_request(tmp_path, capsys):
    """-o under an existing file: a one-line error before the teacher works (it was an internal FileExistsError
    after every reply had been generated, and the replies were lost)."""
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    (tmp_path / "f").write_text("")
    with ScriptedTeacher(sometimes_right) as t:
        for args in (["synth", "best-of-n", str(prompts), "-o", str(tmp_path / "f")],
                     ["synth", "self-instruct", str(prompts), "-n", "2", "-o", str(tmp_path / "f" / "x.jsonl")],
                     ["synth", "evolve", str(prompts), "-o", str(tmp_path)]):
            with pytest.raises(SystemExit) as e:
                main([*args, "--teacher", t.base_url])
            assert e.value.code == 2 and capsys.readouterr().err.startswith("error: -o ")
        assert t.requests == 0


def test_best_of_n_llamafactory_layout(tmp_path):
    with ScriptedTeacher(sometimes_right) as t:
        out = _run(tmp_path, t.base_url, "lf", "--pairs-format", "llamafactory")
    pairs = _lines(out / "pairs.jsonl")
    assert pairs
    for p in pairs:  # LLaMA-Factory's dpo_en_demo.json: conversations [{from, value}], chosen/rejected {from, value}
        assert set(p) == {"conversations", "chosen", "rejected", "meta"}  # meta: provenance (LLaMA-Factory ignores it)
        assert p["conversations"][0] == {"from": "system", "value": "Answer briefly."}
        assert [c["from"] for c in p["conversations"]] == ["system", "human"]
        assert p["chosen"]["from"] == p["rejected"]["from"] == "gpt"
        truth = _truth(p["conversations"][-1]["value"])
        assert last_number(p["chosen"]["value"]) == truth != last_number(p["rejected"]["value"])
    import datasets

    assert len(datasets.load_dataset("json", data_files=str(out / "pairs.jsonl"), split="train")) == len(pairs)


def test_llamafactory_pair_keeps_tool_calls_as_function_call_turns(tmp_path):
    """A prompt with an earlier tool call (glaive style): the call is a `function_call` turn, not an empty gpt turn,
    and the pair reads back through sftlab's sharegpt reader with the same messages."""
    from sftlab.data.formats import read_records
    from sftlab.synth.best_of_n import format_pair

    tools = [{"type": "function", "function": {"name": "area", "parameters": {"type": "object", "properties": {}}}}]
    prompt = [{"role": "user", "content": "Area of a 7 by 7 square?"},
              {"role": "assistant", "content": "", "tool_calls": [
                  {"type": "function", "function": {"name": "area", "arguments": '{"side": 7}'}}]},
              {"role": "tool", "content": '{"area": 49}'}]
    row = format_pair(prompt, "It is 49.", "It is 14.", "llamafactory", {}, tools)
    assert [c["from"] for c in row["conversations"]] == ["human", "function_call", "observation"]
    assert json.loads(row["conversations"][1]["value"]) == {"name": "area", "arguments": {"side": 7}}
    path = tmp_path / "lf.json"
    path.write_text(json.dumps([{"conversations": row["conversations"] + [row["chosen"]], "tools": row["tools"]}]))
    back = read_records(path, fmt="sharegpt")[0][0]["messages"]
    assert back[1]["tool_calls"][0]["function"]["name"] == "area" and back[-1]["content"] == "It is 49."


def is_even_reply(reply: str, reference: str | None, record: dict) -> bool:
    n = last_number(reply)
    return n is not None and n % 2 == 0


def test_best_of_n_regex_and_python_verifiers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with ScriptedTeacher(sometimes_right) as t:
        out = _run(tmp_path, t.base_url, "rx", "--verifier", r"regex:makes \d*[02468]\.$")
        outp = _run(tmp_path, t.base_url, "py", "--verifier", "python:test_synth_best_of_n:is_even_reply")
    for d in (out, outp):
        for p in _lines(d / "pairs.jsonl"):
            assert last_number(p["chosen"][0]["content"]) % 2 == 0
            assert last_number(p["rejected"][0]["content"]) % 2 == 1
    def pairs(d: Path) -> list[tuple]:
        return [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in _lines(d / "pairs.jsonl")]
    assert pairs(out) == pairs(outp) and len(pairs(out)) >= 6


def test_code_verifier_runs_tests_in_a_subprocess_with_timeout():
    from sftlab.synth.verifiers import make_verifier

    v = make_verifier("code:2")
    rec = {"id": "c", "meta": {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}}
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    hang = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    assert v.score([[]] * 3, _msgs(good, bad, hang), [None] * 3, [rec] * 3) == [1.0, 0.0, 0.0]
    # wrong code that exits before the appended tests run must not pass
    main_exit = ("```python\nimport sys\ndef add(a, b):\n    return a - b\n\ndef main():\n    print(add(1, 2))\n\n"
                 "if __name__ == \"__main__\":\n    sys.exit(main())\n```")
    bare_exit = "```python\ndef add(a, b):\n    return a - b\nexit()\n```"
    assert v.score([[]] * 2, _msgs(main_exit, bare_exit), [None] * 2, [rec] * 2) == [0.0, 0.0]
    # the python block counts, not a later untagged block of example output; ```Python is python too
    with_output = good + "\n\nExample:\n```\n>>> add(2, 3)\n5\n```"
    capital = "```Python\ndef add(a, b):\n    return a + b\n```"
    assert v.score([[]] * 2, _msgs(with_output, capital), [None] * 2, [rec] * 2) == [1.0, 1.0]


def test_best_of_n_errors(tmp_path, capsys):
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    for verifier, msg in (("bogus", "unknown kind 'bogus'"), ("python:nomodule", "python:module:function")):
        with pytest.raises(SystemExit) as e:
            main(["synth", "best-of-n", str(prompts), "--teacher", "http://127.0.0.1:9/v1", "--verifier", verifier,
                  "-o", str(tmp_path / "o")])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    with ScriptedTeacher(sometimes_right) as t, pytest.raises(SystemExit) as e:
        main(["synth", "best-of-n", str(prompts), "--teacher", t.base_url, "--threshold", "1.5",
              "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "--threshold 1.5" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "task_type": "t", "messages": [{"role": "user", "content": "hi"}]}\n{"id": "b"}\n')
    with pytest.raises(SystemExit):
        main(["synth", "best-of-n", str(bad), "--teacher", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "o")])
    assert "bad.jsonl, line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # neither a directory nor a URL: said in the command line's terms
        main(["synth", "best-of-n", str(prompts), "--teacher", "nope", "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "nope: not a model directory" in capsys.readouterr().err


def test_best_of_n_numeric_json_references(tmp_path, capsys):
    """`"reference": 0` / `1.0` (JSON numbers, GSM8K style) are references, not missing ones and not a crash."""
    rows = [{"id": "zero", "task_type": "m", "messages": [{"role": "user", "content": "1 - 1?"}], "reference": 0},
            {"id": "one", "task_type": "m", "messages": [{"role": "user", "content": "1 * 1?"}], "reference": 1.0},
            {"id": "meta", "task_type": "m", "messages": [{"role": "user", "content": "0 * 5?"}],
             "meta": {"reference": 0}}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ScriptedTeacher(lambda body, i: f"It is {i % 2}.") as t:
        main(["synth", "best-of-n", str(prompts), "--teacher", t.base_url, "-n", "2", "-o", str(tmp_path / "o")])
    sft = {r["meta"]["synth"]["source_id"]: r["messages"][-1]["content"] for r in _lines(tmp_path / "o" / "sft.jsonl")}
    assert sft == {"zero": "It is 0.", "one": "It is 1.", "meta": "It is 0."}
    assert len(_lines(tmp_path / "o" / "pairs.jsonl")) == 3 and not _lines(tmp_path / "o" / "dropped.jsonl")
    prompts.write_text(json.dumps({**rows[0], "reference": ["0"]}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["synth", "best-of-n", str(prompts), "--teacher", "http://127.0.0.1:9/v1", "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "p.jsonl, line 1, field 'reference'" in capsys.readouterr().err


def test_best_of_n_with_the_llm_judge_as_verifier(tmp_path):
    from judge_server import JudgeServer

    def teacher(body: dict, choice: int) -> str:  # every other sample is the one the "fair" judge likes
        return "This is CORRECT." if (choice + int(body["messages"][-1]["content"].split()[2])) % 2 else "Unsure."

    with ScriptedTeacher(teacher) as t, JudgeServer() as j:
        out = _run(tmp_path, t.base_url, "judge", "--verifier", "judge", "--judge", j.base_url, "--judge-model", "fair",
                   "--threshold", "0.7")
        assert j.requests == 24 * 4  # one single-mode grading per reply
    pairs = _lines(out / "pairs.jsonl")
    assert len(pairs) == 24 and len(_lines(out / "sft.jsonl")) == 24
    for p in pairs:
        assert p["chosen"][0]["content"] == "This is CORRECT." and p["rejected"][0]["content"] == "Unsure."
        assert p["meta"]["chosen_score"] == 0.8 and p["meta"]["rejected_score"] == 0.3


def test_best_of_n_unreadable_judge_verdict_is_no_score(tmp_path):
    """A reply whose judge verdict cannot be read has no score: it is neither the rejected reply of a pair (it was
    scored 0.0, so a correct reply became `rejected`) nor chosen; a prompt with no readable verdict is `unscored`."""
    from judge_server import JudgeServer

    replies = {"p1": ["CORRECT, as in question 10.", "It is wrong.", "CORRECT answer."],  # "flaky" fails on question 10
               "p2": ["CORRECT, see question 20."] * 3}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "task_type": "qa", "reference": "CORRECT", "messages": [
        {"role": "user", "content": f"Say it ({i})."}]}) + "\n" for i in replies))

    def teacher(body: dict, choice: int) -> str:
        return replies[re.search(r"\((p\d)\)", body["messages"][-1]["content"]).group(1)][choice]
    with ScriptedTeacher(teacher) as t, JudgeServer() as j:
        main(["synth", "best-of-n", str(prompts), "--teacher", t.base_url, "-n", "3", "--verifier", "judge",
              "--judge", j.base_url, "--judge-model", "flaky", "--threshold", "0.7", "-o", str(tmp_path / "o")])
    [pair] = _lines(tmp_path / "o" / "pairs.jsonl")
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("CORRECT answer.", "It is wrong.")
    assert pair["meta"]["scores"] == [None, 0.3, 0.8] and pair["meta"]["rejected_score"] == 0.3
    [dropped] = _lines(tmp_path / "o" / "dropped.jsonl")
    assert dropped["id"] == "p2" and dropped["reason"] == "unscored" and dropped["scores"] == [None] * 3
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["replies_unscored"] == 4


def test_reward_model_verifier_scores_in_unit_interval(tiny_model_dir):
    """reward:DIR loads AutoModelForSequenceClassification (here the tiny LM with a fresh 1-label head)."""
    import torch
    from transformers import AutoConfig

    from sftlab.synth.verifiers import make_verifier

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert cfg.num_labels == 2  # the head has 2 labels; the last one is the "good" logit
    torch.manual_seed(0)
    v = make_verifier(f"reward:{tiny_model_dir}")
    prompt = [{"role": "user", "content": "what is 2 plus 3?"}]
    scores = v.score([prompt] * 3, _msgs("5", "seven", "5"), [None] * 3, [{}] * 3)
    assert all(0.0 < s < 1.0 for s in scores) and scores[0] == scores[2] != scores[1]


@pytest.mark.slow
@pytest.mark.hooks
def test_pairs_train_one_step_in_trl_dpo_trainer(tmp_path, tiny_model_dir):
    """pairs.jsonl (trl format) -> datasets -> one DPOTrainer step on the tiny model (trl: the `bench` extra)."""
    trl = pytest.importorskip("trl")
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with ScriptedTeacher(sometimes_right) as t:
        out = _run(tmp_path, t.base_url, "bon")
    ds = datasets.load_dataset("json", data_files=str(out / "pairs.jsonl"), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                        learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True)
    trainer = trl.DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


def test_teacher_cache_resumes_a_stopped_run_and_reruns_send_nothing(tmp_path, capsys):
    """Replies are kept in OUT/teacher_cache.sqlite chunk by chunk: a run stopped by a teacher error resumes with
    only the unanswered prompts sent; a finished run's rerun sends nothing and writes the same bytes; --fresh asks
    again; unseeded sampling is never cached."""
    from sftlab.infer import GenerationParams, Reply
    from sftlab.synth.teacher import CachedTeacher, ask

    class Flaky:
        model_id = "flaky"

        def __init__(self, fail_after: int | None) -> None:
            self.fail_after, self.asked = fail_after, []

        def generate(self, convs, params, tools=None):  # noqa: ANN001, ANN201
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise RuntimeError("teacher down")
            self.asked += [c[0]["content"] for c in convs]
            return [[Reply(f"re {c[0]['content']} {params.seed}", "stop", 1, 2)] for c in convs]

    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    seeded = GenerationParams(temperature=1.0, seed=7)
    with pytest.raises(RuntimeError):  # stops after the first chunk of 4
        ask(CachedTeacher(Flaky(fail_after=4), tmp_path / "c.sqlite"), convs, seeded, batch_size=4)
    again = Flaky(fail_after=None)
    cached = CachedTeacher(again, tmp_path / "c.sqlite")
    replies = ask(cached, convs, seeded, batch_size=4)
    assert again.asked == [f"q{i}" for i in range(4, 10)] and (cached.hits, cached.sent) == (4, 6)
    assert [r[0].text for r in replies] == [f"re q{i} 7" for i in range(10)]
    unseeded = Flaky(fail_after=None)
    ask(CachedTeacher(unseeded, tmp_path / "c.sqlite"), convs, GenerationParams(temperature=1.0), batch_size=4)
    ask(CachedTeacher(unseeded, tmp_path / "c.sqlite"), convs, GenerationParams(temperature=1.0), batch_size=4)
    assert len(unseeded.asked) == 20  # new samples every time

    with ScriptedTeacher(sometimes_right) as t:
        out = _run(tmp_path, t.base_url, "bon")
        first = {f: (out / f).read_bytes() for f in ("sft.jsonl", "pairs.jsonl", "dropped.jsonl")}
        capsys.readouterr()
        _run(tmp_path, t.base_url, "bon")
        assert t.requests == 24  # the rerun asked nothing
        assert "teacher: 24 replies reused from" in capsys.readouterr().err
        assert {f: (out / f).read_bytes() for f in first} == first
        assert json.loads((out / "summary.json").read_text())["teacher_cache"]["reused"] == 24
        _run(tmp_path, t.base_url, "bon", "--fresh")
        assert t.requests == 48
    (out / "teacher_cache.sqlite").write_text("not a database")
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "http://127.0.0.1:9/v1", "bon", "--teacher-model", "m")
    assert e.value.code == 2 and "not a teacher cache" in capsys.readouterr().err
