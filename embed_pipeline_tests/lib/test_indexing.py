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
    auto = IndexConfig(flat_max_passages=1000, hnsw_max_passages=100_000)
    assert [choose_index_type(n, auto) for n in (10, 1000, 1001, 100_000, 100_001)] == ["flat", "flat", "hnsw", "hnsw", "ivfpq"]
    assert choose_index_type(10, IndexConfig(type="hnsw")) == "hnsw"
    # 10M MiniLM vectors: flat 15.4 GB, HNSW M=32 17.9 GB, IVF-PQ (16 bytes + id) 240 MB.
    assert index_bytes(10_000_000, 384, "flat") == 15_360_000_000
    assert index_bytes(10_000_000, 384, "hnsw") == 17_920_000_000
    assert index_bytes(10_000_000, 384, "ivfpq") == 240_000_000


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq"])
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
