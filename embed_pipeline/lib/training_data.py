"""Training data shaping: the dev split, the trainer's columns, and the checkpoint folder key.

Pure pandas/numpy: what `lib/training.py`'s trainer reads, made from the mined triples (one row per
query x positive, with its hard negatives hardest first) and the corpus texts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import TrainingConfig


@dataclass(frozen=True)
class DevSet:
    """A small retrieval task for checkpoint selection: queries, a passage pool, and the relevant ids."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def split_dev(triples: pd.DataFrame, share: float, max_queries: int, seed: int, threshold: float = 0.8,
              words: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, dev) rows split by query group, so no dev query's wording or positive is trained on.

    Groups are `lib.leakage.group_queries` (the eval split's grouping): near-duplicate queries
    (word-shingle Jaccard >= `threshold`) and queries sharing a positive passage are one group,
    and groups, not queries, go to one side. A dev query whose near-twin or positive is trained on
    scores as memorised, so a random per-query split flattered every checkpoint.
    Dev queries are real queries (`source` != 'synthetic' when the column is there): synthetic
    inverse-cloze queries are easy and would flatter every checkpoint. Synthetic rows of a dev
    group are in neither frame (training on them would teach the dev positives). Dev holds about
    `share` of the distinct queries, at most `max_queries`, counted in real queries.
    """
    from embed_pipeline.lib.leakage import choose_groups, group_queries

    synthetic = set(triples.loc[triples["source"] == "synthetic", "query"]) if "source" in triples else set()
    real = [q for q in triples["query"].unique() if q not in synthetic]
    if not real:  # nothing but synthetic queries: they are the dev candidates after all
        synthetic, real = set(), list(triples["query"].unique())
    wanted = min(int(round(share * triples["query"].nunique())), max_queries, len(real))
    if wanted < 1:
        return triples.reset_index(drop=True), triples.iloc[0:0]
    groups = group_queries(list(triples["query"]), list(triples["passage_id"]), threshold, words)
    chosen = choose_groups(groups, wanted, seed, counted=lambda q: q not in synthetic)
    in_dev_group = triples["query"].isin(chosen)
    is_dev = in_dev_group & ~triples["query"].isin(synthetic)
    return triples[~in_dev_group].reset_index(drop=True), triples[is_dev].reset_index(drop=True)


def dev_set(dev: pd.DataFrame, passage_text: dict[str, str], max_passages: int, seed: int) -> DevSet:
    """Dev queries against their positives, their mined negatives and random fill up to `max_passages`.

    A pool, not the whole corpus: evaluating at every checkpoint must cost seconds. Mined
    negatives keep it hard; the random fill keeps it from being only hard.
    """
    queries = {f"q{i}": q for i, q in enumerate(dev["query"].unique())}
    qid = {q: k for k, q in queries.items()}
    relevant: dict[str, set[str]] = {}
    pool: list[str] = []
    for row in dev.itertuples(index=False):
        relevant.setdefault(qid[row.query], set()).add(row.passage_id)
        pool.append(row.passage_id)
        pool.extend(row.negatives)
    pool = list(dict.fromkeys(pool))
    in_pool = set(pool)
    rest = [p for p in passage_text if p not in in_pool]
    fill = max(0, max_passages - len(pool))
    if fill and rest:
        picked = np.random.default_rng(seed).choice(len(rest), size=min(fill, len(rest)), replace=False)
        pool += [rest[int(i)] for i in sorted(picked)]
    return DevSet(queries=queries, corpus={p: passage_text[p] for p in pool}, relevant=relevant)


def training_columns(
    triples: pd.DataFrame,
    passage_text: dict[str, str],
    num_negatives: int,
    seed: int,
) -> tuple[dict[str, list[str]], int]:
    """Columns anchor, positive, negative_1..n for the trainer, plus how many negatives were padded.

    MNRL needs the same number of negatives on every row. A row with fewer mined negatives is
    topped up with random corpus passages (seeded) that are not positives of its query: a random
    passage is a weak but valid negative, and dropping the row would lose its positive.
    The mined negatives are sorted hardest first, so `num_negatives=1` trains on the hardest one
    that survived the margin.
    """
    rng = np.random.default_rng(seed)
    all_ids = list(passage_text)
    positives = triples.groupby("query")["passage_id"].agg(set).to_dict()
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(num_negatives)})
    padded = 0
    for row in triples.itertuples(index=False):
        columns["anchor"].append(row.query)
        override = getattr(row, "positive_text", "") or ""
        columns["positive"].append(override if isinstance(override, str) and override else passage_text[row.passage_id])
        negatives = list(row.negatives)[:num_negatives]
        if len(all_ids) - len(positives[row.query]) < num_negatives:
            raise ValueError(f"the corpus has fewer than {num_negatives} passages that are not positives of {row.query!r}: "
                             "lower training.num_negatives")
        while len(negatives) < num_negatives:
            candidate = all_ids[int(rng.integers(len(all_ids)))]
            if candidate not in positives[row.query] and candidate not in negatives:
                negatives.append(candidate)
                padded += 1
        # Mined with passage windows, a long negative brings its best window's text (lib/windows.py).
        window_texts = getattr(row, "negative_texts", None)
        window_texts = [] if window_texts is None else list(window_texts)
        for i, nid in enumerate(negatives):
            own = window_texts[i] if i < len(window_texts) else ""
            columns[f"negative_{i + 1}"].append(own if isinstance(own, str) and own else passage_text[nid])
    return columns, padded


def checkpoint_key(data_version: str, settings: TrainingConfig, base_model_fingerprint: str) -> str:
    """A stable folder name for one training job: the same data, config and base model -> the same key.

    Keyed this way (not by the orchestrator's run id) so a retry after a crash finds the
    checkpoints of the attempt that crashed.
    """
    payload = json.dumps({"data": data_version, "base": base_model_fingerprint, "training": asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
