"""Shard files: each holds exactly its shard's current passages and their precision; merging refuses
mixed shard counts and mixed precisions."""

import pytest

from embed_pipeline.lib.encoding import encode_precision, load_model, model_fingerprint
from embed_pipeline.lib.shards import merge_shard_embeddings, shard_paths, shard_precision, write_shard_embeddings
from embed_pipeline_tests.fixture_data import PASSAGES

TEXTS = [f"{title}: {text}" for title, text in PASSAGES.values()]


def test_shard_file_drops_deleted_passages(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    ids = [f"p{i}" for i in range(5)]
    target = tmp_path / "shards" / "shard-00-of-01.arrow"
    write_shard_embeddings(model, fingerprint, ids, TEXTS[:5], tmp_path / "cache", target)
    after = write_shard_embeddings(model, fingerprint, ids[:2] + ids[3:], TEXTS[:2] + TEXTS[3:5], tmp_path / "cache", target)
    assert (after.passages, after.encoded, after.reused, after.removed) == (4, 0, 4, 1)
    assert after.precision == shard_precision(target) == encode_precision("auto", "cpu")
    merged_ids, vectors = merge_shard_embeddings([target])
    assert merged_ids == ["p0", "p1", "p3", "p4"] and vectors.shape[0] == 4


def test_merge_refuses_a_passage_in_two_shards(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    a = write_shard_embeddings(model, fingerprint, ["p1", "a"], TEXTS[:2], tmp_path / "cache", tmp_path / "shard-00-of-02.arrow")
    b = write_shard_embeddings(model, fingerprint, ["p1", "b"], TEXTS[:2], tmp_path / "cache", tmp_path / "shard-01-of-02.arrow")
    with pytest.raises(ValueError, match="two shards"):
        merge_shard_embeddings([a.path, b.path])
    c = write_shard_embeddings(model, fingerprint, ["c"], TEXTS[:1], tmp_path / "cache", tmp_path / "shard-00-of-03.arrow")
    with pytest.raises(ValueError, match="different shard counts"):  # named by their counts, before any read
        merge_shard_embeddings([a.path, c.path])


def test_shard_paths_names_the_missing_shards(tmp_path):
    (tmp_path / "shard-00-of-02.arrow").touch()
    assert shard_paths(tmp_path, ["shard-00-of-02"]) == [tmp_path / "shard-00-of-02.arrow"]
    with pytest.raises(FileNotFoundError, match="shard-01-of-02"):
        shard_paths(tmp_path, ["shard-00-of-02", "shard-01-of-02"])


def test_merge_refuses_shards_of_two_precisions(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    a = write_shard_embeddings(model, fingerprint, ["p0", "p1"], TEXTS[:2], tmp_path / "cache", tmp_path / "a.arrow",
                               precision="fp32")
    b = write_shard_embeddings(model, fingerprint, ["p2"], TEXTS[2:3], tmp_path / "cache", tmp_path / "b.arrow",
                               precision="bf16")
    assert (a.precision, b.precision) == ("fp32", "bf16")
    with pytest.raises(ValueError, match="different precisions"):
        merge_shard_embeddings([a.path, b.path])
    write_shard_embeddings(model, fingerprint, ["p2"], TEXTS[2:3], tmp_path / "cache", tmp_path / "b.arrow", precision="fp32")
    assert merge_shard_embeddings([a.path, b.path])[0] == ["p0", "p1", "p2"]
