"""Encoding through the cache: a 1% corpus change re-encodes 1%, duplicates are encoded once."""

import numpy as np

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
