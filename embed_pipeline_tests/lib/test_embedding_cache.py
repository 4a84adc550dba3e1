"""The embedding cache is addressed by key: a lookup reads only the entries asked for, puts from two
processes at once leave every entry whole, and folders of the older layout are still read."""

import multiprocessing

import numpy as np

from embed_pipeline.lib.encoding import EmbeddingCache


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def test_get_reads_only_the_entries_of_the_keys_asked_for(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    keys = [f"text-{i}" for i in range(300)]
    vectors = _vectors(300)
    cache.put(keys, vectors)
    wanted = ["text-7", "text-123", "text-299"]
    # Every other entry is made unreadable: a lookup that touched any of them would fail.
    for key in keys:
        if key not in wanted:
            cache.entry(key).write_bytes(b"not an array")
    found = cache.get(wanted + ["never-put"])
    assert sorted(found) == sorted(wanted)
    for key in wanted:
        np.testing.assert_array_equal(found[key], vectors[keys.index(key)])
    assert len({cache.entry(k).parent for k in keys}) > 1  # entries are spread over sub-folders


def test_a_lookup_of_absent_keys_reads_nothing(tmp_path):
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    cache.put([f"k{i}" for i in range(50)], _vectors(50))
    for entry in cache.dir.glob("*/*.npy"):
        entry.write_bytes(b"garbage")
    assert cache.get(["absent-1", "absent-2"]) == {}


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


def test_a_folder_of_the_older_layout_is_moved_into_the_key_layout(tmp_path):
    space = EmbeddingCache(tmp_path, "f" * 16, "", "fp32").dir
    vectors = _vectors(5)
    np.savez(space / "shard-0123.npz", keys=np.array([f"old-{i}" for i in range(5)]), vectors=vectors)
    cache = EmbeddingCache(tmp_path, "f" * 16, "", "fp32")
    found = cache.get(["old-0", "old-4"])
    np.testing.assert_array_equal(found["old-4"], vectors[4])
    assert not list(space.glob("shard-*.npz"))
