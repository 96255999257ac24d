"""Parity with LLaMA-Factory's own SFT preprocessing (slow; skipped where llamafactory is not importable).

LLaMA-Factory 0.9.5's `get_dataset` (stage sft, template qwen, cutoff_len 2048, train_on_prompt false, mask_history
false and true) and sftlab's render (Qwen2.5-Instruct's template from `sftlab tiny-model --vocab qwen`, max_length
2048, train_on all_assistant and last_assistant) read the same files: the shared demo files and our Chinese
conversations (as a sharegpt file). Every pair of samples is classified; the only differences allowed are the
documented ones: LLaMA-Factory also supervises the "\\n" the template writes after <|im_end|> (generation never
produces it), and truncation (LLaMA-Factory cuts prompt and answer by a ratio; sftlab cuts the tail, or with
last_assistant drops the oldest exchanges, and drops what it cannot keep whole). The numbers are printed (-s) and
recorded in docs/DESIGN.md section 4, with the command and the environment.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from sftlab.data.formats import read_records
from sftlab.data.render import load_tokenizer, render_records

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
CUTOFF = 2048
IM_END, NEWLINE = 151645, 198
MODES = {False: "all_assistant", True: "last_assistant"}  # LLaMA-Factory mask_history -> sftlab train_on


@pytest.fixture(scope="module")
def llamafactory():
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # 0.9.5 pins transformers <= 5.6; the data path runs on ours
    return pytest.importorskip("llamafactory.data", reason="llamafactory is not installed (see docs/DESIGN.md §4)")


def zh_as_sharegpt(path: Path) -> None:
    """Our Chinese conversations in LLaMA-Factory's sharegpt layout (system column, function_call / observation
    turns, tools as JSON text), so both sides read one file."""
    rows = []
    for rec in read_records(FIXTURES / "zh_conversations.jsonl")[0]:
        msgs, row = rec["messages"], {}
        if msgs[0]["role"] == "system":
            row["system"], msgs = msgs[0]["content"], msgs[1:]
        conv = []
        for m in msgs:
            if m.get("tool_calls"):
                fn = m["tool_calls"][0]["function"]
                args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
                conv.append({"from": "function_call",
                             "value": json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)})
            else:
                conv.append({"from": {"user": "human", "assistant": "gpt", "tool": "observation"}[m["role"]],
                             "value": m["content"]})
        row["conversations"] = conv
        if rec["tools"]:
            row["tools"] = json.dumps(rec["tools"], ensure_ascii=False)
        rows.append(row)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def datasets(real_data_dir: Path, tmp: Path) -> dict[str, dict]:
    """LLaMA-Factory dataset_info entries, in reading order."""
    zh = tmp / "zh_sharegpt.json"
    zh_as_sharegpt(zh)
    columns = {"messages": "conversations", "tools": "tools"}
    return {"alpaca_en_demo": {"file_name": str(real_data_dir / "alpaca_en_demo.json")},
            "identity": {"file_name": str(real_data_dir / "identity.json")},
            "glaive_toolcall_en_demo": {"file_name": str(real_data_dir / "glaive_toolcall_en_demo.json"),
                                        "formatting": "sharegpt", "columns": columns},
            "zh_sharegpt": {"file_name": str(zh), "formatting": "sharegpt", "columns": {**columns, "system": "system"}}}


def llamafactory_samples(lf, model_dir: Path, info: dict, tmp: Path, mask_history: bool) -> list[dict]:
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    (tmp / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": ",".join(info), "dataset_dir": str(tmp), "template": "qwen", "cutoff_len": CUTOFF,
        "train_on_prompt": False, "mask_history": mask_history, "overwrite_cache": True,
        "output_dir": str(tmp / "out"), "report_to": "none"})
    # LLaMA-Factory's own load_tokenizer imports trl's value-head model, gone from trl 1.x: its tokenizer call
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="right")
    template = lf.get_template_and_fix_tokenizer(tok, data_args)
    ds = lf.get_dataset(template, model_args, data_args, training_args, stage="sft", tokenizer=tok)["train_dataset"]
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in ds]


def classify(lf_sample: dict, ours: dict | None, record_len: int, dropped: str | None) -> tuple[str, int]:
    """One pair's class (identical, or which documented difference; anything else is 'other ...') and the number of
    tokens LLaMA-Factory supervises beyond sftlab's."""
    if ours is None:
        return f"truncation: sftlab drops the sample ({dropped}; LLaMA-Factory keeps {len(lf_sample['input_ids'])} " \
               f"of its {record_len} tokens, cut by its prompt/answer ratio)", 0
    a, b = lf_sample["input_ids"], ours["input_ids"]
    if a != b:
        return ("truncation: cut differently" if record_len > CUTOFF else "other: input ids differ"), 0
    lf_sup = {i for i, x in enumerate(lf_sample["labels"]) if x != -100}
    our_sup = {i for i, t in enumerate(ours["turn_index"]) if t >= 0}
    if lf_sup == our_sup:
        return "identical", 0
    extra = lf_sup - our_sup
    if our_sup < lf_sup and all(a[i] == NEWLINE and a[i - 1] == IM_END for i in extra):
        return "supervised \\n after <|im_end|> (LLaMA-Factory only)", len(extra)
    return "other: supervised spans differ", 0


def test_same_ids_as_llamafactory_differences_only_of_the_documented_kinds(llamafactory, qwen_model_dir,
                                                                           real_data_dir, tmp_path):
    info = datasets(real_data_dir, tmp_path)
    records = [r for name, d in info.items() for r in read_records(d["file_name"], task_type=name)[0]]
    tok = load_tokenizer(str(qwen_model_dir))
    whole = {s["id"]: s["num_tokens"] for s in render_records(records, tok, max_length=10**7)[0]}
    lines = []
    for mask_history, train_on in MODES.items():
        theirs = llamafactory_samples(llamafactory, qwen_model_dir, info, tmp_path, mask_history)
        assert len(theirs) == len(records)  # LLaMA-Factory dropped no row: pairs line up
        samples, report = render_records(records, tok, train_on=train_on, max_length=CUTOFF, on_error="skip")
        ours = {s["id"]: s for s in samples}
        dropped = {r["record"]["id"]: r["code"] for r in report.rejects}
        pairs = [classify(t, ours.get(r["id"]), whole[r["id"]], dropped.get(r["id"]))
                 for t, r in zip(theirs, records, strict=True)]
        classes = Counter(c for c, _ in pairs)
        same_ids = sum(1 for t, r in zip(theirs, records, strict=True)
                       if r["id"] in ours and t["input_ids"] == ours[r["id"]]["input_ids"])
        same_spans = classes["identical"] + sum(1 for c, _ in pairs if c.startswith("supervised"))
        lines.append(f"mask_history={mask_history} / train_on={train_on}: {len(records)} pairs; identical input ids "
                     f"{same_ids}; identical supervised spans {classes['identical']} (apart from the '\\n' after "
                     f"<|im_end|>: {same_spans}, {sum(n for _, n in pairs)} such tokens); "
                     + "; ".join(f"{k}: {v}" for k, v in sorted(classes.items()) if k != "identical"))
        assert not [k for k in classes if k.startswith("other")], lines[-1]
        assert same_ids == same_spans == len(records) - sum(v for k, v in classes.items() if k.startswith("trunc"))
    print("\n" + "\n".join(lines))
