"""Fusing a dense and a lexical ranking into one (hybrid retrieval), and choosing the dense weight.

Two ways to fuse each query's two candidate lists (ids best first, with their scores):
- `convex`: min-max normalise each list's scores over its own candidates (best -> 1, worst -> 0),
  then score = w * dense + (1 - w) * lexical, where a passage missing from one list gets 0 from
  it. Keeps how far apart the candidates are, not only their order: a passage far ahead in one
  list is not overtaken by one that merely ranks well in both.
- `rrf` (reciprocal rank fusion, Cormack et al. 2009): score = sum over lists of 1 / (rrf_k + rank),
  rank counted from 1; rrf_k = 60 damps the difference between the first few ranks. Only ranks
  count, so a strong dense list and a weaker lexical one pull with equal force. Weighted here as
  2w / (rrf_k + dense rank) + 2(1 - w) / (rrf_k + lexical rank): w = 0.5 is plain RRF.

On SciFact with a tuned dense model, plain RRF ranked below the dense model alone while a convex
combination ranked above it over a range of weights (benchmarks/README.md, BM25 and hybrid): the weight matters,
and `choose_dense_weight` picks it on a dev split, never on the eval set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from embed_pipeline.lib.metrics import ndcg_at_k, recall_at_k

METHODS = ("convex", "rrf")
DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_RRF_K = 60
# Dev nDCG@10 within this of the best counts as "as good" when `choose_dense_weight` looks for the
# plateau: a quarter of what one query moving one rank near the top costs on ~100 dev queries.
PLATEAU_TOLERANCE = 0.002

Ranked = tuple[list[list[str]], "np.ndarray | list[list[float]]"]


def _min_max(scores) -> np.ndarray:
    """Scores mapped to [0, 1] over the list; an all-equal list says nothing about order: all 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else np.zeros_like(scores)


def _fuse_one(dense_ids, dense_scores, lexical_ids, lexical_scores, method: str, w: float, k: int,
              rrf_k: int) -> list[tuple[str, float]]:
    fused: dict[str, float] = {}
    if method == "convex":
        parts = ((dense_ids, w * _min_max(dense_scores)), (lexical_ids, (1.0 - w) * _min_max(lexical_scores)))
    else:
        parts = ((ids, [2.0 * weight / (rrf_k + rank) for rank in range(1, len(ids) + 1)])
                 for ids, weight in ((dense_ids, w), (lexical_ids, 1.0 - w)))
    for ids, contributions in parts:
        for pid, value in zip(ids, contributions, strict=True):
            fused[pid] = fused.get(pid, 0.0) + float(value)
    # dict order is first appearance (dense list, then lexical), and sorted() is stable: equal
    # fused scores keep the dense model's order.
    return [(pid, fused[pid]) for pid in sorted(fused, key=fused.__getitem__, reverse=True)[:k]]


def fuse(dense: Ranked, lexical: Ranked, method: str, dense_weight: float, k: int, rrf_k: int = DEFAULT_RRF_K) -> list[list[str]]:
    """Top-k fused passage ids per query (`fuse_scored` without the scores)."""
    return fuse_scored(dense, lexical, method, dense_weight, k, rrf_k)[0]


def fuse_scored(dense: Ranked, lexical: Ranked, method: str, dense_weight: float, k: int, rrf_k: int = DEFAULT_RRF_K) -> Ranked:
    """Top-k fused (passage ids, fused scores) per query from two (ids, scores) candidate lists, row-aligned by query.

    `dense_weight` is w in [0, 1]: 1 = the dense ranking alone, 0 = the lexical one alone (for
    `convex`; for `rrf`, 0.5 is the plain unweighted sum). Candidates are whatever each list
    holds (typically its top 100); ranks are positions in the lists, so each list must be sorted
    best first. Equal fused scores keep the dense list's order, then the lexical list's. The
    fused score is what ranks: for `convex` the weighted sum of the two normalised scores (in
    [0, 1]), for `rrf` the weighted reciprocal-rank sum.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r} ({', '.join(METHODS)})")
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
    dense_ids, dense_scores = dense
    lexical_ids, lexical_scores = lexical
    if len(dense_ids) != len(lexical_ids):
        raise ValueError(f"{len(dense_ids)} dense rankings but {len(lexical_ids)} lexical ones")
    rows = [_fuse_one(d_ids, d_scores, l_ids, l_scores, method, dense_weight, k, rrf_k)
            for d_ids, d_scores, l_ids, l_scores in zip(dense_ids, dense_scores, lexical_ids, lexical_scores, strict=True)]
    return [[pid for pid, _ in row] for row in rows], [[score for _, score in row] for row in rows]


def choose_dense_weight(
    dense: Ranked,
    lexical: Ranked,
    relevant: dict[str, set[str]],
    query_ids: list[str],
    grid: tuple[float, ...] = DEFAULT_GRID,
    method: str = "convex",
    rrf_k: int = DEFAULT_RRF_K,
    tolerance: float = PLATEAU_TOLERANCE,
) -> tuple[float, pd.DataFrame]:
    """The dense weight with the best mean dev nDCG@10, and the table of every weight tried.

    Run it on a dev split (queries the eval never sees): `query_ids[i]` names row i of both
    rankings, `relevant` maps each to its relevant passage ids. The table has one row per weight
    (ascending): `dense_weight`, `ndcg@10`, `recall@10`, `best` (the chosen row).

    A dev set of a hundred-odd queries is noisy, and the curve over weights is typically a broad
    plateau with small wiggles rather than a sharp peak. So the choice is not the raw argmax but
    the middle of the plateau around it: the contiguous run of weights whose nDCG@10 is within
    `tolerance` of the best, and its middle (the higher dense weight of the two middles when the
    run has an even length). A weight with good neighbours on both sides still scores well when
    the eval queries shift the curve a little; one at the edge of a plateau may fall off it. The
    tie goes to the higher dense weight because the dense model is the stronger single ranking and
    a dense-leaning blend degrades toward it.
    """
    if len(query_ids) != len(dense[0]):
        raise ValueError(f"{len(query_ids)} query ids but {len(dense[0])} rankings")
    grid = tuple(sorted(grid))
    rows = []
    for w in grid:
        ranked = fuse(dense, lexical, method, w, k=10, rrf_k=rrf_k)
        rows.append({"dense_weight": w,
                     "ndcg@10": float(np.mean([ndcg_at_k(r, relevant[q], 10) for q, r in zip(query_ids, ranked, strict=True)])),
                     "recall@10": float(np.mean([recall_at_k(r, relevant[q], 10) for q, r in zip(query_ids, ranked, strict=True)]))})
    table = pd.DataFrame(rows)
    ndcg = table["ndcg@10"].to_numpy()
    peak = int(np.argmax(ndcg))
    good = ndcg >= ndcg[peak] - tolerance
    low = peak
    while low > 0 and good[low - 1]:
        low -= 1
    high = peak
    while high < len(grid) - 1 and good[high + 1]:
        high += 1
    chosen = (low + high + 1) // 2
    table["best"] = table.index == chosen
    return float(grid[chosen]), table
