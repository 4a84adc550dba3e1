"""Retrieval metrics, per query, with binary relevance (the definitions BEIR and
sentence-transformers' `InformationRetrievalEvaluator` use).

- recall@k: share of a query's relevant passages found in its top k.
- nDCG@10: DCG of the top 10 (gain 1 / log2(rank + 1) per relevant hit) over the ideal DCG.
- MRR@10: 1 / rank of the first relevant passage within the top 10, else 0.
Per-query values are kept (not only means) so lifts can be tested with a paired bootstrap.
`embed_pipeline_tests/lib/test_metrics.py` checks these against sentence-transformers'
`InformationRetrievalEvaluator.compute_metrics` on the same rankings, to 1e-6.
"""

from __future__ import annotations

import math

import pandas as pd

RECALL_KS = (1, 5, 10, 100)
METRICS = [f"recall@{k}" for k in RECALL_KS] + ["ndcg@10", "mrr@10"]
MAX_K = max(RECALL_KS)
CURVE_KS = (1, 2, 3, 5, 10, 20, 30, 50, 100)


def recall_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(rank + 2) for rank, pid in enumerate(ranked[:k]) if pid in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def mrr_at_k(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    for rank, pid in enumerate(ranked[:k]):
        if pid in relevant:
            return 1.0 / (rank + 1)
    return 0.0


def per_query_metrics(rankings: dict[str, list[str]], relevant: dict[str, set[str]]) -> pd.DataFrame:
    """One row per query id (index), one column per name in `METRICS`.

    Every query in `relevant` gets a row; a query missing from `rankings` scores 0 everywhere.
    """
    rows = {}
    for qid, rel in relevant.items():
        ranked = rankings.get(qid, [])
        row = {f"recall@{k}": recall_at_k(ranked, rel, k) for k in RECALL_KS}
        row["ndcg@10"] = ndcg_at_k(ranked, rel, 10)
        row["mrr@10"] = mrr_at_k(ranked, rel, 10)
        rows[qid] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=METRICS)


def mean_metrics(per_query: pd.DataFrame) -> dict[str, float]:
    return {m: round(float(per_query[m].mean()), 6) for m in METRICS}


def recall_curve(rankings: dict[str, list[str]], relevant: dict[str, set[str]], ks=CURVE_KS) -> dict[int, float]:
    """Mean recall@k for each k in `ks` (the recall@k curve plotted in the eval report)."""
    return {
        k: round(sum(recall_at_k(rankings.get(qid, []), rel, k) for qid, rel in relevant.items()) / len(relevant), 6)
        for k in ks
    }
