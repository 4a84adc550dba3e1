"""Shard files: each holds exactly its shard's current passages; merging refuses mixed shard counts."""

import numpy as np
import pytest

from embed_pipeline.lib.encoding import load_model, model_fingerprint
from embed_pipeline.lib.shards import merge_shard_embeddings, shard_paths, write_shard_embeddings
from embed_pipeline_tests.fixture_data import PASSAGES

TEXTS = [f"{title}: {text}" for title, text in PASSAGES.values()]


def test_shard_file_drops_deleted_passages(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    ids = [f"p{i}" for i in range(5)]
    target = tmp_path / "shards" / "shard-00-of-01.npz"
    write_shard_embeddings(model, fingerprint, ids, TEXTS[:5], tmp_path / "cache", target)
    after = write_shard_embeddings(model, fingerprint, ids[:2] + ids[3:], TEXTS[:2] + TEXTS[3:5], tmp_path / "cache", target)
    assert (after.passages, after.encoded, after.reused, after.removed) == (4, 0, 4, 1)
    merged_ids, vectors = merge_shard_embeddings([target])
    assert merged_ids == ["p0", "p1", "p3", "p4"] and vectors.shape[0] == 4


def test_merge_refuses_a_passage_in_two_shards(tmp_path):
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", passage_ids=np.array(["p1", name]), vectors=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="two shards"):
        merge_shard_embeddings([tmp_path / "a.npz", tmp_path / "b.npz"])


def test_shard_paths_names_the_missing_shards(tmp_path):
    (tmp_path / "shard-00-of-02.npz").touch()
    assert shard_paths(tmp_path, ["shard-00-of-02"]) == [tmp_path / "shard-00-of-02.npz"]
    with pytest.raises(FileNotFoundError, match="shard-01-of-02"):
        shard_paths(tmp_path, ["shard-00-of-02", "shard-01-of-02"])
