"""EleutherAI's lm-evaluation-harness (`local-chat-completions`, chat template applied by the server) runs a local
JSONL task against `sftlab serve`. The targets are the model's own greedy replies, so a harness that reached the
model through the server scores exactly 1."""

from __future__ import annotations

import json

import pytest
import yaml

from sftlab.infer import GenerationParams, load_generator
from sftlab.serve.app import create_app, start_in_thread
from sftlab.serve.log import RequestLog

QUESTIONS = ["what is 2 plus 3?", "count from 3 to 9", "name a colour", "reverse the word cat", "hello",
             "what is the capital of france?", "sort 3 1 2", "say yes or no"]


@pytest.mark.slow
def test_lm_eval_local_chat_completions_against_the_server(tiny_model_dir, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")  # the `benchmarks` extra
    from lm_eval.tasks import TaskManager

    gen = load_generator(tiny_model_dir, model_id="tiny")
    params = GenerationParams(max_new_tokens=8, temperature=0.0, stop=["\n\n"])
    replies = gen.generate([[{"role": "user", "content": q}] for q in QUESTIONS], params)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": q, "answer": r[0].text}) + "\n"
                             for q, r in zip(QUESTIONS, replies, strict=True)))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "serve_echo.yaml").write_text(yaml.safe_dump({
        "task": "sftlab_serve_echo", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(items)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}", "target_delimiter": "",
        "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0},
        "metric_list": [{"metric": "exact_match"}]}))

    log = RequestLog(tmp_path / "serve.db")
    url, srv = start_in_thread(create_app(gen, log))
    try:
        results = lm_eval.simple_evaluate(
            model="local-chat-completions",
            model_args=f"model=tiny,base_url={url}/chat/completions,num_concurrent=2,max_retries=1",
            tasks=["sftlab_serve_echo"], task_manager=TaskManager(include_path=str(task_dir)),
            apply_chat_template=True, log_samples=True)
    finally:
        srv.should_exit = True
    assert results["results"]["sftlab_serve_echo"]["exact_match,none"] == 1.0
    assert len(results["samples"]["sftlab_serve_echo"]) == len(QUESTIONS) == log.count()
