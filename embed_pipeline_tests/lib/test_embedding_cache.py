"""The embedding cache is a segment store: vectors keyed by content hash in a few large files,
bulk lookups, atomic segment writes, concurrent writers, small segments merged, older layouts
migrated or dropped with a warning."""

import logging
import multiprocessing

import numpy as np

from embed_pipeline.lib import vector_store
from embed_pipeline.lib.encoding import EmbeddingCache


def _vectors(n: int, seed: int = 0, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _segments(cache) -> list:
    return sorted(cache.segments_dir.glob("seg-*.arrow"))


def test_bulk_lookup_returns_the_vectors_put_in_order_from_one_file(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    keys = [f"{i:016x}" for i in range(3000)]
    vectors = _vectors(3000)
    cache.put(keys, vectors)
    assert len(_segments(cache)) == 1  # files per put, never per vector
    wanted = [keys[2999], keys[7], "never-put", keys[123]]
    found, got = cache.lookup(wanted)
    assert found.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(got[[0, 1, 3]], vectors[[2999, 7, 123]])
    assert not got[2].any()
    assert cache.missing(wanted + [keys[7]]) == ["never-put"]
    # A new store object (another process) sees the same vectors; any string works as a key.
    again = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    again.put(["a key that is not a hash"], _vectors(1, 9))
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, "f" * 16, "", "fp32").get(["a key that is not a hash"])
                                  ["a key that is not a hash"], _vectors(1, 9)[0])


def test_spaces_are_separate_and_disk_use_is_close_to_the_raw_vectors(tmp_path):
    fp32 = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    bf16 = EmbeddingCache(tmp_path, "f" * 16, "", "bf16")
    keys = [f"{i:016x}" for i in range(2000)]
    vectors = _vectors(2000, dim=384)
    fp32.put(keys, vectors)
    assert bf16.get(keys) == {}  # vectors of two precisions never share a key space
    assert fp32.disk_bytes() <= 1.2 * vectors.nbytes


def test_a_writer_killed_mid_segment_leaves_no_torn_entry(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    cache.put(["aaaaaaaaaaaaaaaa"], _vectors(1))
    # What a writer killed before its rename leaves: a hidden temporary file with half a segment.
    (cache.segments_dir / ".seg-00000000000000000001-deadbeef.arrow.tmp").write_bytes(b"ARROW1\x00\x00half")
    reopened = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    assert reopened.segment_count == 1 and list(reopened.get(["aaaaaaaaaaaaaaaa"])) == ["aaaaaaaaaaaaaaaa"]


def _put_many(root, keys, seed, barrier):
    cache = EmbeddingCache(root, "f" * 16, "", "fp32")
    barrier.wait()  # both processes start writing together
    for start in range(0, len(keys), 20):
        cache.put(keys[start:start + 20], _vectors(len(keys), seed)[start:start + 20])


def test_two_processes_putting_at_once_leave_every_entry_whole(tmp_path):
    keys = [f"shared-{i}" for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    # The same keys with the same vectors from both sides (two runs encoding one corpus with one model).
    workers = [ctx.Process(target=_put_many, args=(tmp_path, keys, 3, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0]
    found = EmbeddingCache(tmp_path, "f" * 16, "", "fp32").get(keys)
    assert len(found) == 200
    np.testing.assert_array_equal(np.stack([found[k] for k in keys]), _vectors(200, 3))
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_many_small_puts_are_merged_into_few_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_store, "MAX_SEGMENTS", 5)
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    keys = [f"{i:016x}" for i in range(120)]
    vectors = _vectors(120)
    for start in range(0, 120, 10):  # 12 puts of 10 (query batches)
        cache.put(keys[start:start + 10], vectors[start:start + 10])
    assert len(_segments(cache)) <= 5
    found, got = EmbeddingCache(tmp_path, "f" * 16, "", "fp32").lookup(keys)
    assert found.all()
    np.testing.assert_array_equal(got, vectors)


def test_older_layouts_are_migrated_or_dropped_with_a_warning(tmp_path, caplog):
    space = EmbeddingCache(tmp_path, "f" * 16, "", "fp32").dir
    vectors = _vectors(5)
    np.savez(space / "shard-0123.npz", keys=np.array([f"old-{i}" for i in range(5)]), vectors=vectors)
    (space / "ab").mkdir()
    for i in range(3):  # one .npy per vector, named by a digest of the key: not recoverable
        np.save(space / "ab" / f"ab{i:030d}.npy", vectors[i])
    with caplog.at_level(logging.WARNING):
        cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    np.testing.assert_array_equal(cache.get(["old-0", "old-4"])["old-4"], vectors[4])
    assert not list(space.glob("shard-*.npz")) and not (space / "ab").exists()
    assert "3 vectors in the old one-file-per-vector layout" in caplog.text
