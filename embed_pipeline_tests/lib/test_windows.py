"""Long passages read whole: window splitting, best-window ranking in the index, mining and training rows."""

import numpy as np
import pandas as pd
import pytest

from embed_pipeline.lib.config import MiningConfig
from embed_pipeline.lib.corpus import passage_text
from embed_pipeline.lib.negatives import mine_hard_negatives
from embed_pipeline.lib.retrieval import exact_index
from embed_pipeline.lib.synthetic import round_trip_filter
from embed_pipeline.lib.training_data import training_columns
from embed_pipeline.lib.windows import WindowSpec, best_per_passage, max_pool, split_windows, window_spec, windows_for


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_path, device="cpu")


def _tokens(model, text: str) -> list[str]:
    return model.tokenizer.tokenize(text)


def test_window_spec_is_what_the_model_reads(model):
    spec = window_spec(model)
    assert spec.tokens == model.max_seq_length - 2  # [CLS] and [SEP]
    assert spec.stride == spec.tokens // 2
    prompted = window_spec(model, prompt="passage: ")
    assert prompted.tokens == spec.tokens - len(_tokens(model, "passage: "))
    assert window_spec(model, tokens=16, stride=4) == WindowSpec(16, 4)


def test_windows_for_follows_the_config(model):
    from embed_pipeline.lib.config import IndexConfig

    assert windows_for(model, IndexConfig()) == window_spec(model)
    assert windows_for(model, IndexConfig(passage_windows=False)) is None
    assert windows_for(model, IndexConfig(window_tokens=12, window_stride=3)) == WindowSpec(12, 3)
    assert windows_for(object(), IndexConfig()) is None  # no tokenizer: nothing to count windows in


def test_short_passages_are_one_window_equal_to_the_passage_text(model):
    titles, texts = ["Heat", ""], ["water boils at one hundred degrees", "a passage with no title"]
    split = split_windows(model.tokenizer, titles, texts, WindowSpec(40, 20))
    assert split.texts == [passage_text(t, x) for t, x in zip(titles, texts, strict=True)]  # same store key as without windows
    assert split.owner.tolist() == [0, 1] and split.long_passages == 0


def test_long_passages_are_covered_by_overlapping_windows_each_with_the_title(model):
    body = " ".join(f"word{i}" for i in range(60))
    spec = WindowSpec(24, 12)
    split = split_windows(model.tokenizer, ["Title here", "Short"], [body, "tiny text"], spec)
    assert split.long_passages == 1
    first = [t for t, o in zip(split.texts, split.owner, strict=True) if o == 0]
    assert len(first) >= 3 and split.owner.tolist() == [0] * len(first) + [1]
    assert all(w.startswith("Title here\n") for w in first)
    assert all(len(_tokens(model, w)) <= spec.tokens for w in first)  # every window fits what the model reads
    bodies = [w.split("\n", 1)[1] for w in first]
    assert bodies[0].startswith("word0") and bodies[-1].endswith("word59")  # the start and the end are both read
    for a, b in zip(bodies, bodies[1:], strict=False):  # consecutive windows overlap
        assert set(a.split()) & set(b.split())
    assert split.ordinal.tolist() == list(range(len(first))) + [0]


def test_a_title_longer_than_half_a_window_is_not_repeated(model):
    title = " ".join(f"title{i}" for i in range(20))
    split = split_windows(model.tokenizer, [title], [" ".join(f"body{i}" for i in range(40))], WindowSpec(16, 8))
    assert split.long_passages == 1 and not split.texts[1].startswith("title0")


def test_best_per_passage_and_max_pool():
    assert best_per_passage(["a", "b", "a", "c"], [0.9, 0.8, 0.7, 0.6], 2) == (["a", "b"], [0.9, 0.8])
    scores = np.array([[0.1, 0.5, 0.2, 0.9], [0.3, 0.1, 0.8, 0.0]])
    assert max_pool(scores, np.array([0, 0, 1, 2]), 3).tolist() == [[0.5, 0.2, 0.9], [0.3, 0.8, 0.0]]


def _windowed_corpus(seed=0, passages=40, dim=8):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, size=passages)
    ids = [f"p{i}" for i, n in enumerate(counts) for _ in range(n)]
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ids, vectors, counts


def test_a_windowed_index_ranks_each_passage_once_at_its_best_window():
    ids, vectors, counts = _windowed_corpus()
    queries = np.random.default_rng(1).normal(size=(5, vectors.shape[1])).astype(np.float32)
    index = exact_index(vectors, ids, {"tokens": 16, "stride": 8})
    scores, ranked = index.search_ids(queries, 10)
    owner = np.repeat(np.arange(len(counts)), counts)
    pooled = max_pool(queries @ vectors.T, owner, len(counts))
    for q in range(len(queries)):
        expected = np.argsort(-pooled[q], kind="stable")[:10]
        assert ranked[q] == [f"p{i}" for i in expected]  # deeper search found 10 distinct passages
        np.testing.assert_allclose(scores[q], pooled[q][expected], rtol=1e-5)
    # asked for more passages than exist: every passage once
    _, everything = index.search_ids(queries[:1], 1000)
    assert sorted(everything[0]) == sorted(set(ids))


def test_mining_with_windows_scores_a_passage_by_its_best_window_and_says_which():
    ids, vectors, counts = _windowed_corpus(seed=2)
    query = (vectors[ids.index("p3")] + 0.05).astype(np.float32)  # close to one window of p3
    query /= np.linalg.norm(query)
    pairs = pd.DataFrame({"query": ["q"], "passage_id": ["p3"]})
    settings = MiningConfig(num_negatives=3, range_min=0, range_max=10, relative_margin=0.0)
    mined = mine_hard_negatives(pairs, ["q"], query[None, :], ids, vectors, settings)
    row = mined.triples.iloc[0]
    start = ids.index("p3")
    window_scores = vectors[start:start + counts[3]] @ query
    assert row["positive_score"] == pytest.approx(float(window_scores.max()), rel=1e-5)
    assert row["positive_window"] == int(window_scores.argmax())
    assert len(set(row["negatives"])) == len(row["negatives"]) == 3 and "p3" not in row["negatives"]
    owner = np.repeat(np.arange(len(counts)), counts)
    pooled = max_pool(query[None, :] @ vectors.T, owner, len(counts))[0]
    for negative, score, window in zip(row["negatives"], row["negative_scores"], row["negative_windows"], strict=True):
        i = int(negative[1:])
        assert score == pytest.approx(float(pooled[i]), rel=1e-5)
        s = ids.index(negative)
        assert window == int((vectors[s:s + counts[i]] @ query).argmax())


def test_mining_without_windows_keeps_its_columns():
    ids, vectors, _ = _windowed_corpus(seed=3)
    unique = list(dict.fromkeys(ids))
    first = [ids.index(p) for p in unique]
    pairs = pd.DataFrame({"query": ["q"], "passage_id": ["p0"]})
    mined = mine_hard_negatives(pairs, ["q"], vectors[:1], unique, vectors[first], MiningConfig(range_min=0, range_max=10))
    assert "positive_window" not in mined.triples


def test_round_trip_with_windows_ranks_passages_not_windows():
    ids, vectors, counts = _windowed_corpus(seed=4, passages=12)
    target = ids.index("p5") + int(counts[5]) - 1  # the last window of p5
    queries = pd.DataFrame({"query": ["q"], "passage_id": ["p5"]})
    kept, ranks = round_trip_filter(queries, vectors[target][None, :], ids, vectors, k=1)
    assert len(kept) == 1 and ranks.tolist() == [1]


def test_training_rows_read_the_mined_windows():
    triples = pd.DataFrame({"query": ["q"], "passage_id": ["p1"], "negatives": [["p2", "p3"]],
                            "positive_text": ["best window of p1"], "negative_texts": [np.array(["window of p2", ""])]})
    texts = {"p1": "whole p1", "p2": "whole p2", "p3": "whole p3", "p4": "whole p4"}
    columns, padded = training_columns(triples, texts, 2, 0)
    assert columns["positive"] == ["best window of p1"]
    assert columns["negative_1"] == ["window of p2"] and columns["negative_2"] == ["whole p3"] and padded == 0
