"""LLM-as-judge against a real HTTP judge (tests/judge_server.py, scripted behaviours): verdict parsing, pairwise
swap statistics, length bias, parse failures with retry, repeats, and the disk cache."""

from __future__ import annotations

import pytest
from judge_server import JudgeServer

from sftlab.eval.judge import fill, parse_pairwise, parse_single, run_judge


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as srv:
        yield srv


def _rows(n: int = 20) -> list[dict]:
    """Model correct on 12 of 20 items (baseline on the other 8); model reply lengths vary, baseline's fixed."""
    rows = []
    for i in range(n):
        model_ok = i % 5 != 0 and i % 7 != 0 or i == 0
        pad = " and more words" * (i % 4) * 3
        rows.append({"id": f"q{i}", "task_type": ["math", "chat"][i % 2],
                     "prompt": [{"role": "user", "content": f"question {i}: what is {i} + {i}?"}],
                     "reply": ("CORRECT " if model_ok else "wrong ") + str(2 * i) + pad,
                     "baseline_reply": ("wrong " if model_ok else "CORRECT ") + "baseline reply of medium size",
                     "reference": str(2 * i)})
    return rows


def _cfg(server, tmp_path, model: str, **kw) -> dict:
    return {"base_url": server.base_url, "model": model, "api_key_env": "OPENAI_API_KEY", "concurrency": 4,
            "cache": str(tmp_path / "cache.sqlite"), "temperature": 0.0, **kw}


def test_verdict_parsing_mt_bench_formats():
    assert parse_single("fine answer. Rating: [[7]]", ["overall"]) == {"overall": 7.0}
    assert parse_single("helpfulness: [[7]]\nHonesty: [[ 9 ]]", ["helpfulness", "honesty"]) == \
        {"helpfulness": 7.0, "honesty": 9.0}
    assert parse_single("helpfulness: [[7]]", ["helpfulness", "honesty"]) is None  # a missing dimension fails
    assert parse_single("score 6/10", ["overall"], pattern=r"score (\d+)/10") == {"overall": 6.0}
    assert parse_single("Rating: [[85]]", ["overall"]) is None  # off the 1-10 scale: no grade (was 85/10)
    assert parse_single("Rating: [[8]] ... (typo: [[0]])", ["overall"]) == {"overall": 8.0}
    # a dimension is a whole word: "dishonesty" is not "honesty"
    assert parse_single("dishonesty: [[2]]\nhelpfulness: [[7]]", ["helpfulness", "honesty"]) is None
    assert parse_pairwise("A is better [[A]]") == "A"
    assert parse_pairwise("not [[A]] but [[C]]") == "C"  # the last verdict counts
    assert parse_pairwise("A is better") is None
    assert fill("{question} {json: {x}}", question="Q") == "Q {json: {x}}"
    # placeholders inside the filled-in text stay as they are (a code question with an f-string)
    assert fill("Q: {question}\nA: {answer}", question='f"{answer}"', answer="R") == 'Q: f"{answer}"\nA: R'


def test_fair_judge_is_swap_consistent(server, tmp_path):
    rows = _rows()
    s = run_judge(rows, _cfg(server, tmp_path, "fair", mode="pairwise"))
    p = s["pairwise"]
    assert p["swap_consistency"] == 1.0
    assert p["win_rate"] == pytest.approx(sum("CORRECT" in r["reply"] for r in rows) / len(rows))
    assert p["tie_rate"] == 0.0 and p["win_rate"] + p["loss_rate"] == pytest.approx(1.0)
    assert p["first_position_win_rate"] == pytest.approx(0.5)
    assert s["requests"] == 40 and s["parse_failures"] == 0
    assert set(s["scores"]) == {"chat", "math", "all"} and s["scores"]["all"]["win"]["n"] == 20


def test_first_position_judge_is_caught(server, tmp_path):
    s = run_judge(_rows(), _cfg(server, tmp_path, "first", mode="pairwise"))
    p = s["pairwise"]
    assert p["swap_consistency"] == 0.0
    assert p["first_position_win_rate"] == 1.0
    assert p["tie_rate"] == 1.0  # every inconsistent pair counts as a tie


def test_length_biased_judge_shows_length_correlation(server, tmp_path):
    rows = _rows()
    s = run_judge(rows, _cfg(server, tmp_path, "longer", mode="pairwise"))
    assert s["pairwise"]["length_corr"] > 0.6
    fair = run_judge(_rows(), _cfg(server, tmp_path, "fair", mode="pairwise"))
    assert fair["pairwise"]["length_corr"] < s["pairwise"]["length_corr"] - 0.3
    # at equal length, the length-biased judge has no preference: the controlled win rate moves toward 0.5
    assert abs(s["pairwise"]["lc_win_rate"] - 0.5) < abs(s["pairwise"]["win_rate"] - 0.5) + 1e-9


def test_unparseable_verdicts_are_retried_counted_and_reported(server, tmp_path):
    rows = _rows()
    s = run_judge(rows, _cfg(server, tmp_path, "flaky", mode="pairwise"))
    flaky = [r for r in rows if int(r["id"][1:]) % 10 < 3]
    assert len(flaky) == 6
    assert s["parse_failures"] == 12 and s["unjudged"] == 6  # both orders of 6 items, after one retry each
    assert s["requests"] == 40 + 12  # the retries went out with the stricter reminder
    assert s["pairwise"]["n"] == 14
    for r in flaky:
        assert r["judge_scores"] == {}  # not scored 0
        assert len(r["judge"]["raw"]["model_first"]) == 2  # first try and retry kept
    assert server.requests == 52


def test_cache_makes_a_rerun_free(server, tmp_path):
    first = run_judge(_rows(), _cfg(server, tmp_path, "flaky", mode="pairwise"))
    sent = server.requests
    again = run_judge(_rows(), _cfg(server, tmp_path, "flaky", mode="pairwise"))
    assert server.requests == sent  # zero requests
    assert again["requests"] == 0 and again["cache_hits"] == first["requests"]
    assert again["pairwise"] == first["pairwise"]


def test_single_answer_dimensions_weights_and_reference(server, tmp_path):
    rows = _rows(10)
    s = run_judge(rows, _cfg(server, tmp_path, "fair", mode="single",
                             weights={"math": {"helpfulness": 3, "honesty": 1}, "default": {"harmlessness": 1}}))
    assert s["mode"] == "single" and s["parse_failures"] == 0 and s["requests"] == 10
    good = next(r for r in rows if "CORRECT" in r["reply"] and r["task_type"] == "math")
    assert good["judge_scores"] == {"helpfulness": 8.0, "honesty": 8.0, "harmlessness": 8.0, "overall": 8.0}
    assert good["judge"]["raw"][0][0].startswith("Short rationale")  # the raw judge text is kept
    assert any(f"[Reference answer]\n{good['reference']}\n" in p and good["reply"] in p for p in server.prompts)
    assert s["scores"]["math"]["helpfulness"]["n"] == 5
    assert set(s["scores"]["all"]) == {"helpfulness", "honesty", "harmlessness", "overall"}


def test_repeats_report_per_item_std(server, tmp_path):
    rows = _rows(6)
    s = run_judge(rows, _cfg(server, tmp_path, "noisy", mode="single", repeats=3, temperature=0.7,
                             dimensions=["overall"]))
    assert s["requests"] == 18
    assert rows[0]["judge"]["grades"] == [{"overall": 3.0}, {"overall": 4.0}, {"overall": 5.0}]
    assert rows[0]["judge_scores"]["overall"] == pytest.approx(4.0)
    assert s["repeats_std"] == pytest.approx((2 / 3) ** 0.5)


def test_single_judge_length_bias(server, tmp_path):
    s = run_judge(_rows(), _cfg(server, tmp_path, "longer", mode="single", dimensions=["overall"]))
    assert s["length_corr"] > 0.9


def test_a_judge_request_the_endpoint_refuses_is_unjudged_not_the_end_of_the_eval(tmp_path):
    """One HTTP 400 (e.g. a judge prompt beyond the judge model's context) stopped the whole eval; it is now that
    item's refusal (counted, not cached), while a server error still stops the run."""
    from sftlab.eval.judge import Judge
    from sftlab.infer import Reply
    from sftlab.infer.openai_api import EndpointError

    class Endpoint:
        model_id = "judge"

        def __init__(self, status: int) -> None:
            self.status, self.calls = status, 0

        def generate(self, convs, params, tools=None):  # noqa: ANN001, ANN201
            self.calls += 1
            if any("LONG" in c[0]["content"] for c in convs):
                raise EndpointError(f"http://j/v1 rejected the request (HTTP {self.status}): too long", self.status)
            return [[Reply("Rating: [[7]]", "stop", 1, 1)] for _ in convs]

    gen = Endpoint(400)
    judge = Judge(gen, {"mode": "single", "dimensions": ["overall"], "cache": str(tmp_path / "c.sqlite")})
    out = judge.judge(["short one", "LONG " * 5, "short two"], [None, None, None])
    assert [parsed for _, parsed in out] == [{"overall": 7.0}, None, {"overall": 7.0}]
    assert len(judge.refused) == 2 and "HTTP 400" in judge.refused[0]  # the item and its stricter retry
    again = Judge(gen, {"mode": "single", "dimensions": ["overall"], "cache": str(tmp_path / "c.sqlite")})
    again.judge(["LONG " * 5], [None])
    assert len(again.refused) == 2  # a refusal is not cached: a rerun asks again
    with pytest.raises(EndpointError, match="HTTP 502"):
        Judge(Endpoint(502), {"mode": "single", "dimensions": ["overall"],
                              "cache": str(tmp_path / "c.sqlite")}).judge(["LONG"], [None])
