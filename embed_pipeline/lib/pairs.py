"""The merged training set: (query, passage) pairs from every source, with provenance.

Pair tables share one schema, `PAIR_COLUMNS`: the query as users typed it (cleaned), the passage
id, and where the pair came from (click logs: lib/click_logs.py; labelled sets: lib/labelled.py;
synthetic: lib/synthetic.py). Every rule that removes rows counts what it removed, so the
Dagster UI can say what each rule kept and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import SourceQuotas
from embed_pipeline.lib.text import query_key

PAIR_COLUMNS = ["query", "passage_id", "source"]
# Higher wins when sources disagree on a query: a person's label beats a click beats a generator.
SOURCE_PRIORITY = {"curated": 3, "click": 2, "synthetic": 1}


@dataclass(frozen=True)
class RuleCounts:
    """Rows in, rows out, and how many rows each named rule removed."""

    rows_in: int
    rows_out: int
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MergedPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + positive_text ('' = the passage itself)
    counts: RuleCounts
    per_source: dict[str, int]
    per_source_in: dict[str, int]


def merge_pairs(sources: list[pd.DataFrame], max_synthetic_share: float, seed: int,
                quotas: SourceQuotas | None = None) -> MergedPairs:
    """Union of pair tables with provenance kept, normalised dedup and conflict resolution.

    Applied in this order, each step counted in `counts.dropped`:
    - `exact_duplicates`: same normalised query (`query_key`) and passage; the highest-priority
      source keeps the row (curated > click > synthetic).
    - `source_conflicts`: when sources give a query different passages, only the pairs of the
      highest-priority source for that query survive; a query with several positives from the
      same source keeps them all.
    - `over_quota_<source>`: a source with a quota keeps a seeded sample of that many pairs.
    - `synthetic_over_budget`: synthetic pairs are subsampled (seeded) to at most
      `max_synthetic_share` of the result (0.5: at most as many synthetic as real pairs).
    """
    quotas = quotas or SourceQuotas()
    columns = PAIR_COLUMNS + ["positive_text"]
    frame = pd.concat([s.reindex(columns=columns) for s in sources if len(s)], ignore_index=True)
    if frame.empty:
        empty = pd.DataFrame(columns=columns)
        return MergedPairs(empty, RuleCounts(0, 0, {}), {}, {})
    frame["positive_text"] = frame["positive_text"].fillna("")
    rows_in = len(frame)
    per_source_in = frame["source"].value_counts().to_dict()
    frame["key"] = frame["query"].map(query_key)
    frame["priority"] = frame["source"].map(SOURCE_PRIORITY)
    if frame["priority"].isna().any():
        raise ValueError(f"unknown pair source(s): {sorted(set(frame.loc[frame['priority'].isna(), 'source']))}")
    frame = frame.sort_values("priority", ascending=False, kind="stable")
    deduped = frame.drop_duplicates(["key", "passage_id"], keep="first")
    best = deduped.groupby("key")["priority"].transform("max")
    resolved = deduped[deduped["priority"] == best]
    rng = np.random.default_rng(seed)
    dropped = {"exact_duplicates": rows_in - len(deduped), "source_conflicts": len(deduped) - len(resolved)}
    for source in SOURCE_PRIORITY:
        quota = getattr(quotas, source)
        rows = resolved.index[resolved["source"] == source]
        over = max(0, len(rows) - quota) if quota is not None else 0
        dropped[f"over_quota_{source}"] = over
        if over:
            resolved = resolved.drop(index=rng.choice(rows, size=over, replace=False))
    synthetic = resolved["source"] == "synthetic"
    n_real = int((~synthetic).sum())
    cap = int(np.floor(max_synthetic_share / (1 - max_synthetic_share) * n_real)) if max_synthetic_share < 1 else int(synthetic.sum())
    over_budget = max(0, int(synthetic.sum()) - cap)
    if over_budget:
        resolved = resolved.drop(index=rng.choice(resolved.index[synthetic], size=over_budget, replace=False))
    dropped["synthetic_over_budget"] = over_budget
    out = resolved.sort_index()[columns].reset_index(drop=True)
    counts = RuleCounts(rows_in=rows_in, rows_out=len(out), dropped=dropped)
    return MergedPairs(out, counts, out["source"].value_counts().to_dict(), per_source_in)


def length_histogram(pairs: pd.DataFrame, bins: tuple[int, ...] = (1, 3, 5, 8, 12, 20, 40)) -> pd.DataFrame:
    """Query length in words per source: rows = buckets ("1-2", ..., "40+"), columns = sources.

    Synthetic queries that are much longer than real ones (ICT sentences) teach the model a
    different task; this table makes that visible next to the counts.
    """
    words = pairs["query"].map(lambda q: len(str(q).split()))
    edges = list(bins) + [np.inf]
    labels = [f"{lo}-{hi - 1}" if hi != np.inf else f"{lo}+" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    bucket = pd.cut(words, bins=edges, right=False, labels=labels)
    table = pd.crosstab(bucket, pairs["source"]).reindex(labels, fill_value=0)
    table.index.name = "query words"
    return table
