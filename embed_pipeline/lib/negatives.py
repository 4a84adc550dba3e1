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
    """`triples`: query, passage_id (the positive), positive_score, negatives (list of ids), negative_scores."""

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
    row_of = {pid: i for i, pid in enumerate(corpus_ids)}
    positives = pairs.groupby("query")["passage_id"].agg(set).to_dict()
    extra_candidates = extra_candidates or {}
    q_row = {q: i for i, q in enumerate(query_texts)}
    _, ranked = search(index, query_vectors, settings.range_max)

    out, audit, removed_scores = [], [], []
    seen = removed_margin = removed_pos = 0
    for query, pid in zip(pairs["query"], pairs["passage_id"], strict=True):
        qv = query_vectors[q_row[query]]
        pos_score = float(qv @ corpus_vectors[row_of[pid]])
        ceiling = (1 - settings.relative_margin) * pos_score
        rows = [int(r) for r in ranked[q_row[query]][settings.range_min :] if r >= 0]
        ranked_rows = set(rows)
        rows += [row_of[c] for c in dict.fromkeys(extra_candidates.get(query, [])) if c in row_of and row_of[c] not in ranked_rows]
        kept = []
        for r in rows:
            seen += 1
            cid = corpus_ids[r]
            if cid in positives[query]:
                removed_pos += 1
                continue
            score = float(qv @ corpus_vectors[r])
            if score > ceiling:
                removed_margin += 1
                removed_scores.append(score)
                continue
            kept.append((score, cid))
        kept.sort(reverse=True)
        kept = kept[: settings.num_negatives]
        out.append((query, pid, pos_score, [c for _, c in kept], [s for s, _ in kept]))
        if kept:
            audit.extend((query, pid, pos_score, cid, score, ceiling - score) for score, cid in kept)
    triples = pd.DataFrame(out, columns=["query", "passage_id", "positive_score", "negatives", "negative_scores"])
    audit_frame = pd.DataFrame(audit, columns=["query", "positive_id", "positive_score", "negative_id", "negative_score", "gap_to_margin"])
    audit_frame = audit_frame.sort_values("gap_to_margin", kind="stable").head(settings.audit_rows).reset_index(drop=True)
    return MinedNegatives(triples, seen, removed_margin, removed_pos, audit_frame, np.array(removed_scores, dtype=float))
