"""Index type by corpus size, the three FAISS types on real vectors, and crash-safe publishing."""

import numpy as np
import pytest

from embed_pipeline.lib.config import IndexConfig
from embed_pipeline.lib.indexing import (
    build_faiss_index,
    choose_index_type,
    index_bytes,
    load_index,
    publish_index,
    save_index,
)


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_type_follows_corpus_size_unless_configured():
    auto = IndexConfig(flat_max_passages=1000, ivf_flat_max_passages=100_000)
    assert [choose_index_type(n, auto) for n in (10, 1000, 1001, 100_000, 100_001)] == ["flat", "flat", "ivfflat", "ivfflat", "ivfpq"]
    assert choose_index_type(10, IndexConfig(type="hnsw")) == "hnsw"
    # 10M MiniLM vectors: flat 15.4 GB, HNSW M=32 17.9 GB, IVF-PQ (16 bytes + id) 240 MB.
    assert index_bytes(10_000_000, 384, "flat") == 15_360_000_000
    assert index_bytes(10_000_000, 384, "hnsw") == 17_920_000_000
    assert index_bytes(10_000_000, 384, "ivfpq") == 240_000_000
    assert index_bytes(10_000_000, 384, "ivfflat") == 15_440_000_000


@pytest.mark.parametrize("index_type", ["flat", "ivfflat", "hnsw", "ivfpq"])
def test_every_index_type_finds_a_near_duplicate(index_type):
    vectors = unit_vectors(400)
    queries = vectors[:20] + 0.05 * unit_vectors(20, seed=1)
    index = build_faiss_index(vectors, index_type, IndexConfig(ivf_nprobe=64))
    _, rows = index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 5)
    hits = sum(i in row for i, row in enumerate(rows))
    assert hits == 20 if index_type != "ivfpq" else hits >= 16, (index_type, hits)


def test_failed_build_leaves_the_published_index_untouched(tmp_path):
    target = tmp_path / "indexes" / "served"
    first = publish_index([f"p{i}" for i in range(50)], unit_vectors(50), IndexConfig(), {"model": "v1"}, target)
    assert first.type == "flat" and load_index(target).meta["model"] == "v1"

    index = build_faiss_index(unit_vectors(60))
    with pytest.raises(ValueError, match="id map has 59 rows"):
        save_index(index, [f"q{i}" for i in range(59)], {"model": "v2"}, target)  # crashes after writing, before the rename

    served = load_index(target)
    assert served.meta["model"] == "v1" and served.index.ntotal == 50 and served.passage_ids[0] == "p0"
    assert sorted(p.name for p in target.parent.iterdir()) == ["served"], "no temporary folder left behind"


def test_reader_ignores_a_half_written_folder_from_a_killed_writer(tmp_path):
    target = tmp_path / "served"
    publish_index(["a", "b"], unit_vectors(2), IndexConfig(), {"model": "v1"}, target)
    half = tmp_path / ".served.tmp-deadbeef"  # what a writer killed mid-build leaves behind
    half.mkdir()
    (half / "index.faiss").write_bytes(b"\x00" * 10)
    assert list(load_index(target).passage_ids) == ["a", "b"]


@pytest.mark.parametrize("index_type", ["flat", "ivfflat", "ivfpq"])
def test_an_index_streamed_from_shard_files_equals_one_built_in_memory(tmp_path, index_type, monkeypatch):
    """Shard files are added batch by batch (IVF-PQ trained on a sample): the flat index returns
    what the in-memory build returns; IVF-PQ finds each vector's own passage."""
    import pyarrow as pa

    from embed_pipeline.lib import indexing
    from embed_pipeline.lib.indexing import build_faiss_index, load_index, publish_index_from_shards, search

    sampled = []
    monkeypatch.setattr(indexing, "training_sample_size", lambda n, kind, config=None: sampled.append(n) or (1500 if kind.startswith("ivf") else 0))

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(3000)]
    paths = []
    for shard, rows in enumerate(np.array_split(np.arange(3000), 3)):
        path = tmp_path / f"shard-{shard:02d}-of-03.arrow"
        schema = pa.schema([("passage_id", pa.string()), ("vector", pa.list_(pa.float32(), 16))], metadata={"precision": "fp32"})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for part in np.array_split(rows, 4):  # several record batches per file
                writer.write_batch(pa.record_batch([pa.array([ids[i] for i in part]),
                                                    pa.FixedSizeListArray.from_arrays(pa.array(vectors[part].reshape(-1)), 16)],
                                                   schema=schema))
        paths.append(path)
    config = IndexConfig(type=index_type, ivf_nlist=16, pq_m=4)
    published, order = publish_index_from_shards(paths, config, {"model_fingerprint": "f"}, tmp_path / "dense")
    assert order == ids and published.size == 3000
    loaded = load_index(tmp_path / "dense", mmap=True)
    if index_type == "flat":
        expected = build_faiss_index(vectors, "flat", config)
        np.testing.assert_array_equal(search(loaded.index, vectors[:50], 5)[1], search(expected, vectors[:50], 5)[1])
    else:
        assert sampled == [3000]  # trained on a sample of 1,500 drawn from the files, not on all 3,000
        _, hits = loaded.search_ids(vectors[:200], 10)
        assert np.mean([ids[i] in hit for i, hit in enumerate(hits)]) >= 0.9
