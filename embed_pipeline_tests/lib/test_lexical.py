"""BM25 over a tiny corpus: stemming and stopwords, the scores themselves, edge-case queries, and
an atomic save/load that returns exactly what was built."""

import math

import numpy as np
import pytest

from embed_pipeline.lib.lexical import LexicalIndex, analyze

# Each query's answer sits beside distractors that share a word with it.
PASSAGES = {
    "shoe": "The runner laced each shoe tightly before she runs the marathon.",
    "stream": "Running water in mountain streams carries sediment downhill.",
    "madrid": "Madrid is the capital of Spain and its largest city.",
    "barcelona": "Barcelona is a coastal city in Catalonia, Spain.",
    "hats": "A small shop in the old town sells hats and scarves.",
    "vaccine": "Vaccination of children reduced measles infections in the cohort.",
}
IDS, TEXTS = list(PASSAGES), list(PASSAGES.values())
QUERIES = ["running shoes", "What is the capital of Spain?", "measles vaccines for a child", "scarf shops"]


@pytest.fixture(scope="module")
def index() -> LexicalIndex:
    return LexicalIndex.build(IDS, TEXTS)


def test_stems_and_drops_stopwords():
    assert analyze(["Running shoes", "What is the capital of Spain?"]) == [["run", "shoe"], ["what", "capit", "spain"]]


def test_stemming_finds_the_inflected_answer_over_a_literal_distractor(index):
    # Unstemmed, "running" would match only the stream passage ("Running water") and "shoes" nothing,
    # so the stream would win; stemmed, the shoe passage shares both "run" and "shoe".
    ids, scores = index.search(["running shoes"], k=2)
    assert ids == [["shoe", "stream"]]
    assert scores[0, 0] > scores[0, 1] > 0


def test_each_query_ranks_its_answer_first(index):
    ids, scores = index.search(QUERIES, k=3)
    assert [row[0] for row in ids] == ["shoe", "madrid", "vaccine", "hats"]
    assert scores.shape == (4, 3) and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0), "best first"


def test_score_is_lucene_bm25_with_k1_and_b():
    corpus = ["cell cell growth", "cell death", "tumor growth rate factor"]
    index = LexicalIndex.build(["a", "b", "c"], corpus, k1=1.2, b=0.5)
    lengths = [3, 2, 4]  # tokens after stopwords and stemming
    avg = sum(lengths) / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "cell" is in 2 of 3 passages

    def expected(tf, length):
        return idf * tf / (tf + 1.2 * (1 - 0.5 + 0.5 * length / avg))

    ids, scores = index.search(["cells"], k=3)
    assert ids == [["a", "b", "c"]]
    np.testing.assert_allclose(scores[0], [expected(2, 3), expected(1, 2), 0.0], rtol=1e-6)


def test_queries_without_an_indexed_term_get_zero_scores_not_an_error(index):
    ids, scores = index.search(["", "the of and is", "zyxwvut quasar"], k=3)
    assert not scores.any()
    assert ids == [IDS[:3]] * 3, "score-0 fill follows row order"


def test_k_is_clipped_to_the_corpus_and_ties_rank_by_row():
    index = LexicalIndex.build(["first", "second", "other"], ["protein folding", "protein folding", "gene expression"])
    ids, scores = index.search(["protein"], k=50)
    assert ids == [["first", "second", "other"]] and scores.shape == (1, 3)
    assert scores[0, 0] == scores[0, 1] > 0 == scores[0, 2]


def test_build_rejects_misaligned_or_empty_input():
    with pytest.raises(ValueError, match="2 passage ids but 1 texts"):
        LexicalIndex.build(["a", "b"], ["only one"])
    with pytest.raises(ValueError, match="empty corpus"):
        LexicalIndex.build([], [])


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip_returns_identical_results(index, tmp_path, mmap):
    target = index.save(tmp_path / "lexical")
    loaded = LexicalIndex.load(target, mmap=mmap)
    assert loaded.size == index.size == len(PASSAGES)
    queries = QUERIES + ["Spain", "city", ""]
    before, after = index.search(queries, k=6), loaded.search(queries, k=6)
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lexical"], "no temporary folder left behind"


def test_a_failed_save_leaves_the_saved_index_untouched(index, tmp_path):
    target = index.save(tmp_path / "lexical")
    broken = LexicalIndex(index.retriever, index.passage_ids[:-1], "english")  # id map one row short
    with pytest.raises(ValueError, match="id map has 5 rows"):
        broken.save(target)
    served = LexicalIndex.load(target)
    assert served.size == 6 and served.search(["hats"], 1)[0] == [["hats"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lexical"]


def test_saving_over_an_index_replaces_it(index, tmp_path):
    target = index.save(tmp_path / "lexical")
    LexicalIndex.build(["new"], ["protein folding"]).save(target)
    assert LexicalIndex.load(target).search(["protein"], 5)[0] == [["new"]]


def test_a_streamed_build_scores_exactly_as_bm25s_own_build(tmp_path):
    """`build_stream` (batches, numpy triples) against bm25s's `index` on the same texts: the same
    vocabulary and the same score for every (query, passage), before and after a save/load."""
    texts = TEXTS * 3 + ["Spain spain SPAIN: the running of the bulls", ""]
    ids = [f"p{i}" for i in range(len(texts))]
    whole = LexicalIndex.build(ids, texts)
    batches = [(ids[i:i + 4], texts[i:i + 4]) for i in range(0, len(ids), 4)]  # five batches
    streamed = LexicalIndex.build_stream(iter(batches))
    assert set(streamed.retriever.vocab_dict) == set(whole.retriever.vocab_dict)
    loaded = LexicalIndex.load(streamed.save(tmp_path / "lexical"), mmap=True)
    for query in QUERIES + ["bulls"]:
        expected_ids, expected = whole.search([query], len(ids))
        for candidate in (streamed, loaded):
            got_ids, got = candidate.search([query], len(ids))
            score = dict(zip(got_ids[0], got[0]))
            np.testing.assert_allclose([score[i] for i in expected_ids[0]], expected[0], rtol=1e-5, atol=1e-6)
