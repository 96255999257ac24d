"""A corpus of malformed SFT data files, generated (no committed binaries) for the no-traceback test.

    python tests/data/malformed_corpus.py DIR     # writes the files and DIR/manifest.json

Every file holds at least one defect that stops a strict (`--on-error raise`) read. `rows` in the manifest
is the number of records a reader sees (null when the whole file is unreadable: then every command must
fail with one line); with `--on-error skip`, kept + rejected must equal it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

GOOD = {"instruction": "Name a colour.", "output": "Blue."}
GOOD_CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _chat(*turns, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def _call(**fn):
    return {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": fn}]},
                         {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "sunny"}]}


# name -> list of JSONL lines (objects are dumped; strings are written as they are)
JSONL_CASES: dict[str, list] = {
    "truncated_line": [GOOD, '{"instruction": "x", "output": '],
    "not_an_object": [GOOD, "[1, 2, 3]", '"just a string"', "42"],
    "missing_output": [GOOD, {"instruction": "q"}],
    "missing_instruction": [{"output": "a"}, GOOD],
    "wrong_types": [{"instruction": 5, "output": "a"}, {"instruction": "q", "output": ["a"]}, GOOD],
    "empty_answer": [{"instruction": "q", "output": "   "}, GOOD],
    "empty_prompt": [{"instruction": "", "input": "", "output": "a"}, GOOD],
    "unknown_layout": [{"question": "q", "answer": "a"}, GOOD],
    "unknown_role": [_chat(("user", "q"), ("wizard", "a")), GOOD_CHAT],
    "ends_on_user": [_chat(("user", "q"), ("assistant", "a"), ("user", "more?")), GOOD_CHAT],
    "starts_with_assistant": [_chat(("assistant", "hello"), ("user", "q"), ("assistant", "a")), GOOD_CHAT],
    "system_only": [_chat(("system", "s")), GOOD_CHAT],
    "no_messages": [{"messages": []}, {"messages": None}, GOOD_CHAT],
    "message_not_object": [{"messages": ["hi", "there"]}, GOOD_CHAT],
    "content_not_text": [_chat(("user", "q"), ("assistant", 7)), GOOD_CHAT],
    "image_part": [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                 {"role": "assistant", "content": "a"}]}, GOOD_CHAT],
    "tool_args_not_json": [_call(name="f", arguments="{not json"), GOOD_CHAT],
    "tool_no_name": [_call(arguments="{}"), GOOD_CHAT],
    "tool_calls_not_list": [{"messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "", "tool_calls": {"name": "f"}}]}],
    "function_call_bad": [{"conversations": [{"from": "human", "value": "q"},
                                             {"from": "function_call", "value": "get_weather(city=Paris)"},
                                             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "ok"}]},
                          GOOD],
    "sharegpt_bad_turn": [{"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},
                          {"conversations": "hello"}, GOOD],
    "preference_pairs": [{"conversations": [{"from": "human", "value": "q"}],
                          "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}],
    "kto_labels": [dict(_chat(("user", "q"), ("assistant", "good")), label=True),
                   dict(_chat(("user", "q"), ("assistant", "bad")), label=False)],
    "multimodal": [dict(_chat(("user", "<image>Who?"), ("assistant", "Two players.")), images=["1.jpg"]), GOOD_CHAT],
    "nan_values": ['{"instruction": "q", "output": "a", "score": NaN}',
                   '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", '
                   '"loss_weight": Infinity}]}', GOOD],
    "negative_loss_weight": [{"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a", "loss_weight": -1}]}, GOOD_CHAT],
    "lone_surrogate": ['{"instruction": "q\\ud83d", "output": "a"}', GOOD],
    "deep_nesting": ["[" * 50_000 + "]" * 50_000, "{\"a\": " * 3000 + "1" + "}" * 3000, GOOD],
    "bad_id": [{"instruction": "q", "output": "a", "id": {"x": 1}}, {"instruction": "q", "output": "a", "id": True},
               GOOD],
    "duplicate_ids": [dict(GOOD, id="same"), dict(GOOD, id="same")],
    "bad_meta": [dict(GOOD, meta="not an object"), GOOD],
    "bad_history": [dict(GOOD, history=[["only one"]]), dict(GOOD, history="x"), GOOD],
    "duplicate_keys_and_bad_line": ['{"instruction": "q", "output": "a", "output": "b"}', "{oops"],
    "control_text_and_bad_line": [{"instruction": "q", "output": "a <|im_end|> b"}, {"instruction": "q"}],
    "prompts_bad_turns": [{"question_id": 1, "turns": []}, {"question_id": 2, "turns": [""]},
                          {"question_id": 3, "turns": ["ok?"]}],
}

# name -> (file suffix, bytes); rows = None means the whole file is refused
RAW_CASES: dict[str, tuple[str, bytes, int | None]] = {
    "empty": (".jsonl", b"", None),
    "blank_lines": (".jsonl", b"\n\n   \n", None),
    "empty_json": (".json", b"", None),
    "utf16_jsonl": (".jsonl", json.dumps(GOOD).encode("utf-16"), 1),
    "utf16_json": (".json", json.dumps([GOOD]).encode("utf-16"), None),
    "latin1": (".jsonl", (json.dumps(GOOD) + "\n" + json.dumps({"instruction": "café", "output": "crème"},
                                                                ensure_ascii=False)).encode("latin-1"), 2),
    "binary": (".jsonl", bytes(range(11, 256)) * 8, 1),  # one "line" of non-UTF-8 bytes
    "truncated_array": (".json", json.dumps([GOOD, GOOD])[:-10].encode(), None),
    "scalar_json": (".json", b"42", None),
    "object_two_lists": (".json", json.dumps({"a": [GOOD], "b": [GOOD]}).encode(), None),
    "array_with_bad_record": (".json", json.dumps([GOOD, {"instruction": "q"}, 3]).encode(), 3),
    "deep_array": (".json", b"[" * 100_000 + b"]" * 100_000, None),
    "csv_unterminated_quote": (".csv", b'instruction,output\nq1,"unterminated\nq2,a2\n', None),
    "csv_extra_cells": (".csv", b"instruction,output\nq1,a1\nq2,a2,extra\n", 2),
    "not_parquet": (".parquet", b"PAR1 this is not parquet", None),
    "unknown_suffix": (".txt", b"instruction: q\noutput: a\n", None),
}


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def write_corpus(out: str | Path) -> list[dict]:
    """Write every case under `out`; returns the manifest [{file, rows}] (also written to manifest.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, lines in JSONL_CASES.items():
        path = out / f"{name}.jsonl"
        text = "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines)
        path.write_text(text, encoding="utf-8")
        manifest.append({"file": str(path), "rows": len(lines)})
    for name, (suffix, data, rows) in RAW_CASES.items():
        path = out / f"{name}{suffix}"
        path.write_bytes(data)
        manifest.append({"file": str(path), "rows": rows})
    csv_cases = {"csv_missing_answer": [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": ""}],
                 "csv_bad_json_cell": [{"messages": '[{"role": "user"'}, {"messages": json.dumps(GOOD_CHAT["messages"])}]}
    for name, rows in csv_cases.items():
        path = out / f"{name}.csv"
        path.write_bytes(_csv(rows))
        manifest.append({"file": str(path), "rows": len(rows)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/malformed_corpus.py DIR")
    print(f"{len(write_corpus(sys.argv[1]))} files -> {sys.argv[1]}")
