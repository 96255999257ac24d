"""Fix → data: a corrected reply (or the better of two) becomes training data at once.

Each fix appends one canonical SFT record (the prompt + the fixed reply, provenance in `meta.fix`) to FIXES/sft.jsonl
— the format `sftlab data` and `train` read — and one preference pair (chosen = the fix, rejected = the original, TRL's
conversational layout, as `sftlab synth` and `flywheel` write pairs.jsonl) to FIXES/pairs.jsonl.

Appends are durable (`sftlab.io.append_json_line`): one write of a whole line, then fsync, under a lock; a line torn
by a crash mid-write is cut off before the next append, so the files always read cleanly.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from sftlab.data.records import make_record, validate_record
from sftlab.errors import UserError
from sftlab.io import append_json_line
from sftlab.synth.best_of_n import format_pair

SFT_FILE = "sft.jsonl"
PAIRS_FILE = "pairs.jsonl"


def append_fix(out_dir: Path, *, prompt: list[dict[str, Any]], original: str, fixed: str, task_type: str,
               provenance: dict[str, Any], tools: list | None = None) -> dict[str, Any]:
    """Append the SFT record and the preference pair of one fix; returns {"record", "pair", "sft_path",
    "pairs_path"}. UserError when the fix is no change or the record would not be valid training data."""
    if not fixed.strip():
        raise UserError("the fixed reply is empty")
    if fixed.strip() == (original or "").strip():
        raise UserError("the fixed reply is the same as the original: edit it first")
    if not prompt:
        raise UserError("this item has no prompt to train on")
    made = time.time()
    digest = hashlib.sha1(json.dumps([prompt, fixed, made], ensure_ascii=False).encode()).hexdigest()[:12]
    meta = {"fix": {**provenance, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(made))},
            "original_reply": original}
    record = make_record([*prompt, {"role": "assistant", "content": fixed}], id=f"fix-{digest}",
                         task_type=task_type or "default", source="sftlab-ui:fix", tools=tools, meta=meta)
    try:
        validate_record(record)
    except UserError as e:
        raise UserError(f"the fix is not a valid training record: {e}") from None
    pair = format_pair(prompt, fixed, original, "trl", {**meta["fix"], "sft_id": record["id"]}, tools)
    sft_path, pairs_path = out_dir / SFT_FILE, out_dir / PAIRS_FILE
    append_json_line(sft_path, record)
    append_json_line(pairs_path, pair)
    return {"record": record, "pair": pair, "sft_path": str(sft_path), "pairs_path": str(pairs_path)}
