"""vLLM's offline engine, for users who outgrow the HF backend on a GPU. vllm is imported only when this backend
is built, and refused with one clear line where it is not installed or CUDA is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from sftlab.data.render import eot_token_ids, load_tokenizer
from sftlab.errors import UserError
from sftlab.infer.api import GenerationParams, Reply, check_params
from sftlab.train.export import is_adapter_dir


def vllm_unavailable_reason() -> str | None:
    """Why the vllm backend cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "the vllm backend needs a CUDA GPU and none is visible here; use backend hf (or serve with vllm " \
               "elsewhere and use the openai backend)"
    if importlib.util.find_spec("vllm") is None:
        return "the vllm backend needs vLLM: pip install vllm (on a CUDA machine), or use backend hf"
    return None


class VLLMGenerator:
    def __init__(self, path: str | Path, *, model_id: str | None = None, **engine_options: Any) -> None:
        reason = vllm_unavailable_reason()
        if reason:
            raise UserError(reason)
        if is_adapter_dir(path):
            raise UserError(f"{path} holds a LoRA adapter: merge it first (`sftlab export {path} -o DIR --merge`) "
                            "and serve DIR with the vllm backend")
        from vllm import LLM  # lazy: vllm is optional and CUDA-only; checked above

        self.model_id = model_id or str(path)
        # stop at the same end-of-turn tokens as the hf backend (vLLM alone knows only generation_config's eos)
        self.stop_token_ids = eot_token_ids(load_tokenizer(str(path)))
        self.llm = LLM(model=str(path), **engine_options)
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_context = getattr(model_config, "max_model_len", None)

    def generate(self, conversations: list[list[dict]], params: GenerationParams,
                 tools: list[dict] | None = None) -> list[list[Reply]]:
        from vllm import SamplingParams  # lazy: vllm is optional and CUDA-only

        check_params(params)
        sampling = SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                                  max_tokens=params.max_new_tokens, stop=params.stop,
                                  stop_token_ids=self.stop_token_ids,
                                  logprobs=0 if params.logprobs else None)
        outputs = self.llm.chat(conversations, sampling, use_tqdm=False, tools=tools or None)
        replies = []
        for out in outputs:
            row = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                lps = None
                if params.logprobs and c.logprobs is not None:
                    lps = [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=False)]
                row.append(Reply(text=c.text, finish_reason="length" if c.finish_reason == "length" else "stop",
                                 prompt_tokens=len(out.prompt_token_ids), completion_tokens=len(c.token_ids),
                                 logprobs=lps))
            replies.append(row)
        return replies
