"""Train/eval leakage: exact and near-duplicate queries, and an eval split that cannot leak.

A model evaluated on queries it was trained on (or on trivial rewrites of them) reports a lift it
will not deliver. Two queries leak when, after `query_key` normalisation (unicode NFC, collapsed
whitespace, case-folded):

- they are equal (exact leak), or
- the Jaccard similarity of their word-shingle sets is at least `threshold` (near duplicate).

Why Jaccard on word shingles and not the base model's cosine: it needs no model, gives the same
answer on every machine, and a person can see why two queries matched (the shared word pairs).
Shingles are word bigrams (`shingle_words=2`) after dropping punctuation, so "spongy brakes
bleed" and "spongy brakes, bleed!" share all their shingles, while a changed word breaks two.
At 0.8, "knocking in the headset when braking" and the same with " hard" appended match (5 of 6
bigrams shared); "chain needs lube" and "chain needs cleaning" do not (1 of 3). We compute the
exact Jaccard through an inverted index of shingles (candidates share at least one shingle),
which is what MinHash would estimate, without its sampling error, at the sizes we see (thousands
of queries against hundreds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from embed_pipeline.lib.text import query_key

_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(query: str, words: int = 2) -> frozenset[str]:
    """The set of `words`-word shingles of a normalised query (the whole query when it is shorter)."""
    tokens = _WORD.findall(query_key(query))
    if len(tokens) <= words:
        return frozenset([" ".join(tokens)]) if tokens else frozenset()
    return frozenset(" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def near_duplicates(left: list[str], right: list[str], threshold: float, words: int = 2) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) for every left[i], right[j] whose shingle Jaccard is >= threshold.

    Exact matches (equal `query_key`) are always included with jaccard 1.0, even when
    punctuation-only queries have no shingles.
    """
    right_sets = [shingles(q, words) for q in right]
    index: dict[str, list[int]] = {}
    for j, s in enumerate(right_sets):
        for shingle in s:
            index.setdefault(shingle, []).append(j)
    right_keys: dict[str, list[int]] = {}
    for j, q in enumerate(right):
        right_keys.setdefault(query_key(q), []).append(j)
    found: list[tuple[int, int, float]] = []
    for i, q in enumerate(left):
        s = shingles(q, words)
        exact = set(right_keys.get(query_key(q), []))
        candidates = {j for shingle in s for j in index.get(shingle, ())} | exact
        for j in sorted(candidates):
            score = 1.0 if j in exact else jaccard(s, right_sets[j])
            if score >= threshold:
                found.append((i, j, score))
    return found


def find_leaks(train: pd.DataFrame, eval_queries: list[str], threshold: float, words: int = 2) -> pd.DataFrame:
    """Training rows whose query leaks an eval query.

    `train` needs a `query` column (other columns, e.g. `passage_id` and `source`, are kept).
    Returns one row per (training row, eval query) match with `eval_query`, `kind` ('exact' or
    'near-duplicate') and `jaccard`, exact leaks first.
    """
    queries = list(dict.fromkeys(train["query"]))
    matches = near_duplicates(queries, eval_queries, threshold, words)
    columns = list(train.columns) + ["eval_query", "kind", "jaccard"]
    if not matches:
        return pd.DataFrame(columns=columns)
    hits = pd.DataFrame(
        [(queries[i], eval_queries[j], round(score, 3)) for i, j, score in matches], columns=["query", "eval_query", "jaccard"]
    )
    hits["kind"] = np.where(hits["query"].map(query_key) == hits["eval_query"].map(query_key), "exact", "near-duplicate")
    out = train.merge(hits, on="query", how="inner")[columns]
    return out.sort_values(["kind", "jaccard"], ascending=[True, False], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Decontaminated:
    """Training pairs with every leaking row removed, and what was removed and why."""

    pairs: pd.DataFrame  # the input rows that leak no eval query, in their order
    leaks: pd.DataFrame  # one row per (removed training row, eval query it matches): eval_query, kind, jaccard
    dropped_pairs: int  # training rows removed (a row matching two eval queries counts once)
    dropped_per_source: dict[str, int]


def decontaminate(train: pd.DataFrame, eval_queries: list[str], threshold: float, words: int = 2) -> Decontaminated:
    """Remove training rows whose query equals or nearly duplicates an eval query.

    Click logs naturally contain the popular queries an eval set is sampled from, and public
    benchmark splits carry such pairs too: a nightly job drops them (and keeps them, with the eval
    query they match and its similarity, for a person to read) instead of refusing to train.
    """
    leaks = find_leaks(train, eval_queries, threshold, words)
    leaking = set(leaks["query"])
    kept = train[~train["query"].isin(leaking)].reset_index(drop=True)
    removed = train[train["query"].isin(leaking)]
    per_source = removed["source"].value_counts().to_dict() if "source" in removed else {}
    return Decontaminated(kept, leaks, len(removed), {str(k): int(v) for k, v in per_source.items()})


@dataclass(frozen=True)
class EvalSplit:
    """Which query keys went to eval, and how many near-duplicate groups the split respected."""

    eval_keys: frozenset[str]
    groups: int
    grouped_queries: int  # queries that share a group with at least one other query


def split_eval_queries(queries: list[str], fraction: float, seed: int, threshold: float, words: int = 2) -> EvalSplit:
    """Hold out about `fraction` of the distinct queries for evaluation, seeded, by group.

    Queries that are exact or near duplicates of each other (same test as the leakage check) are
    joined into one group (union-find, transitively), and whole groups go to one side, so the
    split itself never plants a leak. Groups are shuffled with `seed` and taken until the eval
    side holds `round(fraction * distinct queries)` queries (at least one).
    """
    keys = list(dict.fromkeys(query_key(q) for q in queries if query_key(q)))
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in near_duplicates(keys, keys, threshold, words):
        if i != j:
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(find(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: min(g))
    rng = np.random.default_rng(seed)
    target = max(1, round(fraction * len(keys))) if keys else 0
    chosen: set[str] = set()
    for g in rng.permutation(len(ordered)):
        if len(chosen) >= target:
            break
        chosen.update(keys[i] for i in ordered[int(g)])
    grouped = sum(len(g) for g in ordered if len(g) > 1)
    return EvalSplit(frozenset(chosen), len(ordered), grouped)


def split_labelled_pairs(pairs: pd.DataFrame, fraction: float, seed: int, threshold: float,
                         words: int = 2) -> tuple[pd.DataFrame, pd.DataFrame, EvalSplit]:
    """(train rows, eval rows, split) of a labelled table with a `query` column, split by query group."""
    split = split_eval_queries(list(pairs["query"]), fraction, seed, threshold, words)
    is_eval = pairs["query"].map(query_key).isin(split.eval_keys)
    return pairs[~is_eval].reset_index(drop=True), pairs[is_eval].reset_index(drop=True), split


def leakage_block(leaks_path: str | None, dropped_pairs: int) -> dict:
    """The eval report's `leakage` counts, from the leaks file one run's training_pairs wrote.

    `leaks_path` is that run's `training_pairs` handle's `files["leaks"]` (one row per leaking
    training row and the eval query it matches), `dropped_pairs` its `quarantined` count. Counts
    are distinct leaking queries by kind. When the file is not named (a handle from an older
    version) or is gone, the block says so (`available: false` and why): never zeros.
    """
    from pathlib import Path

    if not leaks_path:
        return {"available": False, "reason": "the training_pairs handle of this run names no leaks file"}
    if not Path(leaks_path).exists():
        return {"available": False, "reason": f"the leaks file {leaks_path} of this run's training_pairs is gone"}
    leaks = pd.read_parquet(leaks_path)
    kinds = leaks.drop_duplicates("query")["kind"].value_counts().to_dict() if len(leaks) else {}
    return {"available": True, "dropped_pairs": int(dropped_pairs), "exact": int(kinds.get("exact", 0)),
            "near_duplicate": int(kinds.get("near-duplicate", 0))}
