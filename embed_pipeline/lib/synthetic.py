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
