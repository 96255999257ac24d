"""The rendered-data store (sftlab/data/store.py): same samples as rendering in memory, byte-identical for any
num_proc, rejects kept, cached by fingerprint (a changed input invalidates it), reused by a second run and a
resume, built ahead of time by `sftlab data render-cache`, opened by the training loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import run_cli

from sftlab.config import DataSource
from sftlab.data import store as store_mod
from sftlab.data.formats import read_records
from sftlab.data.records import write_jsonl
from sftlab.data.render import load_tokenizer, render_records
from sftlab.data.store import RenderSettings, Store, build_or_open, render_store
from sftlab.errors import UserError
from sftlab.train.loss import attach_loss_coefficients

FILES = ("input_ids.bin", "turn_index.bin", "turn_coef.bin", "samples.npz", "sample_ids.txt", "rejects.jsonl")


def _records(small_records: list[dict]) -> list[dict]:
    """The small records plus multi-turn ones with turn weights, a record too long for max_length, and bad ones."""
    recs = [dict(r) for r in small_records]
    recs.append({"id": "weighted", "task_type": "chat", "source": "t", "meta": {}, "messages": [
        {"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi", "loss_weight": 0.5},
        {"role": "user", "content": "more words please"}, {"role": "assistant", "content": "one two three four"}]})
    recs.append({"id": "long", "task_type": "chat", "source": "t", "meta": {}, "messages": [
        {"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "too far"}]})
    recs.append({"id": "empty", "task_type": "chat", "source": "t", "meta": {}, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]})
    return recs


def _build(tmp_path: Path, tokenizer, records, settings: RenderSettings, num_proc: int, name: str) -> Store:
    render_store(records, [], tokenizer, settings, tmp_path / name, num_proc=num_proc, label=name)
    return Store(tmp_path / name)


@pytest.mark.parametrize("loss", ["turn", "token", "sequence"])
def test_store_equals_in_memory_render_for_any_num_proc(loss, tmp_path, tiny_tokenizer, small_records, monkeypatch):
    monkeypatch.setattr(store_mod, "CHUNK_RECORDS", 4)  # many chunks, so two workers really split the work
    records = _records(small_records)
    settings = RenderSettings(max_length=64, train_on="all_assistant", loss=loss, on_error="skip")
    one = _build(tmp_path, tiny_tokenizer, records, settings, 1, "one")
    two = _build(tmp_path, tiny_tokenizer, records, settings, 2, "two")
    assert two.manifest["render"]["num_proc"] == 2
    for name in FILES:  # deterministic: the same bytes whatever the number of processes
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    ref, report = render_records(records, tiny_tokenizer, max_length=64, on_error="skip")
    attach_loss_coefficients(ref, loss)
    assert len(one) == len(ref) == len(records) - 2 and report.truncated == one.manifest["truncated"] == 1
    assert one.input_ids.dtype == np.uint16 and one.turn_index.dtype == np.int16
    for i, r in enumerate(ref):
        s = one.sample(i)
        assert (s["id"], s["task_type"], s["num_tokens"]) == (r["id"], r["task_type"], r["num_tokens"])
        np.testing.assert_array_equal(s["input_ids"], r["input_ids"])
        np.testing.assert_array_equal(s["labels"], r["labels"])
        assert s["loss_coef"].tobytes() == np.asarray(r["loss_coef"], dtype=np.float64).tobytes()  # bitwise
        assert one.denoms[i] == r["loss_denom"]
    # rejects: counted in the manifest and written with the record's index in the source (not in its chunk)
    rejects = one.rejects()
    assert one.manifest["dropped"] == {"no_supervised_tokens_after_truncation": 1, "empty_assistant": 1}
    by_code = {r["code"]: r for r in rejects}
    assert by_code["empty_assistant"]["raw"]["id"] == "empty"
    assert by_code["empty_assistant"]["reason"].startswith(f"record {len(records) - 1}, field")
    assert by_code["no_supervised_tokens_after_truncation"]["reason"].startswith(f"record {len(records) - 2} ")


def test_render_error_names_the_source_index(tmp_path, tiny_tokenizer, small_records, monkeypatch):
    """on_error=raise: the first bad record is a one-line error with its index in the source, from a worker too."""
    from sftlab.data.records import RecordError

    monkeypatch.setattr(store_mod, "CHUNK_RECORDS", 4)
    records = _records(small_records)[:-2] + _records(small_records)[-1:]  # the empty answer is last
    settings = RenderSettings(max_length=64, train_on="all_assistant", loss="turn", on_error="raise")
    with pytest.raises(RecordError, match=rf"record {len(records) - 1}, field 'messages\[1\].content'"):
        render_store(records, [], tiny_tokenizer, settings, tmp_path / "s", num_proc=2)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_cache_key_changes_with_every_input(tmp_path, tiny_model_dir, tiny_tokenizer, small_records):
    data = tmp_path / "train.jsonl"
    write_jsonl(small_records, data)
    src = DataSource(path=str(data))
    settings = RenderSettings(max_length=64, train_on="all_assistant", loss="turn")
    cache = tmp_path / "cache"
    first = build_or_open(src, tiny_tokenizer, settings, cache, 1)
    again = build_or_open(src, tiny_tokenizer, settings, cache, 1)
    assert not first.hit and again.hit and again.key == first.key and len(again.store) == len(small_records)

    keys = {first.key}
    for changed in (RenderSettings(max_length=32, train_on="all_assistant", loss="turn"),
                    RenderSettings(max_length=64, train_on="last_assistant", loss="turn"),
                    RenderSettings(max_length=64, train_on="all_assistant", loss="token")):
        got = build_or_open(src, tiny_tokenizer, changed, cache, 1)
        assert not got.hit
        keys.add(got.key)
    other_template = load_tokenizer(str(tiny_model_dir), "{{ messages[0]['content'] }}{% for m in messages %}"
                                    "<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    assert store_mod.tokenizer_hash(other_template) != store_mod.tokenizer_hash(tiny_tokenizer)
    write_jsonl(small_records[:-1], data)  # same path, new content
    changed_data = build_or_open(src, tiny_tokenizer, settings, cache, 1)
    assert not changed_data.hit and len(changed_data.store) == len(small_records) - 1
    keys.add(changed_data.key)
    assert len(keys) == 5


@pytest.mark.parametrize("damage", ["truncate input_ids.bin", "extend turn_index.bin", "delete samples.npz",
                                    "cut samples.npz", "cut manifest.json", "cut sample_ids.txt",
                                    "delete manifest.json", "cut rejects.jsonl", "drop-line rejects.jsonl"])
def test_damaged_store_is_rendered_again_or_named(damage, tmp_path, tiny_tokenizer, small_records, capsys):
    """A store file cut short, grown or deleted after the build (disk full, an interrupted copy of the cache) is
    found when the store is opened: the builder renders it again, a waiting rank never maps it."""
    data = tmp_path / "train.jsonl"
    write_jsonl(_records(small_records), data)  # with rejects (one when read, one when rendered)
    src = DataSource(path=str(data))
    settings = RenderSettings(max_length=64, train_on="all_assistant", loss="turn", on_error="skip")
    first = build_or_open(src, tiny_tokenizer, settings, tmp_path / "cache", 1)
    want = [first.store.sample(i) for i in range(len(first.store))]
    assert len(first.store.rejects()) == 2
    what, name = damage.split()
    f = first.store.path / name
    if what == "drop-line":
        f.write_text(f.read_text().splitlines(keepends=True)[0])
    elif what == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    elif what == "extend":
        f.write_bytes(f.read_bytes() + b"\0\0")
    elif what == "delete":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    with pytest.raises(UserError, match=rf"waited 0 s .*rendered store {first.store.path}"):
        build_or_open(src, tiny_tokenizer, settings, tmp_path / "cache", 1, build=False, wait_s=0.3)
    capsys.readouterr()
    again = build_or_open(src, tiny_tokenizer, settings, tmp_path / "cache", 1)
    assert not again.hit and again.key == first.key and "is damaged" in capsys.readouterr().out
    got = [again.store.sample(i) for i in range(len(again.store))]
    for a, b in zip(want, got, strict=True):
        assert a["id"] == b["id"] and np.array_equal(a["input_ids"], b["input_ids"])
        assert np.array_equal(a["loss_coef"], b["loss_coef"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.key]  # the damaged copy is gone


def test_temp_store_of_another_host_with_the_same_pid_is_left_alone(tmp_path, tiny_tokenizer, small_records):
    """Nodes sharing a cache dir run builders with the same pid (containers): one must never delete the other's
    half-written temp store."""
    import os

    records = small_records
    settings = RenderSettings(max_length=64, train_on="all_assistant", loss="turn")
    other = tmp_path / f"s.tmp-{os.getpid()}"  # what another host's builder with this pid wrote before the fix
    other.mkdir()
    (other / "input_ids.bin").write_bytes(b"in progress")
    render_store(records, [], tiny_tokenizer, settings, tmp_path / "s", num_proc=1)
    assert (other / "input_ids.bin").read_bytes() == b"in progress"
    assert len(Store(tmp_path / "s")) == len(records)


def test_tokenizer_saved_in_a_checkpoint_hashes_the_same(tmp_path, tiny_tokenizer):
    """A resume loads the tokenizer from the checkpoint: it must find the same cache."""
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    again = load_tokenizer(str(tmp_path / "ckpt"))
    assert store_mod.tokenizer_hash(again) == store_mod.tokenizer_hash(tiny_tokenizer)


# ------------------------------------------------------------------------------------- through the CLI


def _config(tmp_path: Path, model_dir: Path, train: Path, run: str, **train_keys) -> Path:
    cfg = {"model": {"name_or_path": str(model_dir)},
           "data": {"train": [str(train)], "eval": [str(train)], "max_length": 64, "cache_dir": str(tmp_path / "cache"),
                    "on_error": "skip"},
           "train": {"output_dir": str(tmp_path / run), "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "max_steps": 4, "logging_steps": 1,
                     "seed": 3, "report_to": [], **train_keys}}
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_render_cache_then_train_hits_and_resume_reuses(tmp_path, tiny_model_dir, small_records, capsys):
    train = tmp_path / "train.jsonl"
    write_jsonl(_records(small_records), train)
    cfg = _config(tmp_path, tiny_model_dir, train, "run", save_steps=2)
    code, out, err = run_cli(["data", "render-cache", cfg], capsys)
    assert code == 0, err
    assert "rendering" in out and len(list((tmp_path / "cache").iterdir())) == 1  # train and eval: one store
    # what rendering left out is said, not only counted in the manifest
    assert f"data.train[0] {train}: 27 records -> 25 samples; 1 truncated to max_length (1 turns lost); " \
           "dropped 1: no_supervised_tokens_after_truncation; rejected 1 when read" in out

    code, out, err = run_cli(["train", cfg], capsys)
    assert code == 0, err
    assert "rendering" not in out and "cache hit" in out
    used = json.loads((tmp_path / "run" / "data_cache.json").read_text())
    store_dir = str(next((tmp_path / "cache").iterdir()))
    assert [c["hit"] for c in used["train"] + used["eval"]] == [True, True]
    assert used["train"][0]["store"] == store_dir
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects-train.jsonl").read_text().splitlines()]
    assert sorted(r["code"] for r in rejects) == ["empty_assistant", "no_supervised_tokens_after_truncation"]
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())["train"]
    assert summary["samples_per_task"] == {"chat": 1, "math/add": 12, "text/repeat": 12}
    assert summary["rejected"] == 2 and len(summary["lengths"]) == 25

    # resume from step 2: the tokenizer comes from the checkpoint and still finds the same store
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    assert ckpt.is_dir()
    code, out, err = run_cli(["train", cfg, "train.resume=auto", "train.max_steps=4"], capsys)
    assert code == 0, err
    assert "rendering" not in out and "resumed from" in out


def test_weight_that_keeps_no_sample_is_an_error(tmp_path, tiny_model_dir, small_records, capsys):
    """weight 0.01 on 24 samples rounds to none: the source used to vanish from a mix silently (or, alone, read as
    'every record was rejected (0)')."""
    train, small = tmp_path / "train.jsonl", tmp_path / "small.jsonl"
    write_jsonl(small_records, train)
    write_jsonl(small_records[:5], small)
    cfg = _config(tmp_path, tiny_model_dir, train, "run")
    code, out, err = run_cli(["train", cfg, f"data.train=[{train}, {{path: {small}, weight: 0.01}}]"], capsys)
    assert code == 2 and f"error: data.train[1] {small}: weight 0.01 x 5 samples keeps no sample" in err, err
    code, out, err = run_cli(["train", cfg, f"data.eval=[{{path: {small}, weight: 0.01}}]"], capsys)
    assert code == 2 and f"error: data.eval[0] {small}: weight 0.01 x 5 samples keeps no sample" in err, err


def test_train_metrics_identical_with_fresh_and_cached_store(tmp_path, tiny_model_dir, small_records, capsys):
    """Rendering in 2 processes or reading the cache changes no logged number."""
    train = tmp_path / "train.jsonl"
    write_jsonl([dict(r, id=f"{r['id']}-{k}") for k in range(50) for r in small_records], train)  # 1200 records
    a = _config(tmp_path, tiny_model_dir, train, "a", max_steps=3)
    b = _config(tmp_path, tiny_model_dir, train, "b", max_steps=3)
    code, out, err = run_cli(["train", a, "data.num_proc=2"], capsys)
    assert code == 0, err
    assert "2 processes" in out
    code, out, err = run_cli(["train", b], capsys)
    assert code == 0, err
    assert "cache hit" in out and "rendering" not in out

    def numbers(run: str) -> list[dict]:
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        # measurements of the process, not numbers of the run: speed, and the growth of ru_maxrss (a
        # process-wide high-water mark, so a second run in the same pytest worker reads lower)
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "memory_peak_gb")} for r in rows]

    assert numbers("a") == numbers("b") and len(numbers("a")) >= 3


def test_dataset_per_sample_arrays(tmp_path, tiny_model_dir, tiny_tokenizer, small_records):
    """The loop's DataSet: samples sliced from the store, task codes, channel matrix from them, weights repeat."""
    from sftlab.config import build_config
    from sftlab.train.dataset import load_split

    train = tmp_path / "train.jsonl"
    write_jsonl(small_records, train)
    cfg = build_config({"model": {"name_or_path": str(tiny_model_dir)},
                        "data": {"train": [{"path": str(train), "weight": 1.5}], "max_length": 64,
                                 "cache_dir": str(tmp_path / "cache")},
                        "train": {"output_dir": str(tmp_path / "run")}})
    data = load_split(cfg.data.train, cfg, tiny_tokenizer, "train", True)
    n = len(small_records)
    assert len(data.samples) == n + n // 2 == len(data.lengths) == len(data.task_codes)
    assert data.task_names == ["math/add", "text/repeat"] and data.task_codes.dtype == np.int16
    assert data.channels == ["math", "math/add", "text", "text/repeat"]
    recs, _ = read_records(train)
    ref, _ = render_records(recs, tiny_tokenizer, max_length=64)
    for i in (0, 5, n + 3):  # a repeated sample is one of the originals
        s = data.samples[i]
        r = next(x for x in ref if x["id"] == s["id"])
        np.testing.assert_array_equal(s["input_ids"], r["input_ids"])
        assert data.lengths[i] == r["num_tokens"]
        assert data.task_names[data.task_codes[i]] == r["task_type"]
        assert data.channel_matrix[i].tolist() == [float(c in (r["task_type"], r["task_type"].split("/")[0]))
                                                   for c in data.channels]


def test_render_cache_builds_every_stage_of_a_plan_once(tmp_path, tiny_model_dir, small_records, capsys):
    train = tmp_path / "train.jsonl"
    write_jsonl(small_records, train)
    plan = {"model": {"name_or_path": str(tiny_model_dir)},
            "data": {"train": [str(train)], "max_length": 64, "cache_dir": str(tmp_path / "cache")},
            "train": {"output_dir": str(tmp_path / "plan")},
            "stages": [{"name": "a"}, {"name": "b", "train": {"learning_rate": 1e-5}},
                       {"name": "c", "data": {"max_length": 32}}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    code, out, err = run_cli(["data", "render-cache", path], capsys)
    assert code == 0, err
    assert out.count("rendering") == 2 and len(list((tmp_path / "cache").iterdir())) == 2  # a = b; c differs

    code, out, err = run_cli(["data", "render-cache", tmp_path / "missing.yaml"], capsys)
    assert code == 2 and err.startswith("error: config file not found")


def _flip_byte(path: Path, offset: int, keep_stat: bool) -> None:
    """One byte changed in place, the size kept (bit rot, a bad copy); keep_stat also restores the mtime, so
    nothing but the content tells (the inode stays: the file is written in place)."""
    import os

    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    if keep_stat:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("name", ["input_ids.bin", "turn_index.bin", "turn_coef.bin", "sample_ids.txt",
                                  "manifest.json"])
def test_bit_flip_that_keeps_sizes_is_found_and_rendered_again(name, tmp_path, tiny_tokenizer, small_records,
                                                               capsys):
    """Issue 35 item 4: a changed byte keeps every size and offset right, so only a content checksum finds it;
    the next open renders the store again with one line and trains on the right tokens."""
    data = tmp_path / "train.jsonl"
    write_jsonl(_records(small_records), data)
    src, settings = DataSource(path=str(data)), RenderSettings(max_length=64, train_on="all_assistant", loss="turn",
                                                               on_error="skip")
    first = build_or_open(src, tiny_tokenizer, settings, tmp_path / "cache", 1)
    want = [first.store.sample(i) for i in range(len(first.store))]
    f = first.store.path / name
    # the manifest: a task name (math/add -> lath/add); a flip there would mislabel every sample of the task
    offset = f.read_text().index('"math/add"') + 1 if name == "manifest.json" else f.stat().st_size // 2
    _flip_byte(f, offset, keep_stat=False)
    capsys.readouterr()
    again = build_or_open(src, tiny_tokenizer, settings, tmp_path / "cache", 1)
    lines = [x for x in capsys.readouterr().out.splitlines() if "damaged" in x]
    assert len(lines) == 1 and f"{name}: content checksum differs" in lines[0] and "rendering it again" in lines[0]
    assert not again.hit
    for a, b in zip(want, [again.store.sample(i) for i in range(len(again.store))], strict=True):
        assert a["id"] == b["id"] and np.array_equal(a["input_ids"], b["input_ids"])
        assert np.array_equal(a["loss_coef"], b["loss_coef"]) and a["task_type"] == b["task_type"]
    assert again.store.verified  # the first open after the build checked the content


def test_later_opens_are_cheap_and_render_cache_verify_reads_everything(tmp_path, tiny_model_dir, small_records,
                                                                         capsys, monkeypatch):
    """After the first check, an open whose files are as they were (size, mtime, inode) hashes nothing: cache-hit
    start-up stays a few stat calls. Bit rot that leaves even the mtime is found by `render-cache --verify`."""
    train = tmp_path / "train.jsonl"
    write_jsonl(_records(small_records), train)
    cfg = _config(tmp_path, tiny_model_dir, train, "run")
    assert run_cli(["data", "render-cache", cfg], capsys)[0] == 0
    store_dir = next((tmp_path / "cache").iterdir())
    hashed: list[str] = []
    real = store_mod.file_checksum
    monkeypatch.setattr(store_mod, "file_checksum", lambda p: hashed.append(Path(p).name) or real(p))
    code, out, _ = run_cli(["data", "render-cache", cfg], capsys)
    assert code == 0 and "hit" in out and "verified" not in out and hashed == []

    _flip_byte(store_dir / "input_ids.bin", 10, keep_stat=True)
    assert Store(store_dir).verified is False  # looks untouched: not read
    code, out, err = run_cli(["data", "render-cache", cfg, "--verify"], capsys)
    assert code == 0, err
    assert sum("input_ids.bin: content checksum differs" in x for x in out.splitlines()) == 1
    assert "rendered in" in out and set(hashed) >= set(store_mod.CONTENT_FILES)
    hashed.clear()
    code, out, _ = run_cli(["data", "render-cache", cfg, "--verify"], capsys)
    assert code == 0 and "hit, verified" in out and set(hashed) == set(store_mod.CONTENT_FILES)
