"""Fusing dense and lexical candidate lists, and choosing the dense weight on a dev split."""

import numpy as np
import pytest

from embed_pipeline.lib.fusion import choose_dense_weight, fuse
from embed_pipeline.lib.metrics import ndcg_at_k


def lists(*rows):
    """(ids, scores) from rows of (id, score) pairs, each row best first."""
    return [[pid for pid, _ in row] for row in rows], [np.array([s for _, s in row]) for row in rows]


def test_convex_ranks_an_answer_both_lists_hold_second_above_each_lists_own_top():
    # The dense model's top is a near-duplicate distractor, BM25's top shares the rare words only;
    # the answer is a close second in both, so only the fused list puts it first.
    dense = lists([("distractor_dense", 0.90), ("answer", 0.89), ("filler", 0.50)])
    lexical = lists([("distractor_lexical", 10.0), ("answer", 9.5), ("other", 1.0)])
    fused = fuse(dense, lexical, "convex", 0.5, k=3)
    assert fused[0][0] == "answer"
    relevant = {"answer"}
    assert ndcg_at_k(fused[0], relevant) > max(ndcg_at_k(dense[0][0], relevant), ndcg_at_k(lexical[0][0], relevant))


def test_convex_keeps_a_confident_dense_margin_that_rrf_throws_away():
    # Dense is sure (0.95 vs 0.60); BM25 ranks the answer 30th. RRF sees ranks only and lets the
    # distractor, second in dense and first in BM25, win; convex keeps the dense margin.
    dense = lists([("answer", 0.95), ("distractor", 0.60)] + [(f"d{i}", 0.5 - 0.01 * i) for i in range(20)])
    lexical = lists([("distractor", 10.0)] + [(f"l{i}", 9.0 - 0.2 * i) for i in range(28)] + [("answer", 3.0)])
    assert fuse(dense, lexical, "convex", 0.7, k=2)[0] == ["answer", "distractor"]
    assert fuse(dense, lexical, "rrf", 0.5, k=2)[0] == ["distractor", "answer"]


def test_rrf_known_answer_and_its_k():
    dense = lists([("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)])
    lexical = lists([("d", 5.0), ("c", 4.0), ("x", 3.0), ("y", 2.0)])
    # rrf_k=60: d = 1/64 + 1/61 = .032018, c = 1/63 + 1/62 = .032002, a = 1/61, b = 1/62, x = 1/63, y = 1/64
    assert fuse(dense, lexical, "rrf", 0.5, k=6) == [["d", "c", "a", "b", "x", "y"]]
    # rrf_k=0: d = 1/4 + 1 = 1.25, a = 1, c = 1/3 + 1/2, b = 1/2, x = 1/3, y = 1/4
    assert fuse(dense, lexical, "rrf", 0.5, k=6, rrf_k=0) == [["d", "a", "c", "b", "x", "y"]]
    assert fuse(dense, lexical, "rrf", 0.5, k=2) == [["d", "c"]]


def test_weight_one_is_the_dense_ranking_and_zero_the_lexical_one():
    dense = lists([("a", 0.9), ("b", 0.5), ("c", 0.1)])
    lexical = lists([("c", 7.0), ("d", 3.0), ("a", 1.0)])
    assert fuse(dense, lexical, "convex", 1.0, k=3) == [["a", "b", "c"]]
    assert fuse(dense, lexical, "convex", 0.0, k=2) == [["c", "d"]]
    assert fuse(dense, lexical, "rrf", 1.0, k=3) == [["a", "b", "c"]]


def test_a_lexical_list_with_no_matching_term_leaves_the_dense_order():
    dense = lists([("a", 0.9), ("b", 0.8), ("c", 0.3)])
    lexical = lists([("x", 0.0), ("y", 0.0), ("a", 0.0)])  # all-equal scores: no information
    assert fuse(dense, lexical, "convex", 0.3, k=5) == [["a", "b", "c", "x", "y"]]


def test_each_query_is_fused_on_its_own_row():
    dense = lists([("a", 0.9), ("b", 0.1)], [("c", 0.9), ("d", 0.1)])
    lexical = lists([("b", 9.0), ("a", 1.0)], [("c", 9.0), ("e", 1.0)])
    assert fuse(dense, lexical, "convex", 0.4, k=2) == [["b", "a"], ["c", "d"]]


def test_fuse_rejects_bad_arguments():
    one = lists([("a", 1.0)])
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(one, one, "sum", 0.5, k=1)
    with pytest.raises(ValueError, match=r"dense_weight must be in \[0, 1\]"):
        fuse(one, one, "convex", 1.5, k=1)
    with pytest.raises(ValueError, match="1 dense rankings but 2 lexical"):
        fuse(one, lists([("a", 1.0)], [("b", 1.0)]), "convex", 0.5, k=1)


def banded_dev_set(queries: int = 8):
    """Dev queries whose answer is first only for dense weights in (0.385, 0.714).

    Normalised, the answer scores 0.8 in dense and 0.5 in BM25, and each list has its own top
    distractor at 1: fused, the answer scores 0.5 + 0.3w, the dense distractor w and the lexical
    one 1 - w. Grid weights 0.4, 0.5, 0.6 and 0.7 rank it first; the chooser takes the middle of
    that plateau, the higher of the two middles: 0.6.
    """
    dense, lexical, relevant = [], [], {}
    for q in range(queries):
        dense.append([(f"dense_top{q}", 1.0), (f"answer{q}", 0.8), (f"dense_last{q}", 0.0)])
        lexical.append([(f"lexical_top{q}", 12.0), (f"answer{q}", 7.0), (f"lexical_last{q}", 2.0)])
        relevant[f"q{q}"] = {f"answer{q}"}
    return lists(*dense), lists(*lexical), relevant, [f"q{q}" for q in range(queries)]


def test_chooser_picks_the_middle_of_the_band_where_fusion_wins():
    dense, lexical, relevant, qids = banded_dev_set()
    weight, table = choose_dense_weight(dense, lexical, relevant, qids)
    assert weight == 0.6
    assert list(table["dense_weight"]) == [round(0.1 * i, 1) for i in range(11)]
    best = table.loc[table["ndcg@10"] == 1.0, "dense_weight"].tolist()
    assert best == [0.4, 0.5, 0.6, 0.7]
    assert table.loc[table["best"], "dense_weight"].tolist() == [0.6]
    assert table["ndcg@10"].min() < 1.0 and table["recall@10"].eq(1.0).all()


def test_chooser_leans_dense_when_bm25_only_misleads():
    # BM25 puts a distractor first and the answer last; dense is right. Fused, the answer scores w
    # and the distractor 1 - w; at 0.5 they tie and the dense order keeps the answer first. The
    # plateau is 0.5..1.0 and its middle (the higher of 0.7 and 0.8) is 0.8, not the edge at 1.0.
    dense = lists(*[[(f"answer{q}", 0.9), (f"other{q}", 0.2)] for q in range(5)])
    lexical = lists(*[[(f"distractor{q}", 8.0), (f"answer{q}", 1.0)] for q in range(5)])
    relevant = {f"q{q}": {f"answer{q}"} for q in range(5)}
    weight, _ = choose_dense_weight(dense, lexical, relevant, [f"q{q}" for q in range(5)])
    assert weight == 0.8


def test_chooser_needs_one_query_id_per_ranking():
    dense, lexical, relevant, qids = banded_dev_set(3)
    with pytest.raises(ValueError, match="2 query ids but 3 rankings"):
        choose_dense_weight(dense, lexical, relevant, qids[:2])
