"""Evol-Instruct: a teacher rewrites each instruction (in depth: add constraints, deepen, concretise, more
reasoning steps; in breadth: a new instruction of the same domain), then answers it. Elimination rules drop
rewrites with no information gain (ROUGE-L >= 0.8 to the original), rewrites that copy the prompt template,
and unusable answers (truncated, or failing the curation `clean` rules such as refusals).

Format rewrites (`--rewrite-format plain|markdown|json`) keep the instruction's meaning but have the teacher
rewrite the answer in that form; the user turn gets a one-sentence format request so that the pair stays
consistent. A JSON rewrite that does not parse is dropped (`format_invalid`), as is a plain rewrite that still
has Markdown, and an answer the teacher returns unchanged (`no_change`).

`synth multi-turn` lives here too: the teacher asks a follow-up question to a single-turn record and answers
it, so related turns are chained (a follow-up that repeats the previous question is dropped).

A record's tools go to the teacher with every answer request (OpenAI shape), so an answer may be a tool call: it
is kept as an assistant message with `tool_calls` (a dialogue that reaches one ends there: the tool's result is
not known), and dropped as `invalid_tool_call` when it calls an undeclared function or its arguments are not a
JSON object.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

from sftlab.curate.clean import clean_records
from sftlab.errors import UserError
from sftlab.infer import GenerationParams, Generator
from sftlab.synth.self_instruct import RougeL, SynthResult, first_user
from sftlab.synth.teacher import ask, invalid_tool_call, message_text, record_tools, reply_message, teacher_id

_IN_DEPTH = ("I want you to act as a prompt rewriter. Rewrite the given prompt into a more complex version that "
             "famous AI systems would find harder to handle, but that a human still understands and can answer. "
             "{how} Do not leave out the non-text parts of the given prompt. The rewritten prompt may add only "
             "10 to 20 words. Reply with the rewritten prompt only.\n\nGiven prompt:\n{prompt}")
OPS = {
    "constraints": _IN_DEPTH.replace("{how}", "Add one more constraint or requirement."),
    "deepen": _IN_DEPTH.replace("{how}", "Increase the depth and breadth of the inquiry."),
    "concretize": _IN_DEPTH.replace("{how}", "Replace general concepts with more specific ones."),
    "reasoning": _IN_DEPTH.replace("{how}", "If it can be solved with a few simple steps, ask explicitly for "
                                   "multiple-step reasoning."),
    "breadth": ("I want you to act as a prompt creator. Draw inspiration from the given prompt to create a brand "
                "new prompt of the same domain but rarer, of similar length and difficulty. Reply with the new "
                "prompt only.\n\nGiven prompt:\n{prompt}"),
}
# Words of the templates that a copying rewrite leaks into its output.
TEMPLATE_MARKERS = ("given prompt", "rewritten prompt", "#rewritten", "prompt rewriter", "prompt creator", "new prompt")
FOLLOWUP = ("Here is a conversation between a user and an assistant. Write the user's next message: one natural "
            "follow-up question that builds on the conversation. Reply with the question only.\n\n{dialogue}")
# form -> (what the teacher is asked to produce, the request appended to the user turn)
FORMATS = {
    "plain": ("plain text without any Markdown: no headings, lists, bold, tables or code fences",
              "Answer in plain text, without Markdown formatting."),
    "markdown": ("well-structured Markdown, with headings, lists or bold where they help the reader",
                 "Format the answer in Markdown."),
    "json": ("one valid JSON object holding the answer's content under descriptive keys, with no code fences "
             "and no text around it", "Reply with a JSON object only."),
}
REWRITE = ("Rewrite the answer below as {form}. Keep every fact and the meaning; change only the form. Reply with "
           "the rewritten answer only.\n\nQuestion:\n{question}\n\nAnswer:\n{answer}")
_MARKDOWN = re.compile(r"^\s{0,3}(#{1,6}\s|[-*+]\s|\d+\.\s|```|\|.*\|)|\*\*[^*]+\*\*", re.M)
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```\s*$", re.S)


def _check_format(form: str, text: str) -> tuple[str, str | None]:
    """(the answer to keep, None) or (text, why it is not in `form`). A fenced JSON reply is unwrapped."""
    if form == "json":
        text = m.group(1).strip() if (m := _FENCE.match(text)) else text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            return text, f"json: {e.msg} at char {e.pos}"
        return text, None if isinstance(value, dict | list) else "json: not an object or array"
    if form == "plain" and (m := _MARKDOWN.search(text)):
        return text, f"markdown in plain text: {m.group(0).strip()!r}"
    return text, None


def rewrite_formats(records: list[dict[str, Any]], teacher: Generator, formats: tuple[str, ...], *, seed: int = 0,
                    temperature: float = 0.7, max_new_tokens: int = 512) -> SynthResult:
    """One rewrite of each record's last answer per form; kept + dropped = len(records) * len(formats)."""
    if unknown := [f for f in formats if f not in FORMATS]:
        raise UserError(f"--rewrite-format: unknown {', '.join(unknown)} (use {', '.join(FORMATS)})")
    formats = tuple(dict.fromkeys(formats))
    source, dropped, todo = teacher_id(teacher), [], []
    for rec in records:
        for form in formats:
            base = {"id": f"{rec['id']}-{form}", "step": "evolve", "parent_id": rec["id"], "evolve": f"format:{form}"}
            msgs = rec["messages"]
            if msgs[-1]["role"] != "assistant" or not (msgs[-1].get("content") or "").strip():
                dropped.append({**base, "reason": "not_ending_on_assistant"})
                continue
            question = next((m.get("content") or "" for m in reversed(msgs) if m["role"] == "user"), "")
            todo.append((rec, form, base, REWRITE.format(form=FORMATS[form][0], question=question,
                                                         answer=msgs[-1]["content"])))
    replies = ask(teacher, [[{"role": "user", "content": p}] for *_, p in todo],
                  GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
                  label="rewrites") if todo else []
    out = []
    for (rec, form, base, _), reps in zip(todo, replies, strict=True):
        text, original = reps[0].text.strip(), rec["messages"][-1]["content"]
        text, invalid = _check_format(form, text)
        if reps[0].finish_reason == "length" or not text:
            dropped.append({**base, "reason": "rewrite_unusable"})
        elif " ".join(text.split()) == " ".join(original.split()):
            dropped.append({**base, "reason": "no_change"})
        elif invalid:
            dropped.append({**base, "reason": "format_invalid", "detail": invalid, "rewrite": text})
        else:
            msgs = [dict(m) for m in rec["messages"][:-1]] + [{"role": "assistant", "content": text}]
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last_user]["content"] = f"{msgs[last_user].get('content') or ''}\n\n{FORMATS[form][1]}".lstrip()
            out.append({**rec, "id": base["id"], "source": source, "messages": msgs,
                        "meta": {**(rec.get("meta") or {}), "synth": {
                            "step": "evolve", "evolve": f"format:{form}", "parent_id": rec["id"],
                            "teacher": source, "seed": seed}}})
    return _finish("evolve", out, dropped, len(records) * len(formats),
                   {"teacher": source, "seed": seed, "formats": list(formats)})


def _answers(teacher: Generator, prompts: list[list[dict]], seed: int, max_new_tokens: int,
             tools: list[list[dict] | None]) -> list[Any]:
    return [r[0] for r in ask(teacher, prompts, GenerationParams(max_new_tokens=max_new_tokens, seed=seed),
                              label="answers", tools=tools)]


def _finish(step: str, records: list[dict], dropped: list[dict], n_in: int, extra: dict) -> SynthResult:
    cleaned = clean_records(records, {})
    by_id = {r["id"]: r for r in records}
    dropped += [{**d, "step": step, "reason": f"clean:{d['reason']}",
                 "parent_id": by_id[d["id"]]["meta"]["synth"]["parent_id"]} for d in cleaned.dropped]
    summary = {"step": step, "inputs": n_in, "kept": len(cleaned.kept), "dropped": len(dropped),
               "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)), **extra}
    return SynthResult(cleaned.kept, dropped, summary)


def evolve(records: list[dict[str, Any]], teacher: Generator, *, ops: tuple[str, ...] = tuple(OPS), seed: int = 0,
           temperature: float = 0.7, max_new_tokens: int = 512, min_change: float = 0.8) -> SynthResult:
    """One evolution per record (op drawn with the seed); kept + dropped = len(records)."""
    if unknown := [o for o in ops if o not in OPS]:
        raise UserError(f"--ops: unknown {', '.join(unknown)} (use {', '.join(OPS)})")
    if not ops:
        raise UserError(f"--ops: give at least one evolution ({', '.join(OPS)})")
    rng = random.Random(seed)
    chosen = [rng.choice(ops) for _ in records]
    originals = [first_user(r) for r in records]
    convs = [[{"role": "user", "content": OPS[op].replace("{prompt}", text)}] for op, text in zip(chosen, originals,
                                                                                                  strict=True)]
    rewrites = ask(teacher, convs, GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                    seed=seed), label="evolve")
    source, rouge = teacher_id(teacher), RougeL()
    dropped, todo = [], []
    for rec, op, orig, reps in zip(records, chosen, originals, rewrites, strict=True):
        new = reps[0].text.strip()
        base = {"id": f"{rec['id']}-evol", "step": "evolve", "parent_id": rec["id"], "op": op, "instruction": new}
        sim = rouge.max_sim(new, [orig])[0] if new else 1.0
        if reps[0].finish_reason == "length" or not new:
            dropped.append({**base, "reason": "rewrite_unusable"})
        elif any(m in new.casefold() for m in TEMPLATE_MARKERS):
            dropped.append({**base, "reason": "copied_prompt_template"})
        elif sim >= min_change:
            dropped.append({**base, "reason": "no_information_gain", "rouge_l": round(sim, 4)})
        else:
            todo.append((rec, op, new, sim))
    tools = [record_tools(rec) for rec, *_ in todo]  # the evolved instruction keeps the parent's tools
    answers = _answers(teacher, [[{"role": "user", "content": new}] for _, _, new, _ in todo], seed, max_new_tokens,
                       tools)
    out = []
    for (rec, op, new, sim), ans, rec_tools in zip(todo, answers, tools, strict=True):
        rid = f"{rec['id']}-evol"
        answer = reply_message(ans)
        base = {"id": rid, "step": "evolve", "parent_id": rec["id"], "op": op, "instruction": new}
        if ans.finish_reason == "length":
            dropped.append({**base, "reason": "answer_truncated"})
            continue
        if why := invalid_tool_call(answer, rec_tools):
            dropped.append({**base, "reason": "invalid_tool_call", "detail": why})
            continue
        out.append({"id": rid, "task_type": rec["task_type"], "source": source, "tools": rec.get("tools"),
                    "messages": [{"role": "user", "content": new}, answer],
                    "meta": {"synth": {"step": "evolve", "op": op, "parent_id": rec["id"], "teacher": source,
                                       "seed": seed, "rouge_l_to_parent": round(sim, 4)}}})
    return _finish("evolve", out, dropped, len(records), {"teacher": source, "seed": seed,
                                                          "ops": dict(Counter(chosen))})


def multi_turn(records: list[dict[str, Any]], teacher: Generator, *, turns: int = 2, seed: int = 0,
               temperature: float = 0.7, max_new_tokens: int = 512, max_repeat: float = 0.7) -> SynthResult:
    """Extend each dialogue to `turns` user turns with teacher-written follow-ups and answers."""
    source, rouge = teacher_id(teacher), RougeL()
    live, dropped, done = [], [], []  # done: dialogues that ended on a tool call (kept, not extended)
    for r in records:
        last = r["messages"][-1]
        if last["role"] != "assistant" or last.get("tool_calls"):  # after a tool call comes its result, not a user
            reason = "ends_on_tool_call" if last["role"] == "assistant" else "not_ending_on_assistant"
            dropped.append({"id": r["id"], "step": "multi_turn", "parent_id": r["id"], "reason": reason})
        else:
            live.append(dict(r, messages=list(r["messages"])))
    for step in range(turns - 1):
        dialogues = ["\n".join(f"{m['role']}: {message_text(m)}" for m in r["messages"] if m["role"] != "system")
                     for r in live]
        asks = ask(teacher, [[{"role": "user", "content": FOLLOWUP.format(dialogue=d)}] for d in dialogues],
                   GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + step),
                   label="follow-ups")
        nxt = []
        for r, reps in zip(live, asks, strict=True):
            q = reps[0].text.strip()
            prev = [m["content"] for m in r["messages"] if m["role"] == "user"]
            sim = rouge.max_sim(q, prev)[0] if q else 1.0
            if reps[0].finish_reason == "length" or not q:
                dropped.append({"id": r["id"], "step": "multi_turn", "parent_id": r["id"], "reason": "followup_unusable"})
            elif sim >= max_repeat:
                dropped.append({"id": r["id"], "step": "multi_turn", "parent_id": r["id"], "followup": q,
                                "reason": "followup_repeats_question", "rouge_l": round(sim, 4)})
            else:
                r["messages"].append({"role": "user", "content": q})
                nxt.append(r)
        tools = [record_tools(r) for r in nxt]
        answers = _answers(teacher, [r["messages"] for r in nxt], seed + step, max_new_tokens, tools)
        live = []
        for r, ans, r_tools in zip(nxt, answers, tools, strict=True):
            answer = reply_message(ans)
            if ans.finish_reason == "length":
                dropped.append({"id": r["id"], "step": "multi_turn", "parent_id": r["id"], "reason": "answer_truncated"})
            elif why := invalid_tool_call(answer, r_tools):
                dropped.append({"id": r["id"], "step": "multi_turn", "parent_id": r["id"], "reason": "invalid_tool_call",
                                "detail": why})
            else:
                r["messages"].append(answer)
                (done if answer.get("tool_calls") else live).append(r)
    out = [{**r, "id": f"{r['id']}-mt", "source": source,
            "meta": {**(r.get("meta") or {}), "synth": {"step": "multi_turn", "parent_id": r["id"],
                                                       "teacher": source, "seed": seed, "turns": turns}}}
           for r in live + done]
    return _finish("multi_turn", out, dropped, len(records), {"teacher": source, "seed": seed, "turns": turns,
                                                              "ended_on_tool_call": len(done)})
