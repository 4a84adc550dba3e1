"""Synthetic (query, passage) pairs made from the corpus itself, with no network.

Inverse cloze task (Lee et al. 2019): one sentence of a passage plays the query and the rest of
the passage the positive, so the model must match meaning rather than copied words. Where a
passage has a title, the title is a second natural query. Both are weaker than real queries; the
merge step caps their share of the training set.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from embed_pipeline.lib.windows import max_pool

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`'\"(])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def inverse_cloze_pairs(passages: pd.DataFrame, pairs_per_passage: int, min_query_words: int, seed: int) -> pd.DataFrame:
    """Columns query, passage_id, source='synthetic', positive_text, method ('ict' or 'title').

    Per passage: the title (when it has at least 2 words or a dotted name) plus up to
    `pairs_per_passage` sentences with at least `min_query_words` words, chosen with a seeded RNG.
    A passage whose only sentence is the query yields no ICT pair (nothing would remain).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for pid, title, text in zip(passages["passage_id"], passages["title"], passages["text"], strict=True):
        sentences = split_sentences(text)
        eligible = [i for i, s in enumerate(sentences) if len(s.split()) >= min_query_words]
        if len(sentences) > 1 and eligible:
            picked = rng.choice(eligible, size=min(pairs_per_passage, len(eligible)), replace=False)
            for i in sorted(int(i) for i in picked):
                rest = " ".join(s for j, s in enumerate(sentences) if j != i)
                positive = f"{title}\n{rest}" if title else rest
                rows.append((sentences[i], pid, "synthetic", positive, "ict"))
        if title and (len(title.split()) >= 2 or "." in title):
            rows.append((title, pid, "synthetic", text, "title"))
    return pd.DataFrame(rows, columns=["query", "passage_id", "source", "positive_text", "method"])


def round_trip_filter(queries: pd.DataFrame, query_vectors: np.ndarray, passage_ids: list[str],
                      corpus_vectors: np.ndarray, k: int = 5, chunk: int = 1024) -> tuple[pd.DataFrame, pd.Series]:
    """Keep a synthetic query only if the base model ranks its source passage in the top `k`.

    Promptagator's consistency filter: a generated query the base retriever cannot route back to
    its own passage is usually too vague ("what are the results?") or about another passage, and
    training on it teaches noise. `query_vectors[i]` is the (L2-normalised) embedding of
    `queries.iloc[i]`; `corpus_vectors` those of `passage_ids`, so inner product is cosine.
    Returns the kept rows and, for every input row, the rank of its passage (1-based; k+1 means
    "not in the top k"), so callers can report the keep rate and the rank distribution.
    """
    if len(queries) == 0:
        return queries.copy(), pd.Series([], dtype=int)
    # With passage windows (lib/windows.py) a passage's id repeats on adjacent rows: it scores as its best window.
    owner, unique_ids = pd.factorize(pd.Series(passage_ids, dtype=object), sort=False)
    windowed = len(unique_ids) < len(passage_ids)
    position = {pid: i for i, pid in enumerate(unique_ids)}
    target = np.array([position.get(p, -1) for p in queries["passage_id"]])
    k = min(k, len(unique_ids))
    ranks = np.full(len(queries), k + 1, dtype=int)
    for start in range(0, len(queries), chunk):
        scores = query_vectors[start : start + chunk] @ corpus_vectors.T
        if windowed:
            scores = max_pool(scores, owner, len(unique_ids))
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
        for row, candidates in enumerate(top):
            want = target[start + row]
            if want in candidates:
                order = candidates[np.argsort(-scores[row, candidates], kind="stable")]
                ranks[start + row] = int(np.where(order == want)[0][0]) + 1
    ranks_series = pd.Series(ranks, index=queries.index, name="round_trip_rank")
    return queries[ranks_series <= k].reset_index(drop=True), ranks_series


def sample_passages(passages: pd.DataFrame, max_passages: int, seed: int) -> pd.DataFrame:
    """All passages when `max_passages` is 0 or covers the corpus, else a seeded sample of that many
    (corpus order kept). Bounds what an LLM generator costs on a large corpus."""
    if max_passages <= 0 or max_passages >= len(passages):
        return passages
    picked = np.sort(np.random.default_rng(seed).choice(len(passages), size=max_passages, replace=False))
    return passages.iloc[picked].reset_index(drop=True)
