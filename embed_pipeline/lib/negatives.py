"""Hard negatives: passages the base model ranks high for a query that are not its positives.

Why our own miner rather than `sentence_transformers.util.mine_hard_negatives`: it embeds texts
itself (we reuse the pipeline's embedding cache, shared with evaluation and indexing), treats
each (anchor, positive) row alone (we exclude *every* positive of a query, so a query with two
relevant passages never gets one as the other's negative), and reports nothing about what the
margin removed (we return counts, score distributions and a false-negative audit sample).
The selection rule is the same positive-aware TopK-PercPos rule (NV-Retriever) the library
exposes as `relative_margin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import MiningConfig
from embed_pipeline.lib.indexing import build_faiss_index, search


@dataclass(frozen=True)
class MinedNegatives:
    """`triples`: query, passage_id (the positive), positive_score, negatives (list of ids), negative_scores;
    with passage windows also positive_window and negative_windows (each passage's best window)."""

    triples: pd.DataFrame
    candidates_seen: int
    removed_by_margin: int
    removed_as_positive: int
    audit: pd.DataFrame  # the kept negatives scoring closest to the margin: eyeball them for false negatives
    removed_scores: np.ndarray  # cosine scores of the candidates the margin dropped (likely false negatives)

    @property
    def positive_scores(self) -> np.ndarray:
        return self.triples["positive_score"].to_numpy(dtype=float)

    @property
    def negative_scores(self) -> np.ndarray:
        return np.array([s for scores in self.triples["negative_scores"] for s in scores], dtype=float)


def mine_hard_negatives(
    pairs: pd.DataFrame,
    query_texts: list[str],
    query_vectors: np.ndarray,
    corpus_ids: list[str],
    corpus_vectors: np.ndarray,
    settings: MiningConfig,
    extra_candidates: dict[str, list[str]] | None = None,
) -> MinedNegatives:
    """Per (query, positive) row of `pairs` pick up to `num_negatives` negatives.

    `query_vectors[i]` embeds `query_texts[i]`; every query of `pairs` must be among them.

    Candidates are ranks [range_min, range_max) of an exact FAISS search over the corpus, plus
    `extra_candidates[query]` (for example skip-above passages from click logs). A candidate is
    dropped when it is any positive of the query, or when its score exceeds
    (1 - relative_margin) x the positive's score (likely an unlabelled positive). The highest
    scoring survivors are kept.
    """
    index = build_faiss_index(corpus_vectors, "flat")
    # Rows are passages, or with passage windows (lib/windows.py) a long passage's windows on
    # adjacent rows under its id: a passage then scores as its best window, and that window is
    # what training reads (`positive_window`, `negative_windows`: its place among the passage's windows).
    codes, unique_ids = pd.factorize(pd.Series(corpus_ids, dtype=object), sort=False)
    first_row = np.r_[np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]), len(codes)]
    span_of = {pid: (int(first_row[i]), int(first_row[i + 1])) for i, pid in enumerate(unique_ids)}
    windowed = len(unique_ids) < len(corpus_ids)
    positives = pairs.groupby("query")["passage_id"].agg(set).to_dict()
    extra_candidates = extra_candidates or {}
    q_row = {q: i for i, q in enumerate(query_texts)}
    depth = settings.range_max if not windowed else min(len(corpus_ids), 2 * settings.range_max * -(-len(corpus_ids) // len(unique_ids)))
    _, ranked = search(index, query_vectors, depth)

    def best(qv: np.ndarray, pid: str) -> tuple[float, int]:
        start, end = span_of[pid]
        scores = corpus_vectors[start:end] @ qv
        return float(scores.max()), int(scores.argmax())

    out, audit, removed_scores = [], [], []
    seen = removed_margin = removed_pos = 0
    for query, pid in zip(pairs["query"], pairs["passage_id"], strict=True):
        qv = query_vectors[q_row[query]]
        pos_score, pos_window = best(qv, pid)
        ceiling = (1 - settings.relative_margin) * pos_score
        ranked_ids = list(dict.fromkeys(corpus_ids[int(r)] for r in ranked[q_row[query]] if r >= 0))[: settings.range_max]
        candidates = ranked_ids[settings.range_min :]
        listed = set(ranked_ids)
        candidates += [c for c in dict.fromkeys(extra_candidates.get(query, [])) if c in span_of and c not in listed]
        kept = []
        for cid in candidates:
            seen += 1
            if cid in positives[query]:
                removed_pos += 1
                continue
            score, window = best(qv, cid)
            if score > ceiling:
                removed_margin += 1
                removed_scores.append(score)
                continue
            kept.append((score, cid, window))
        kept.sort(reverse=True)
        kept = kept[: settings.num_negatives]
        out.append((query, pid, pos_score, [c for _, c, _ in kept], [s for s, _, _ in kept], pos_window, [w for _, _, w in kept]))
        if kept:
            audit.extend((query, pid, pos_score, cid, score, ceiling - score) for score, cid, _ in kept)
    triples = pd.DataFrame(out, columns=["query", "passage_id", "positive_score", "negatives", "negative_scores",
                                         "positive_window", "negative_windows"])
    if not windowed:
        triples = triples.drop(columns=["positive_window", "negative_windows"])
    audit_frame = pd.DataFrame(audit, columns=["query", "positive_id", "positive_score", "negative_id", "negative_score", "gap_to_margin"])
    audit_frame = audit_frame.sort_values("gap_to_margin", kind="stable").head(settings.audit_rows).reset_index(drop=True)
    return MinedNegatives(triples, seen, removed_margin, removed_pos, audit_frame, np.array(removed_scores, dtype=float))
