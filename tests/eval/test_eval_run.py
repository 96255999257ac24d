"""`sftlab eval` end to end: model endpoint or tiny hf model → predictions, metrics, judge, summary.json,
report.html (headless chromium), resumability, `eval judge`, `eval compare`, human sheets."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from judge_server import JudgeServer

from sftlab.cli import main

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_data_dir() -> Path:
    """The shared real data: beside the checkout (main) or beside the worktrees' folder (a worktree)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "data" / "real" / "mt_bench_question.jsonl").exists():
            return base / "shared" / "data" / "real"
    pytest.skip("shared real data (mt_bench_question.jsonl) not found")


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with JudgeServer() as srv:
        yield srv


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_eval_run_with_endpoint_model_is_resumable(server, tmp_path, real_data_dir):
    qa = _jsonl(tmp_path / "qa.jsonl", [
        {"instruction": f"say hi {i}", "output": f"echo: say hi {i}" if i % 2 else "no", "task_type": "greet"}
        for i in range(6)])
    cfg = {"model": {"base_url": server.base_url, "model": "echo", "api_key_env": "OPENAI_API_KEY"},
           "data": [str(qa), {"path": str(real_data_dir / "mt_bench_question.jsonl"), "name": "mtb"}],
           "metrics": ["exact_match", "rouge"], "limit": 4, "output_dir": str(tmp_path / "out"),
           "checkers": [{"type": "regex", "name": "echoes", "pattern": "^echo:", "task_type": "greet"}],
           "judge": {"base_url": server.base_url, "model": "fair", "mode": "single", "dimensions": ["overall"],
                     "cache": str(tmp_path / "cache.sqlite")}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["eval", str(path), "generation.max_new_tokens=16"])
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 4 + 4 * 2  # 4 qa records + 4 two-turn mt_bench questions
    assert s["metrics"]["greet"]["exact_match"]["mean"] == 0.5 and s["metrics"]["greet"]["echoes"]["mean"] == 1.0
    assert s["judge"]["requests"] == 12 and s["judge"]["scores"]["all"]["overall"]["n"] == 12
    assert s["task_types"] == {"greet": 4, "writing": 8}
    from sftlab.eval.report import score_table

    # mt_bench has no references: "writing" has judge scores only, and still comes before "all"
    assert [r[0] for r in score_table(s)[1]] == ["greet", "writing", "all"]
    preds = {r["id"]: r for r in _read(out / "predictions.jsonl")}
    t2 = preds["mtb:81#t2"]  # the second turn is answered after the model's own first reply
    assert [m["role"] for m in t2["prompt"]] == ["user", "assistant", "user"]
    assert t2["prompt"][1]["content"] == preds["mtb:81#t1"]["reply"]
    assert "overall" in t2["judge_scores"] and t2["judge"]["raw"][0][0].startswith("Short rationale")
    for f in ("report.html", "bad_cases.jsonl"):
        assert (out / f).exists()

    sent = server.requests
    main(["eval", str(path), "generation.max_new_tokens=16"])  # rerun: nothing generated, nothing judged
    assert server.requests == sent
    assert json.loads((out / "summary.json").read_text())["judge"]["cache_hits"] == 12
    main(["eval", str(path), "generation.max_new_tokens=17"])  # other decoding params: replies are redone
    assert server.requests == sent + 12  # 12 new replies; the echo replies are the same, so the judge hits the cache


def test_eval_rerun_takes_references_and_prompts_from_the_current_data(server, tmp_path):
    rows = [{"instruction": f"say hi {i}", "output": f"echo: say hi {i}", "task_type": "greet"} for i in range(3)]
    qa = _jsonl(tmp_path / "qa.jsonl", rows)
    cfg = {"model": {"base_url": server.base_url, "model": "echo", "api_key_env": "OPENAI_API_KEY"},
           "data": [str(qa)], "metrics": ["exact_match"], "output_dir": str(tmp_path / "out"),
           "judge": {"base_url": server.base_url, "model": "fair", "dimensions": ["overall"],
                     "cache": str(tmp_path / "cache.sqlite")}}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["eval", str(path)])
    sent = server.requests
    rows[0]["output"] = "a fixed reference"  # the user corrects a reference ...
    rows[1]["instruction"] = "say bye 1"  # ... and rewrites a question
    _jsonl(qa, rows)
    path.write_text(yaml.safe_dump({**cfg, "judge": None}))  # and drops the judge
    main(["eval", str(path)])
    assert server.requests == sent + 1  # only the rewritten question is answered again
    preds = {r["id"]: r for r in _read(tmp_path / "out" / "predictions.jsonl")}
    assert preds["qa:qa-0"]["reference"] == "a fixed reference" and preds["qa:qa-0"]["scores"]["exact_match"] == 0
    assert preds["qa:qa-1"]["reply"] == "echo: say bye 1"
    assert all("judge" not in r and "judge_scores" not in r for r in preds.values())
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["metrics"]["greet"]["exact_match"]["mean"] == pytest.approx(1 / 3) and "judge" not in s


def test_eval_bad_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"model": "x", "data": ["a.jsonl"], "judge": {"mode": "triple"}}))
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path)])
    assert e.value.code == 2 and "judge.mode" in capsys.readouterr().err
    # a data entry is PATH or {path, name, ...}: a typo in the mapping is named, not "should be a valid string"
    for data, msg in (([{"path": "a.jsonl", "nme": "x"}], "unknown key 'data.0.nme'"),
                      ([5], "key 'data.0': Input should be a valid string (got 5)")):
        path.write_text(yaml.safe_dump({"model": "x", "data": data}))
        with pytest.raises(SystemExit) as e:
            main(["eval", str(path)])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_eval_judge_on_a_local_server_needs_no_api_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    qa = _jsonl(tmp_path / "qa.jsonl", [{"instruction": "say hi", "output": "echo: say hi"}])
    main(["eval", f"model={{base_url: '{server.base_url}', model: echo}}", f"data=[{qa}]",
          f"output_dir={tmp_path / 'out'}", "metrics=[]",
          f"judge={{base_url: '{server.base_url}', model: fair, cache: '{tmp_path / 'c.sqlite'}'}}"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["judge"]["requests"] == 1


@pytest.mark.parametrize("bad, message", [
    ("metrics=[bleu,meteor]", "unknown metric 'meteor'"),
    ("checkers=[{type: regex, pattern: '('}]", "bad or missing 'pattern'"),
    ("judge={model: gpt}", "set judge.base_url and judge.model"),
    ("judge={base_url: 'http://x/v1', model: gpt, mode: pairwise}", "pairwise needs `baseline`"),
    ("baseline=missing/predictions.jsonl", "baseline: predictions file not found: missing/predictions.jsonl"),
    ("judge={base_url: 'http://x/v1', model: gpt, api_key_env: SFTLAB_TEST_UNSET_KEY}",
     "environment variable SFTLAB_TEST_UNSET_KEY (api_key_env) is not set"),
])
def test_eval_scoring_errors_come_before_generating(server, tmp_path, capsys, bad, message):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"instruction": "say hi", "output": "hi"}])
    with pytest.raises(SystemExit) as e:
        main(["eval", f"model={{base_url: '{server.base_url}', model: echo}}", f"data=[{qa}]",
              f"output_dir={tmp_path / 'out'}", bad])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert server.requests == 0  # no reply was generated before the error


def test_eval_prompt_above_context_names_the_item(tmp_path, tiny_model_dir, capsys):
    qa = _jsonl(tmp_path / "qa.jsonl", [{"instruction": "say hi", "output": "hi"},
                                        {"instruction": "word " * 3000, "output": "too long"}])
    with pytest.raises(SystemExit) as e:
        main(["eval", f"model={tiny_model_dir}", f"data=[{qa}]", f"output_dir={tmp_path / 'out'}",
              "generation.max_new_tokens=2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "eval item qa:qa-1: the prompt has" in err and "context is 2048" in err


def test_eval_sets_with_the_same_name_are_refused(server, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _jsonl(tmp_path / "a" / "test.jsonl", [{"instruction": "one", "output": "A", "task_type": "x"}])
    two = _jsonl(tmp_path / "b" / "test.jsonl", [{"instruction": "two", "output": "B", "task_type": "y"}])
    model = f"model={{base_url: '{server.base_url}', model: echo}}"
    with pytest.raises(SystemExit) as e:  # both would be set "test": ids test:test-0, one reply lost
        main(["eval", model, f"data=[{one}, {two}]", f"output_dir={tmp_path / 'out'}"])
    assert e.value.code == 2 and "the set name 'test' is taken by data[0]" in capsys.readouterr().err
    main(["eval", model, f"data=[{one}, {{path: {two}, name: other}}]", f"output_dir={tmp_path / 'out'}"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["task_types"] == {"x": 1, "y": 1}


def test_mt_bench_end_to_end_with_tiny_model(server, tmp_path, tiny_model_dir, real_data_dir):
    out = tmp_path / "mtb"
    main(["eval", f"model={tiny_model_dir}", f"data=[{real_data_dir / 'mt_bench_question.jsonl'}]",
          f"output_dir={out}", "generation.max_new_tokens=6", "metrics=[]",
          f"judge={{base_url: '{server.base_url}', model: fair, cache: '{tmp_path / 'c.sqlite'}'}}"])
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 160 and len(_read(out / "predictions.jsonl")) == 160
    cats = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
    assert set(s["judge"]["scores"]) == cats | {"all"}
    assert all(s["judge"]["scores"][c]["overall"]["n"] == 20 for c in cats)
    assert s["judge"]["requests"] == 160
    html = (out / "report.html").read_text()
    assert "humanities" in html and "judge:overall" in html and "data:image/png;base64" in html
    if CHROMIUM.exists():
        shot = tmp_path / "shot.png"
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                        (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000


def test_eval_judge_pairwise_cli_and_compare(server, tmp_path, capsys):
    rows = [{"id": f"q{i}", "task_type": "t", "prompt": f"question {i}", "reference": "CORRECT answer",
             "reply": "CORRECT answer" if i < 8 else "wrong"} for i in range(10)]
    base = [{**r, "reply": "wrong"} for r in rows]
    pa, pb = _jsonl(tmp_path / "a.jsonl", base), _jsonl(tmp_path / "b.jsonl", rows)
    main(["eval", "judge", "--pred", str(pb), "--baseline", str(pa), "-o", str(tmp_path / "j"),
          f"base_url={server.base_url}", "model=fair", "mode=pairwise", f"cache={tmp_path / 'c.sqlite'}"])
    s = json.loads((tmp_path / "j" / "summary.json").read_text())
    p = s["judge"]["pairwise"]
    assert (p["outright_win_rate"], p["tie_rate"]) == (0.8, 0.2) and p["win_rate"] == pytest.approx(0.9)  # ties ½
    no_prompt = _jsonl(tmp_path / "np.jsonl", [{k: v for k, v in r.items() if k != "prompt"} for r in rows])
    with pytest.raises(SystemExit) as e:
        main(["eval", "judge", "--pred", str(no_prompt), "-o", str(tmp_path / "jn"), f"base_url={server.base_url}",
              "model=fair", f"cache={tmp_path / 'c.sqlite'}"])
    assert e.value.code == 2 and "line 1: missing field 'prompt'" in capsys.readouterr().err
    assert s["judge"]["pairwise"]["swap_consistency"] == 1.0

    main(["eval", "metrics", "--pred", str(pa), "-o", str(tmp_path / "A"), "-m", "exact_match"])
    main(["eval", "metrics", "--pred", str(pb), "-o", str(tmp_path / "B"), "-m", "exact_match"])
    main(["eval", "compare", str(tmp_path / "A"), str(tmp_path / "B")])
    html = (tmp_path / "B" / "compare.html").read_text()
    assert "Comparison" in html and "better" in html
    from sftlab.eval.report import compare

    d = next(x for x in compare(tmp_path / "A", tmp_path / "B") if x["task_type"] == "t")
    assert d["metric"] == "exact_match" and d["diff"] == pytest.approx(0.8) and d["change"] == "better"


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_human_sheets_roundtrip_with_kappa(tmp_path, suffix):
    from sftlab.eval.human import _read_table, _write_table

    rows = [{"id": f"q{i}", "task_type": ["a", "b"][i % 2], "prompt": f"问题 {i}", "reply": f"model {i}"}
            for i in range(12)]
    base = [{**r, "reply": f"base {r['id']}"} for r in rows]
    pm, pb = _jsonl(tmp_path / "m.jsonl", rows), _jsonl(tmp_path / "b.jsonl", base)
    sheet = tmp_path / f"sheet{suffix}"
    main(["eval", "export-sheet", "--pred", str(pm), "--baseline", str(pb), "-o", str(sheet),
          "--dimensions", "helpfulness,honesty"])
    blank = _read_table(sheet)
    assert [r["item"] for r in blank] == [f"item-{i:04d}" for i in range(1, 13)]
    assert not any("q" in str(r["item"]) for r in blank)  # blind
    model_sides = ["A" if str(r["answer_A"]).startswith("model") else "B" for r in blank]
    assert 0 < model_sides.count("A") < 12  # A/B order randomised
    assert "问题" in str(blank[0]["prompt"])
    header = list(blank[0])
    for name, flip in (("ann1", {0}), ("ann2", {0, 1})):
        filled = []
        for i, (r, side) in enumerate(zip(blank, model_sides, strict=True)):
            choice = side if i not in flip else ("B" if side == "A" else "A")
            filled.append([r[h] if h not in ("helpfulness", "honesty") else choice for h in header])
        _write_table(tmp_path / f"{name}{suffix}", header, filled)
        (tmp_path / f"{name}.key.json").write_text((tmp_path / "sheet.key.json").read_text())
    main(["eval", "import-sheet", str(tmp_path / f"ann1{suffix}"), str(tmp_path / f"ann2{suffix}"),
          "-o", str(tmp_path / "h")])
    s = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert s["mode"] == "pairwise" and s["annotators"] == ["ann1", "ann2"]
    # after unblinding: ann1 prefers the baseline on item 0, ann2 on items 0 and 1
    assert s["human"]["scores"]["all"]["helpfulness"]["mean"] == pytest.approx(10.5 / 12)
    k = s["agreement"]["helpfulness"]
    assert k["n"] == 12 and k["kappa"] == pytest.approx(0.625)  # p_o 11/12, p_e 112/144
    shutil.rmtree(tmp_path / "h")


def test_rule_judge_model_vs_baseline(server, tmp_path, tiny_model_dir):
    """The demo's closing eval: pairwise in both orders with the rule-based judge that knows the right answers."""
    from sftlab.eval.config import EvalConfig
    from sftlab.eval.judge import ReferenceMatchJudge
    from sftlab.eval.run import compare_models_on_records, run_eval

    data = _jsonl(tmp_path / "d.jsonl", [{"instruction": f"item {i}", "output": f"echo: item {i}", "task_type": "t"}
                                         for i in range(6)])
    base = _jsonl(tmp_path / "base.jsonl", [{"id": f"d:d-{i}", "reply": "no idea" if i < 4 else f"echo: item {i}"}
                                            for i in range(6)])
    cfg = EvalConfig(model={"base_url": server.base_url, "model": "echo", "api_key_env": "OPENAI_API_KEY"},
                     data=[str(data)], baseline=str(base), output_dir=str(tmp_path / "o"), metrics=["exact_match"],
                     judge={"mode": "pairwise", "cache": str(tmp_path / "c.sqlite")})
    s = run_eval(cfg, judge_generator=ReferenceMatchJudge())
    p = s["judge"]["pairwise"]
    assert (p["outright_win_rate"], p["tie_rate"], p["swap_consistency"]) == (4 / 6, 2 / 6, 1.0)
    assert p["win_rate"] == pytest.approx(5 / 6) and p["lc_extrapolated"] is False  # ties count ½
    assert s["judge"]["model"] == "rule:reference-match" and s["metrics"]["t"]["exact_match"]["mean"] == 1.0

    s = compare_models_on_records(data, str(tiny_model_dir), str(tiny_model_dir), tmp_path / "self", max_new_tokens=4)
    assert s["judge"]["pairwise"]["tie_rate"] == 1.0  # the same model on both sides: every pair a tie


def test_human_single_sheet_and_judge_vs_human(tmp_path):
    from sftlab.errors import UserError
    from sftlab.eval.human import _read_table, _write_table, import_sheets

    rows = [{"id": f"q{i}", "task_type": "t", "prompt": f"p{i}", "reply": f"r{i}",
             "judge_scores": {"overall": float(1 + i % 10)}} for i in range(10)]
    pred = _jsonl(tmp_path / "judged.jsonl", rows)
    sheet = tmp_path / "sheet.csv"
    main(["eval", "export-sheet", "--pred", str(pred), "-o", str(sheet), "--dimensions", "overall"])
    blank = _read_table(sheet)
    assert list(blank[0]) == ["item", "prompt", "answer", "overall", "comment"]
    by_reply = {r["reply"]: r for r in rows}
    filled = [[b["item"], b["prompt"], b["answer"], by_reply[b["answer"]]["judge_scores"]["overall"] * 0.5 + 1, ""]
              for b in blank]
    _write_table(sheet, list(blank[0]), filled)
    s = import_sheets([sheet], tmp_path / "h", judged=pred)
    assert s["mode"] == "single" and s["human"]["scores"]["t"]["overall"]["n"] == 10
    assert s["judge_vs_human"]["overall"]["pearson"] == pytest.approx(1.0)
    bad = [[b["item"], b["prompt"], b["answer"], "great", ""] for b in blank]
    _write_table(sheet, list(blank[0]), bad)
    with pytest.raises(UserError, match="column 'overall': 'great' is not a number"):
        import_sheets([sheet], tmp_path / "h")
    _write_table(sheet, list(blank[0]), [[b["item"], b["prompt"], b["answer"], "77", ""] for b in blank])
    with pytest.raises(UserError, match="column 'overall': '77' is outside the scale 1-10"):
        import_sheets([sheet], tmp_path / "h")
    # an annotator's copy in a folder with two sheets' keys: say which key to copy, not "keep the key"
    (tmp_path / "other.key.json").write_text((tmp_path / "sheet.key.json").read_text())
    ann = tmp_path / "ann1.csv"
    ann.write_text(sheet.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(UserError, match=r"several next to the sheet \(other.key.json, sheet.key.json\): copy "
                                        r"this sheet's key to ann1.key.json"):
        import_sheets([ann], tmp_path / "h")


def test_eval_without_config_file_flags_and_overrides(server, tmp_path, real_data_dir):
    out = tmp_path / "o"
    main(["eval", f"model={{base_url: '{server.base_url}', model: echo}}",
          f"data=[{real_data_dir / 'alpaca_en_demo.json'}]", "--limit", "5", "--seed", "1", "--out", str(out),
          "metrics=[rouge, chrf]"])
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 5 and s["config"]["seed"] == 1 and s["config"]["limit"] == 5
    assert set(s["metrics"]["all"]) == {"rouge1", "rouge2", "rougeL", "chrf"}
    assert server.requests == 5
