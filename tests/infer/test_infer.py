"""The inference layer: the hf backend (batched = one at a time, token counts, stop, sampling, adapters) and the
openai backend against a real HTTP server (retries on 429/5xx, clear errors on 4xx)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sftlab.errors import UserError
from sftlab.infer import GenerationParams, Generator, Reply, load_generator

pytestmark = pytest.mark.hooks  # `make test-latest`: run against the newest transformers / peft / tokenizers

CONVS = [
    [{"role": "user", "content": "what is 2 plus 3?"}],
    [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "repeat: blue green red blue"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}],
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return load_generator(tiny_model_dir)


def test_hf_batched_equals_one_at_a_time_and_direct_generate(hf, tiny_model_dir):
    params = GenerationParams(max_new_tokens=12)
    batched = hf.generate(CONVS, params)
    assert isinstance(hf, Generator) and all(len(r) == 1 and isinstance(r[0], Reply) for r in batched)
    alone = [hf.generate([c], params)[0][0] for c in CONVS]
    assert [r[0].text for r in batched] == [r.text for r in alone]
    # the same as transformers' own greedy generate on the unpadded prompt
    tok = hf.tokenizer
    for conv, (reply,) in zip(CONVS, batched, strict=True):
        ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert reply.prompt_tokens == len(ids)
        with torch.no_grad():
            out = hf.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                    eos_token_id=hf.eot_ids, pad_token_id=hf.pad_id)
        new = out[0, len(ids):].tolist()
        assert reply.completion_tokens == len(new) == 12
        assert reply.text == tok.decode(new, skip_special_tokens=True)
        assert reply.finish_reason == "length"


class AlwaysEndOfTurn(torch.nn.Module):
    """An lm_head whose only likely token is the end-of-turn token."""

    def __init__(self, vocab_size: int, eot: int) -> None:
        super().__init__()
        self.vocab_size, self.eot = vocab_size, eot

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab_size)
        logits[..., self.eot] = 20.0
        return logits


def test_hf_stops_at_end_of_turn(tiny_model_dir):
    gen = load_generator(tiny_model_dir)
    gen.model.lm_head = AlwaysEndOfTurn(gen.model.config.vocab_size, gen.eot_ids[0])
    out = gen.generate(CONVS, GenerationParams(max_new_tokens=10, logprobs=True))
    for (reply,) in out:
        assert (reply.text, reply.finish_reason, reply.completion_tokens) == ("", "stop", 1)
        assert len(reply.logprobs) == 1 and -1e-4 < reply.logprobs[0] <= 0


def test_hf_sampling_n_seed_stop_logprobs(hf):
    params = GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7)
    first = hf.generate(CONVS[:2], params)
    assert [len(r) for r in first] == [3, 3]
    assert len({r.text for r in first[0]}) > 1  # three different samples
    assert hf.generate(CONVS[:2], params) == first  # seed → reproducible
    other = hf.generate(CONVS[:2], GenerationParams(max_new_tokens=8, temperature=1.0, n=3, seed=8))
    assert other != first
    # without a seed, two sampled calls draw fresh samples (they must not restart from the same RNG state)
    unseeded = GenerationParams(max_new_tokens=8, temperature=1.0)
    assert hf.generate(CONVS[:1], unseeded) != hf.generate(CONVS[:1], unseeded)

    greedy = hf.generate(CONVS[:1], GenerationParams(max_new_tokens=12, logprobs=True))[0][0]
    assert len(greedy.logprobs) == greedy.completion_tokens and all(lp <= 0 for lp in greedy.logprobs)
    stop = greedy.text.strip()[2:4]
    cut = hf.generate(CONVS[:1], GenerationParams(max_new_tokens=12, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text and greedy.text.startswith(cut.text)
    assert cut.completion_tokens < 12
    # in a batch whose other row runs on, the stopped row is padded; with pad = an end-of-turn id (the tiny
    # tokenizer's <|endoftext|>) that padding must not count as a generated token
    assert hf.pad_id in hf.eot_ids
    batched = hf.generate([CONVS[0], [{"role": "user", "content": "hi"}]],
                          GenerationParams(max_new_tokens=12, stop=[stop], logprobs=True))[0][0]
    assert (batched.text, batched.completion_tokens) == (cut.text, cut.completion_tokens)
    assert len(batched.logprobs) == batched.completion_tokens


def test_hf_prompt_near_the_context_does_not_clip_its_batch_mates(hf):
    long = [{"role": "user", "content": "word " * 1990}]  # ~2000 tokens: 100 new tokens do not fit in 2048
    short = CONVS[0]
    params = GenerationParams(max_new_tokens=100)
    alone = [hf.generate([c], params)[0][0] for c in (short, long)]
    assert alone[0].completion_tokens == 100 and alone[1].completion_tokens < 100  # the long one is clipped
    batched = [r[0] for r in hf.generate([short, long, short], params)]
    assert [(r.text, r.completion_tokens) for r in batched] == [(r.text, r.completion_tokens)
                                                                for r in (alone[0], alone[1], alone[0])]


def test_hf_errors(hf):
    with pytest.raises(UserError, match="context is 2048"):
        hf.generate([[{"role": "user", "content": "word " * 3000}]], GenerationParams(max_new_tokens=2))
    with pytest.raises(UserError, match="max_new_tokens"):
        hf.generate(CONVS, GenerationParams(max_new_tokens=0))
    with pytest.raises(UserError, match="not found"):
        load_generator("/nonexistent/model")
    with pytest.raises(UserError, match="backend"):
        load_generator("x", backend="tgi")


def test_hf_lora_adapter_dir(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftlab.data.render import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path / "adapter")
    gen = load_generator(tmp_path / "adapter")
    plain = load_generator(tiny_model_dir)
    params = GenerationParams(max_new_tokens=10)
    assert gen.generate(CONVS[:1], params)[0][0].text != plain.generate(CONVS[:1], params)[0][0].text


def test_vllm_refused_cleanly_without_cuda(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the vllm path is exercised by the gpu test")
    with pytest.raises(UserError, match="CUDA"):
        load_generator(tiny_model_dir, backend="vllm")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vllm_greedy_matches_hf(tiny_model_dir):
    pytest.importorskip("vllm")
    gen = load_generator(tiny_model_dir, backend="vllm", gpu_memory_utilization=0.3, dtype="float32")
    hf = load_generator(tiny_model_dir, dtype="float32")
    params = GenerationParams(max_new_tokens=8, logprobs=True)
    for (a,), (b,) in zip(hf.generate(CONVS, params), gen.generate(CONVS, params), strict=True):
        assert (b.prompt_tokens, b.completion_tokens) == (a.prompt_tokens, a.completion_tokens)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-2)
    sampled = gen.generate(CONVS[:1], GenerationParams(max_new_tokens=8, temperature=1.0, n=3, seed=1))
    assert len(sampled[0]) == 3


# ---- the openai backend against a real HTTP server -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(app):
    """Start an ASGI app with uvicorn on a free loopback port; returns (base_url, server)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{server.config.port}/v1", server


def flaky_upstream(failures: list[int]):
    """An OpenAI-shaped endpoint that answers the statuses in `failures` first, then echoes the last user turn."""
    app = FastAPI()
    app.state.calls = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.calls.append(body)
        if failures:
            status = failures.pop(0)
            return JSONResponse({"error": {"message": f"failing with {status}", "type": "test", "param": None,
                                           "code": None}}, status_code=status, headers={"retry-after-ms": "10"})
        text = body["messages"][-1]["content"].upper()
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": k, "message": {"role": "assistant", "content": f"{text}{k}"},
                             "finish_reason": "stop"} for k in range(body.get("n", 1))],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3 * body.get("n", 1), "total_tokens": 0}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "test"}]}

    return app


def test_openai_backend_retries_429_and_500_then_succeeds():
    failures = [429, 500, 503]
    app = flaky_upstream(failures)
    url, server = serve_in_thread(app)
    try:
        gen = load_generator({"base_url": url, "max_retries": 3, "concurrency": 2})
        assert gen.model_id == "echo"  # the endpoint's only model
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
        replies = gen.generate(convs, GenerationParams(max_new_tokens=5, n=2, seed=3, stop=["x"]))
        assert [[r.text for r in row] for row in replies] == [[f"Q{i}0", f"Q{i}1"] for i in range(4)]
        assert all(r.prompt_tokens == 5 and r.completion_tokens == 3 for row in replies for r in row)
        assert len(app.state.calls) == 4 + 3 and not failures
        sent = app.state.calls[-1]
        assert (sent["max_tokens"], sent["n"], sent["seed"], sent["stop"]) == (5, 2, 3, ["x"])
    finally:
        server.should_exit = True


def test_openai_backend_gives_up_and_rejects_4xx_clearly():
    failures = [500, 500, 400, 422]
    url, server = serve_in_thread(flaky_upstream(failures))
    try:
        gen = load_generator({"base_url": url, "model": "echo", "max_retries": 1})
        with pytest.raises(UserError, match="HTTP 500 after 1 retries: failing with 500"):
            gen.generate(CONVS[:1], GenerationParams())
        with pytest.raises(UserError, match=r"rejected the request \(HTTP 400\): failing with 400"):
            gen.generate(CONVS[:1], GenerationParams())
        with pytest.raises(UserError, match="HTTP 422"):
            gen.generate(CONVS[:1], GenerationParams())
        with pytest.raises(UserError, match="NO_SUCH_KEY_ENV"):
            load_generator({"base_url": url, "model": "echo", "api_key_env": "NO_SUCH_KEY_ENV"})
    finally:
        server.should_exit = True


def test_cli_generate_goes_through_infer(hf, tiny_model_dir, capsys):
    from sftlab.cli import main

    main(["generate", "--model", str(tiny_model_dir), "--prompt", "what is 2 plus 3?", "--max-new-tokens", "6"])
    out = capsys.readouterr()
    assert out.out.strip() == hf.generate(CONVS[:1], GenerationParams(max_new_tokens=6))[0][0].text.strip()
    assert "no end-of-turn token within 6" in out.err
