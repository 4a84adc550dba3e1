"""Encoding: a 1% corpus change re-encodes 1%, duplicates are encoded once, bf16 stays close to fp32
in its own cache space, and worker processes give the vectors of one process."""

import numpy as np
import pytest

from embed_pipeline.lib.encoding import encode, encode_cached, load_model, model_fingerprint
from embed_pipeline_tests.fixture_data import PASSAGES

# 100 distinct passages: the 20 fixture passages, each in five phrasings of a repair note.
TEXTS = [f"{title} note {n}: {text}" for n in range(5) for title, text in PASSAGES.values()]


def test_one_percent_change_reencodes_one_percent(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    full, first = encode_cached(model, TEXTS, tmp_path / "cache", fingerprint, progress=False)
    assert (first.encoded, first.reused) == (100, 0)

    changed = list(TEXTS)
    changed[37] = "Wrap the handlebar tape from the bar end towards the stem, overlapping each turn by a third."
    again, second = encode_cached(model, changed, tmp_path / "cache", fingerprint, progress=False)
    assert (second.encoded, second.reused) == (1, 99)
    unchanged = [i for i in range(100) if i != 37]
    np.testing.assert_allclose(again[unchanged], full[unchanged], atol=1e-6)
    np.testing.assert_allclose(again[37], encode(model, [changed[37]], progress=False)[0], atol=1e-5)


def test_duplicate_texts_are_encoded_once(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[0]]
    vectors, stats = encode_cached(model, texts, tmp_path / "cache", model_fingerprint(model), progress=False)
    assert (stats.texts, stats.unique, stats.encoded) == (4, 2, 2)
    np.testing.assert_array_equal(vectors[0], vectors[3])
    assert not np.allclose(vectors[0], vectors[1])


def test_embed_corpus_and_queries_reuses_the_cache_on_a_second_call(tiny_model_path, tmp_path):
    from embed_pipeline.lib.encoding import embed_corpus_and_queries

    passages = ["Apply one drop of chain oil to each roller.", "Bleed hydraulic brakes with mineral oil."]
    first = embed_corpus_and_queries(tiny_model_path, passages, ["oil my chain"], tmp_path / "cache", threads=1)
    again = embed_corpus_and_queries(tiny_model_path, passages, ["oil my chain"], tmp_path / "cache", threads=1)
    assert first.corpus_vectors.shape[0] == 2 and first.query_vectors.shape[0] == 1
    assert (first.corpus_stats.encoded, again.corpus_stats.encoded, again.corpus_stats.reused) == (2, 0, 2)
    assert first.fingerprint == again.fingerprint
    assert np.allclose(first.corpus_vectors, again.corpus_vectors)


def test_bf16_vectors_are_normalised_float32_close_to_fp32(tiny_model_path):
    model = load_model(tiny_model_path, device="cpu")
    fp32 = encode(model, TEXTS, progress=False, precision="fp32")
    bf16 = encode(model, TEXTS, progress=False, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosines = (fp32 * bf16).sum(axis=1)
    assert cosines.min() > 0.99
    assert not np.array_equal(fp32, bf16)  # the autocast really ran


def test_encode_precision_names_what_runs():
    from embed_pipeline.lib.encoding import encode_precision
    from embed_pipeline.lib.hardware import cpu_bf16_instructions

    assert encode_precision("fp32", "cpu") == "fp32"
    assert encode_precision("bf16", "cpu") == "bf16"
    assert encode_precision("auto", "cpu") == ("bf16" if cpu_bf16_instructions() else "fp32")
    with pytest.raises(ValueError, match="fp16"):
        encode_precision("fp16", "cpu")


def test_cache_keeps_precisions_apart(tiny_model_path, tmp_path):
    from embed_pipeline.lib.encoding import EmbeddingCache

    assert EmbeddingCache(tmp_path, "f" * 16, "", "bf16").dir != EmbeddingCache(tmp_path, "f" * 16, "", "fp32").dir
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    texts = TEXTS[:10]
    bf16, first = encode_cached(model, texts, tmp_path / "cache", fingerprint, progress=False, precision="bf16")
    fp32, second = encode_cached(model, texts, tmp_path / "cache", fingerprint, progress=False, precision="fp32")
    again, third = encode_cached(model, texts, tmp_path / "cache", fingerprint, progress=False, precision="bf16")
    assert (first.encoded, second.encoded, third.encoded) == (10, 10, 0)
    assert (first.precision, second.precision, third.precision) == ("bf16", "fp32", "bf16")
    np.testing.assert_array_equal(again, bf16)
    np.testing.assert_allclose(fp32, encode(model, texts, progress=False, precision="fp32"), atol=1e-5)


def test_gpu_batch_fills_a_quarter_of_free_memory_within_bounds():
    from embed_pipeline.lib.encoding import fill_device_batch

    per_sequence = 256 * 384 * 16 * 2  # all-MiniLM-L6-v2 at 256 tokens: ~3 MB
    assert fill_device_batch(80 * 2**30, 256, 384) == 1024
    assert fill_device_batch(4 * 300 * per_sequence, 256, 384) == 256  # room for 300: the power of two below
    assert fill_device_batch(2**20, 512, 1024) == 64


def test_cpu_batch_is_the_configured_one(tiny_model_path):
    from embed_pipeline.lib.encoding import DEFAULT_BATCH_SIZE, device_batch_size

    model = load_model(tiny_model_path, device="cpu")
    assert device_batch_size(model, 16) == 16
    assert device_batch_size(model, DEFAULT_BATCH_SIZE) == DEFAULT_BATCH_SIZE
    assert device_batch_size(model, 0) == DEFAULT_BATCH_SIZE


@pytest.mark.slow
def test_two_processes_give_the_vectors_of_one(tiny_model_path, tmp_path):
    from embed_pipeline.lib.encoding import EncodePool

    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    texts = TEXTS + [TEXTS[3]]  # a duplicate: encoded once, returned twice
    alone = {p: encode(model, texts, batch_size=8, progress=False, precision=p) for p in ("fp32", "bf16")}
    with EncodePool(model, processes=2, threads=2) as pool:
        assert pool.threads_per_process == 1
        pooled = {p: encode(model, texts, batch_size=8, progress=False, precision=p, pool=pool) for p in alone}
        cached, stats = encode_cached(model, texts, tmp_path, fingerprint, batch_size=8, progress=False,
                                      precision="fp32", pool=pool)
    for precision, atol in (("fp32", 1e-5), ("bf16", 2e-2)):
        assert pooled[precision].dtype == np.float32 and pooled[precision].shape == alone[precision].shape
        np.testing.assert_allclose(pooled[precision], alone[precision], atol=atol)
    assert (pooled["bf16"] * alone["bf16"]).sum(axis=1).min() > 0.999
    assert stats.encoded == len(TEXTS) and stats.precision == "fp32"
    np.testing.assert_allclose(cached, alone["fp32"], atol=1e-5)
    # the caller's model still encodes as before once the pool has taken (and dropped) its copies
    np.testing.assert_allclose(encode(model, texts, batch_size=8, progress=False, precision="fp32"), alone["fp32"], atol=1e-6)
