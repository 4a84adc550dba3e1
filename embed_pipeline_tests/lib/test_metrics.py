"""Our per-query metrics against sentence-transformers' InformationRetrievalEvaluator on the same rankings."""

import numpy as np
import pytest

from embed_pipeline.lib.metrics import METRICS, RECALL_KS, mean_metrics, per_query_metrics, recall_curve


def _rankings() -> tuple[dict[str, list[str]], dict[str, set[str]], list[str]]:
    """120 passages; queries with one or two relevant passages at varied ranks (1, 3, 7, 11, 60, absent)."""
    corpus = [f"p{i:03d}" for i in range(120)]
    rng = np.random.default_rng(7)
    rankings, relevant = {}, {}
    placements = [[0], [2], [6], [10], [59], [], [0, 1], [3, 12], [9, 99], [4, 130], [1, 8], [0, 40]]
    for qi, ranks in enumerate(placements):
        order = list(rng.permutation(corpus))
        rel = {f"q{qi}-rel{j}" for j in range(len(ranks))} or {"p999"}  # "p999": relevant but never retrieved
        for j, rank in enumerate(ranks):
            if rank < 100:
                order.insert(rank, f"q{qi}-rel{j}")
        rankings[f"q{qi}"] = order[:100]
        relevant[f"q{qi}"] = rel
    return rankings, relevant, corpus + [p for rel in relevant.values() for p in rel]


def _sentence_transformers_scores(ranking: dict[str, list[str]], relevant: dict[str, set[str]], corpus: list[str]) -> dict:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        queries={q: q for q in ranking}, corpus={p: p for p in corpus}, relevant_docs=relevant,
        precision_recall_at_k=list(RECALL_KS), mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], map_at_k=[10],
        write_csv=False,
    )
    # Strictly decreasing scores, so the evaluator's tie-breaking cannot reorder our ranking.
    results = [[{"corpus_id": pid, "score": float(len(ranked) - i)} for i, pid in enumerate(ranked)] for ranked in ranking.values()]
    scores = evaluator.compute_metrics(results)
    out = {f"recall@{k}": scores["recall@k"][k] for k in RECALL_KS}
    out["ndcg@10"] = scores["ndcg@k"][10]
    out["mrr@10"] = scores["mrr@k"][10]
    return out


def test_per_query_metrics_match_sentence_transformers_evaluator():
    rankings, relevant, corpus = _rankings()
    ours = per_query_metrics(rankings, relevant)
    for qid in rankings:
        reference = _sentence_transformers_scores({qid: rankings[qid]}, {qid: relevant[qid]}, corpus)
        for metric in METRICS:
            assert ours.loc[qid, metric] == pytest.approx(reference[metric], abs=1e-6), (qid, metric)
    reference = _sentence_transformers_scores(rankings, relevant, corpus)
    means = mean_metrics(ours)
    assert means == pytest.approx(reference, abs=1e-6)
    # The fixture must exercise the metrics, not sit at 0 or 1.
    assert 0.2 < means["ndcg@10"] < 0.9 and means["recall@100"] > means["recall@10"] > means["recall@1"]


def test_known_values_and_recall_curve():
    rankings = {"a": ["x", "rel1", "y", "rel2"], "b": ["y", "x"]}
    relevant = {"a": {"rel1", "rel2"}, "b": {"x"}}
    table = per_query_metrics(rankings, relevant)
    assert table.loc["a", "recall@1"] == 0.0 and table.loc["a", "recall@5"] == 1.0
    assert table.loc["a", "mrr@10"] == 0.5 and table.loc["b", "mrr@10"] == 0.5
    ideal = 1 + 1 / np.log2(3)
    assert table.loc["a", "ndcg@10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
    assert recall_curve(rankings, relevant, ks=(1, 2, 4)) == {1: 0.0, 2: 0.75, 4: 1.0}
    missing = per_query_metrics({}, {"c": {"x"}})
    assert missing.loc["c"].sum() == 0.0
