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

Splits (the automatic eval split here, the training dev split in lib/training_data.py) share one
grouping, `group_queries`: near duplicates by the test above, and queries sharing a positive
passage, joined transitively; whole groups go to one side (`choose_groups`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
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


def group_queries(queries: Sequence[str], passages: Sequence[str] | None, threshold: float, words: int = 2) -> dict[str, int]:
    """Each distinct query -> its group: one grouping for the eval split and the dev split.

    `queries` and `passages` are row-parallel (one row per query x positive passage; `passages`
    None: group by wording alone). Two queries are one group (union-find, so transitively) when
    they are exact or near duplicates (the leakage test above: word-shingle Jaccard >=
    `threshold`) or when they share a positive passage. Why the shared positive: on SciFact every
    near-twin claim pair cites the same abstract, and a dev query whose positive is trained on
    (under another query) is scored on a passage the model has already been pulled towards, so it
    measures memory, not generalisation. Group ids are the index of the group's first query.
    """
    keys = list(dict.fromkeys(queries))
    position = {q: i for i, q in enumerate(keys)}
    parent = list(range(len(keys)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        a, b = find(a), find(b)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for i, j, _ in near_duplicates(keys, keys, threshold, words):
        join(i, j)
    if passages is not None:
        first_query: dict[str, int] = {}
        for query, passage in zip(queries, passages, strict=True):
            join(first_query.setdefault(passage, position[query]), position[query])
    return {q: find(i) for i, q in enumerate(keys)}


def choose_groups(groups: dict[str, int], target: int, seed: int, counted: Callable[[str], bool] | None = None) -> frozenset[str]:
    """The queries of whole groups, drawn in a seeded order until `target` counted queries are chosen.

    `counted(query)` says which queries count towards `target` (default: all); a group with no
    counted query is never drawn. A group that would push the count past `target` is passed over
    (a large component of shared positives must not swallow the split), unless nothing has been
    chosen yet at the end, when the smallest eligible group is taken: a split is never empty
    while a group exists.
    """
    counted = counted or (lambda q: True)
    members: dict[int, list[str]] = {}
    for query, group in groups.items():
        members.setdefault(group, []).append(query)
    ordered = [m for _, m in sorted(members.items()) if any(counted(q) for q in m)]
    chosen: list[str] = []
    count = 0
    for g in np.random.default_rng(seed).permutation(len(ordered)):
        if count >= target:
            break
        size = sum(counted(q) for q in ordered[int(g)])
        if count + size > target and size > 1:
            continue
        chosen += ordered[int(g)]
        count += size
    if not chosen and ordered and target > 0:
        chosen = min(ordered, key=lambda m: (sum(counted(q) for q in m), m[0]))
    return frozenset(chosen)


@dataclass(frozen=True)
class EvalSplit:
    """Which query keys went to eval, and how many groups (near duplicates, shared positives) the split respected."""

    eval_keys: frozenset[str]
    groups: int
    grouped_queries: int  # queries that share a group with at least one other query


def split_eval_queries(queries: list[str], fraction: float, seed: int, threshold: float, words: int = 2,
                       passages: list[str] | None = None) -> EvalSplit:
    """Hold out about `fraction` of the distinct queries for evaluation, seeded, by group.

    Queries are grouped by `group_queries` (near duplicates, and with `passages` row-parallel to
    `queries`, a shared positive), and whole groups go to one side, so the split itself never
    plants a leak. Groups are shuffled with `seed` and taken (`choose_groups`) until the eval side
    holds `round(fraction * distinct queries)` queries (at least one).
    """
    rows = [(query_key(q), p) for q, p in zip(queries, passages if passages is not None else [None] * len(queries), strict=True)
            if query_key(q)]
    groups = group_queries([k for k, _ in rows], None if passages is None else [p for _, p in rows], threshold, words)
    target = max(1, round(fraction * len(groups))) if groups else 0
    sizes = Counter(groups.values())
    return EvalSplit(choose_groups(groups, target, seed), len(sizes), sum(n for n in sizes.values() if n > 1))


def split_labelled_pairs(pairs: pd.DataFrame, fraction: float, seed: int, threshold: float,
                         words: int = 2) -> tuple[pd.DataFrame, pd.DataFrame, EvalSplit]:
    """(train rows, eval rows, split) of a labelled table with `query` and `passage_id` columns, split by
    query group (near duplicates and queries sharing a positive passage stay on one side)."""
    passages = list(pairs["passage_id"].astype(str)) if "passage_id" in pairs else None
    split = split_eval_queries(list(pairs["query"]), fraction, seed, threshold, words, passages)
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
