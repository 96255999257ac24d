"""The local transformers backend: batched generation with left padding and the KV cache, stopping at the chat
template's end-of-turn token; greedy or sampled (temperature, top_p, seed), n replies per conversation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteriaList

from sftlab.data.render import eot_token_ids, load_tokenizer, template_inputs
from sftlab.errors import UserError
from sftlab.infer.api import GenerationParams, Reply, check_params, cut_at_stop
from sftlab.io import progress_bar
from sftlab.train.export import load_for_inference

OnText = Callable[[int, str], bool]


class HFGenerator:
    """Generator over an in-memory model + tokenizer (use `from_dir` to load a checkpoint directory)."""

    streams = True  # generate() takes on_text (the server streams tokens as they are generated)

    def __init__(self, model: Any, tokenizer: Any, model_id: str = "model", *, batch_size: int = 32,
                 max_context: int | None = None, progress: bool = False) -> None:
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.batch_size = batch_size
        self.eot_ids = eot_token_ids(tokenizer)
        if not self.eot_ids:
            raise UserError(f"{model_id}: the tokenizer has no end-of-turn or eos token, so generation could not "
                            "stop; set data.eot_token when training or add an eos token to the tokenizer")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_ids[0]
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.progress = progress
        self.device = next(model.parameters()).device
        model.eval()

    @classmethod
    def from_dir(cls, path: str | Path, *, model_id: str | None = None, device: str | None = None,
                 dtype: str = "auto", chat_template: str | None = None, **options: Any) -> HFGenerator:
        """Load a full model dir, a LoRA adapter dir (base + adapter via peft) or a merged export."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        model = load_for_inference(path).to(device=device, dtype=getattr(torch, dtype))
        tokenizer = load_tokenizer(str(path), chat_template)
        return cls(model, tokenizer, model_id or str(path), **options)

    def prompt_ids(self, conversation: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids the model sees for a conversation: its chat template with the generation prompt, given
        messages and tools as training renders them (`template_inputs`), so serving and training agree."""
        try:
            messages, tools = template_inputs(conversation, tools)
            text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as e:  # jinja errors from the template (raise_exception, bad roles, ...)
            raise UserError(f"{self.model_id}: the chat template rejected the conversation: {e}") from e
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: list[list[dict]], params: GenerationParams,
                 tools: list[dict] | None = None, on_text: OnText | None = None) -> list[list[Reply]]:
        """on_text(row, new_text), row = conversation index * n + choice, receives each row's text as it is
        generated (not with stop strings: those can only be cut once the text is complete); returning False
        says nobody wants that row any more, and its generation stops."""
        check_params(params)
        prompts = [self.prompt_ids(c, tools) for c in conversations]
        for i, p in enumerate(prompts):
            if self.max_context and len(p) >= self.max_context:
                raise UserError(f"conversation {i}: the prompt has {len(p)} tokens, the model's context is "
                                f"{self.max_context}; shorten it")
        rows = [i for i in range(len(prompts)) for _ in range(params.n)]
        # Longest prompts first: rows of similar length share a batch, so little left padding is wasted.
        order = sorted(range(len(rows)), key=lambda r: -len(prompts[rows[r]]))
        by_row: dict[int, Reply] = {}
        batches = _batches(order, [len(prompts[rows[r]]) for r in order], self.batch_size,
                           self.max_context and self.max_context - params.max_new_tokens)
        for batch in _progress(batches, self.progress and len(batches) > 1):
            stream = _StreamRows(self.tokenizer, batch, self.eot_ids, on_text) if on_text and not params.stop else None
            replies = self._generate_batch([prompts[rows[r]] for r in batch], params, stream)
            for r, reply in zip(batch, replies, strict=True):
                by_row[r] = reply
        return [[by_row[i * params.n + k] for k in range(params.n)] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: GenerationParams,
                        stream: _StreamRows | None = None) -> list[Reply]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last prompt token is at the same position
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        max_new = params.max_new_tokens
        if self.max_context:
            max_new = max(1, min(max_new, self.max_context - width))
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new, eos_token_id=self.eot_ids, pad_token_id=self.pad_id,
                                      return_dict_in_generate=True, output_logits=params.logprobs, use_cache=True)
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        if stream is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([stream])
        # Only a seeded call forks the RNG: an unseeded one must advance the global RNG, else every unseeded
        # sampled call would start from the same state and repeat the same sample.
        seeded = params.seed is not None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seeded):
            if seeded:
                torch.manual_seed(params.seed)
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        new = out.sequences[:, width:]
        lengths, has_eot = _generated_lengths(new, self.eot_ids, self.pad_id)
        token_logprobs = _chosen_logprobs(out.logits, new) if params.logprobs else None
        rows = new.tolist()
        lengths_l, has_eot_l = lengths.tolist(), has_eot.tolist()
        bodies = [row[:n - 1] if eot else row[:n] for row, n, eot in zip(rows, lengths_l, has_eot_l, strict=True)]
        texts = self.tokenizer.batch_decode(bodies, skip_special_tokens=True)
        replies = []
        for i, text in enumerate(texts):
            text, hit_stop = cut_at_stop(text, params.stop)
            n_tokens = lengths_l[i]
            if hit_stop and has_eot_l[i] and self.pad_id in self.eot_ids:
                n_tokens -= 1  # a stop string ended the row: the "end-of-turn" after it is padding (pad = eot id)
            replies.append(Reply(text=text, finish_reason="stop" if has_eot_l[i] or hit_stop else "length",
                                 prompt_tokens=len(prompts[i]), completion_tokens=n_tokens,
                                 logprobs=token_logprobs[i][:n_tokens] if token_logprobs else None))
        return replies


class _StreamRows:
    """A per-step hook of generate (a stopping criterion): hands each row's new text to on_text, and stops the
    rows whose consumer has gone. Text is re-decoded from the row's tokens so multi-token characters come out
    whole (an incomplete UTF-8 sequence decodes to U+FFFD and waits for the next token)."""

    def __init__(self, tokenizer: Any, rows: list[int], eot_ids: list[int], on_text: OnText) -> None:
        self.tokenizer, self.rows, self.eot_ids, self.on_text = tokenizer, rows, set(eot_ids), on_text
        self.ids: list[list[int]] = [[] for _ in rows]
        self.sent = [0] * len(rows)
        self.finished = [False] * len(rows)
        self.gone = torch.zeros(len(rows), dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        for i, token in enumerate(input_ids[:, -1].tolist()):
            if self.finished[i]:
                continue
            if token in self.eot_ids:
                self.finished[i] = True
                continue
            self.ids[i].append(token)
            text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
            if len(text) > self.sent[i] and not text.endswith("\ufffd"):
                if self.on_text(self.rows[i], text[self.sent[i]:]) is False:
                    self.finished[i] = True
                    self.gone[i] = True
                self.sent[i] = len(text)
        return self.gone.to(input_ids.device)


def _batches(order: list[int], lengths: list[int], size: int, fits: int | None) -> list[list[int]]:
    """Rows (longest prompt first) in batches of `size`. A batch's max_new_tokens is clipped to the context left
    after its longest prompt, so a prompt longer than `fits` (context - max_new_tokens) only shares its batch with
    prompts of its own length: a short prompt beside it would lose new tokens it has room for when alone."""
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        end = min(start + size, len(order))
        if fits is not None and lengths[start] > fits:
            end = start + 1
            while end < len(order) and end - start < size and lengths[end] == lengths[start]:
                end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _generated_lengths(new: torch.Tensor, eot_ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: tokens the model produced (up to and including its first end-of-turn token; without one, up to
    the last non-pad token, since rows that stopped early are padded) and whether it ended with end-of-turn."""
    steps = torch.arange(1, new.shape[1] + 1, device=new.device)
    is_eot = torch.isin(new, torch.tensor(eot_ids, device=new.device))
    has_eot = is_eot.any(dim=1)
    first_eot = torch.where(is_eot, steps, new.shape[1] + 1).min(dim=1).values
    last_real = torch.where(new != pad_id, steps, 0).max(dim=1).values
    return torch.where(has_eot, first_eot, last_real), has_eot


def _chosen_logprobs(logits: tuple[torch.Tensor, ...], new: torch.Tensor) -> list[list[float]]:
    """Log-probability of each generated token under the model's raw distribution (before temperature/top_p)."""
    per_step = [torch.log_softmax(step.float(), dim=-1).gather(1, new[:, t:t + 1]) for t, step in enumerate(logits)]
    return torch.cat(per_step, dim=1).tolist()


def _progress(items: list, show: bool):
    if not show:
        yield from items
        return
    with progress_bar() as bar:
        task = bar.add_task("generating", total=len(items))
        for item in items:
            yield item
            bar.advance(task)
