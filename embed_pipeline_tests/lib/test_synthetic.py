"""Offline synthetic pairs (inverse cloze, titles) and the round-trip filter."""

import numpy as np
import pandas as pd

from embed_pipeline.lib.synthetic import inverse_cloze_pairs, round_trip_filter, sample_passages

PASSAGES = pd.DataFrame({
    "passage_id": ["brake-bleed", "pedal-threads", "one-liner"],
    "title": ["Bleeding hydraulic brakes", "Removing pedals", "x"],
    "text": ["Attach a syringe of mineral oil to the caliper bleed port. Push fluid up to the lever reservoir until no bubbles remain.",
             "The left pedal has a reverse thread. Turn it clockwise to loosen it. The right pedal loosens anticlockwise.",
             "A single sentence passage about saddle height and knee bend."],
})


def test_inverse_cloze_takes_a_sentence_as_query_and_the_rest_as_positive():
    pairs = inverse_cloze_pairs(PASSAGES, pairs_per_passage=1, min_query_words=4, seed=0)
    ict = pairs[pairs["method"] == "ict"].set_index("passage_id")
    assert set(ict.index) == {"brake-bleed", "pedal-threads"}  # a one-sentence passage has no rest
    for pid, row in ict.iterrows():
        assert row["query"] in PASSAGES.set_index("passage_id").loc[pid, "text"]
        assert row["query"] not in row["positive_text"]
    titles = pairs[pairs["method"] == "title"]
    assert set(titles["query"]) == {"Bleeding hydraulic brakes", "Removing pedals"}  # "x" is no query
    assert pairs.equals(inverse_cloze_pairs(PASSAGES, 1, 4, seed=0))


def test_min_query_words_excludes_short_sentences():
    pairs = inverse_cloze_pairs(PASSAGES, pairs_per_passage=3, min_query_words=6, seed=0)
    ict = pairs[(pairs["method"] == "ict") & (pairs["passage_id"] == "pedal-threads")]
    # 7 and 6 words are eligible; "The right pedal loosens anticlockwise." (5 words) is not
    assert list(ict["query"]) == ["The left pedal has a reverse thread.", "Turn it clockwise to loosen it."]


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_round_trip_keeps_queries_that_find_their_passage_in_top_k():
    ids = ["a", "b", "c", "d"]
    corpus = unit(np.eye(4))
    queries = pd.DataFrame({"query": ["finds a", "second-best b", "lost c"], "passage_id": ["a", "b", "c"]})
    vectors = unit([[1, 0, 0, 0.1], [0.9, 0.5, 0, 0], [0, 0, 0.1, 1]])  # c ranks 2nd behind d for "lost c"
    kept, ranks = round_trip_filter(queries, vectors, ids, corpus, k=1)
    assert list(kept["query"]) == ["finds a"]
    assert list(ranks) == [1, 2, 2]
    kept2, ranks2 = round_trip_filter(queries, vectors, ids, corpus, k=2)
    assert list(kept2["query"]) == ["finds a", "second-best b", "lost c"]
    assert list(ranks2) == [1, 2, 2]


def test_round_trip_drops_a_query_whose_passage_ranks_below_k():
    ids = ["a", "b", "c"]
    corpus = unit(np.eye(3))
    queries = pd.DataFrame({"query": ["about c really"], "passage_id": ["a"]})
    kept, ranks = round_trip_filter(queries, unit([[0.1, 0.5, 1.0]]), ids, corpus, k=2)
    assert kept.empty and list(ranks) == [3]


def test_sample_passages_caps_and_is_seeded():
    assert sample_passages(PASSAGES, 0, 1) is PASSAGES
    two = sample_passages(PASSAGES, 2, seed=1)
    assert len(two) == 2 and two.equals(sample_passages(PASSAGES, 2, seed=1))
