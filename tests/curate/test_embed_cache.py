"""The sharded embedding cache: lookups, appends, compaction, two processes on one directory, crashes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sftlab.curate import embed, embed_cache
from sftlab.curate.embed import embed_texts
from sftlab.curate.embed_cache import EmbeddingCache


def vec(text: str, dim: int = 8) -> np.ndarray:
    """A deterministic stand-in embedding (finite floats, unlike raw hash bytes)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class CountingModel:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **_kw):
        self.calls.append(list(texts))
        return np.stack([vec(t) for t in texts])


@pytest.fixture
def model(monkeypatch):
    m = CountingModel()
    monkeypatch.setattr(embed, "load_model", lambda _name: m)
    monkeypatch.setattr(embed_cache, "_OPEN", {})  # each test sees its directories as a new process would
    return m


def keys(texts):
    return np.array([hashlib.sha1(t.encode()).digest() for t in texts], dtype="S20")


def test_only_misses_are_embedded_in_order_of_first_appearance(tmp_path, model):
    texts = ["b", "a", "b", "c", "a"]
    first = embed_texts(texts, "m", cache_dir=tmp_path)
    assert model.calls == [["b", "a", "c"]]
    np.testing.assert_array_equal(first, np.stack([vec(t) for t in texts]))
    again = embed_texts(["c", "d", "a", "d"], "m", cache_dir=tmp_path)
    assert model.calls[1:] == [["d"]]
    assert again.tobytes() == np.stack([vec(t) for t in ["c", "d", "a", "d"]]).tobytes()
    model_dir = next(tmp_path.iterdir())
    assert len(list(model_dir.glob("*.keys.npy"))) == 2 and len(list(model_dir.glob("*.vecs.npy"))) == 2
    embed_cache._OPEN.clear()  # a new process reads the same bytes without calling the model
    assert embed_texts(texts + ["d"], "m", cache_dir=tmp_path).tobytes() == np.stack(
        [vec(t) for t in texts + ["d"]]).tobytes()
    assert len(model.calls) == 2


def test_no_cache_dir_embeds_everything_and_writes_nothing(tmp_path, model):
    out = embed_texts(["x", "y", "x"], "m", cache_dir=None)
    assert model.calls == [["x", "y"]] and out.shape == (3, 8)
    assert embed_texts([], "m", cache_dir=tmp_path).shape == (0, 0) and not list(tmp_path.iterdir())


def test_shards_stay_few_and_compaction_keeps_every_vector(tmp_path, model, monkeypatch):
    monkeypatch.setattr(embed_cache, "MAX_SHARDS", 4)
    texts = [f"t{i}" for i in range(60)]
    model_dir = None
    for i in range(0, 60, 6):  # 10 calls that each append a shard: the smaller half is merged past 4
        embed_texts(texts[i:i + 6] + texts[:2], "m", cache_dir=tmp_path)
        model_dir = next(tmp_path.iterdir())
        assert len(list(model_dir.glob("*.keys.npy"))) <= 4
        assert len(embed_cache._OPEN[model_dir.resolve()].vecs) <= 4  # mapped files (one descriptor each)
    assert embed_texts(texts, "m", cache_dir=tmp_path).tobytes() == np.stack([vec(t) for t in texts]).tobytes()
    monkeypatch.setattr(embed_cache, "MAX_SHARDS", 1)
    embed_cache._OPEN.clear()  # a new process opening more than MAX_SHARDS merges them all
    out = embed_texts(texts[::-1], "m", cache_dir=tmp_path)
    assert len(list(model_dir.glob("*.keys.npy"))) == 1 and len(list(model_dir.glob("*.npy"))) == 2
    assert not list(model_dir.glob(".*"))  # no temporary files left
    assert out.tobytes() == np.stack([vec(t) for t in texts[::-1]]).tobytes()
    assert sum(len(c) for c in model.calls) == 60  # each text embedded once, ever


def test_two_processes_on_one_directory(tmp_path):
    a, b = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    a.add(keys(["x", "y"]), np.stack([vec("x"), vec("y")]))
    assert not b.get(keys(["x"]))[0].any()  # b has not looked yet
    b.refresh()
    found, got = b.get(keys(["y", "z", "x"]))
    assert found.tolist() == [True, False, True] and got.tobytes() == np.stack([vec("y"), vec("x")]).tobytes()
    b.add(keys(["z"]), vec("z")[None])
    b.compact()  # a's shard is merged away under it
    a.refresh()
    found, got = a.get(keys(["x", "y", "z"]))
    assert found.all() and got.tobytes() == np.stack([vec(t) for t in "xyz"]).tobytes()
    assert len(a.names) == 1


def test_a_crash_or_damage_is_a_miss_not_an_error(tmp_path):
    c = EmbeddingCache(tmp_path)
    c.add(keys(["x"]), vec("x")[None])
    np.save(tmp_path / "orphan.vecs.npy", np.zeros((1, 8), np.float32))  # crashed before its keys file
    (tmp_path / "broken.keys.npy").write_bytes(b"not a numpy file")
    np.save(tmp_path / "short.keys.npy", keys(["y", "z"]))  # rows disagree with its vectors
    np.save(tmp_path / "short.vecs.npy", np.zeros((1, 8), np.float32))
    fresh = EmbeddingCache(tmp_path)
    found, got = fresh.get(keys(["x", "y", "z"]))
    assert found.tolist() == [True, False, False] and got.tobytes() == vec("x").tobytes()
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind by add


def test_keys_with_trailing_zero_bytes_stay_distinct(tmp_path):
    raw = np.array([b"\x01" * 19 + b"\x00", b"\x01" * 19 + b"\x02", b"\x01" * 18 + b"\x00\x00"], dtype="S20")
    c = EmbeddingCache(tmp_path)
    vecs = np.arange(24, dtype=np.float32).reshape(3, 8)
    c.add(raw, vecs)
    found, got = EmbeddingCache(tmp_path).get(raw[::-1])
    assert found.all() and got.tobytes() == vecs[::-1].tobytes()
