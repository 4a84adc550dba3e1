"""(query, passage) pairs from click logs and labelled sets, and the merged training set.

Pair tables share one schema, `PAIR_COLUMNS`: the query as users typed it (cleaned), the passage
id, and where the pair came from. Every rule that removes rows counts what it removed, so the
Dagster UI can say what each rule kept and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import LabelledSet, SearchLogRules
from embed_pipeline.lib.io import InputError, read_jsonl, read_qrels, read_table
from embed_pipeline.lib.text import clean_text, query_key

PAIR_COLUMNS = ["query", "passage_id", "source"]
# Higher wins when sources disagree on a query: a person's label beats a click beats a generator.
SOURCE_PRIORITY = {"curated": 3, "click": 2, "synthetic": 1}
LOG_COLUMNS = ["query", "passage_id", "position", "clicked", "dwell_seconds", "session_id", "timestamp"]


@dataclass(frozen=True)
class RuleCounts:
    """Rows in, rows out, and how many rows each named rule removed."""

    rows_in: int
    rows_out: int
    dropped: dict[str, int] = field(default_factory=dict)


# --- click logs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + support (distinct satisfied sessions)
    skip_above: pd.DataFrame  # query, passage_id: shown above a satisfied click and skipped
    counts: RuleCounts
    sessions: int


def pairs_from_search_logs(logs: pd.DataFrame, known_ids: set[str], rules: SearchLogRules) -> LogPairs:
    """Satisfied clicks -> positives; results skipped above them -> candidate negatives.

    A click is satisfied when its dwell is at least `min_dwell_seconds` and it is not a pogo-stick
    (the user came back within `pogo_stick_seconds` and clicked another result of the same query in
    the same session). A (query, passage) becomes a pair when at least `min_sessions` distinct
    sessions had a satisfied click on it. Skip-above negatives (Joachims 2005) are results shown
    above a satisfied click in the same session and not clicked.
    """
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        raise InputError(f"search logs lack column(s) {missing}; expected {LOG_COLUMNS}")
    dropped: dict[str, int] = {}
    frame = logs[LOG_COLUMNS].copy()
    frame["query"] = frame["query"].map(clean_text)
    frame["passage_id"] = frame["passage_id"].astype(str)
    frame["key"] = frame["query"].str.casefold()
    frame["clicked"] = frame["clicked"].astype(str).str.lower().isin(["true", "1", "yes"])
    frame["dwell_seconds"] = pd.to_numeric(frame["dwell_seconds"], errors="coerce").fillna(0.0)
    frame["position"] = pd.to_numeric(frame["position"], errors="coerce")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce")

    def drop(mask: pd.Series, rule: str) -> None:
        nonlocal frame
        dropped[rule] = int(mask.sum())
        frame = frame[~mask]

    lengths = frame["query"].str.len()
    drop(lengths < rules.min_query_chars, "query_too_short")
    drop(frame["query"].str.len() > rules.max_query_chars, "query_too_long")
    drop(frame["position"].isna() | frame["timestamp"].isna(), "unparseable_position_or_time")
    drop(~frame["passage_id"].isin(known_ids), "unknown_passage_id")

    clicks = frame[frame["clicked"]].sort_values(["session_id", "timestamp"])
    next_click_same_query = clicks.groupby(["session_id", "key"])["timestamp"].shift(-1).notna()
    pogo = next_click_same_query & (clicks["dwell_seconds"] < rules.pogo_stick_seconds)
    short = ~pogo & (clicks["dwell_seconds"] < rules.min_dwell_seconds)
    satisfied = clicks[~pogo & ~short]
    support = satisfied.groupby(["key", "passage_id"])["session_id"].nunique().rename("support")
    kept = support[support >= rules.min_sessions].reset_index()
    # Show each query in its most common written form.
    surface = frame.groupby("key")["query"].agg(lambda s: s.value_counts().index[0]).rename("query")
    pairs = kept.join(surface, on="key").assign(source="click")[PAIR_COLUMNS + ["support"]]

    sat_pos = satisfied.groupby(["session_id", "key"])["position"].max().rename("sat_position")
    shown = frame.join(sat_pos, on=["session_id", "key"], how="inner")
    skipped = shown[~shown["clicked"] & (shown["position"] < shown["sat_position"])]
    skip_above = skipped.drop_duplicates(["key", "passage_id"]).join(surface, on="key", rsuffix="_surface")
    skip_above = skip_above.assign(query=skip_above["query_surface"])[["query", "passage_id"]]

    counts = RuleCounts(
        rows_in=len(logs),
        rows_out=len(pairs),
        dropped={
            **dropped,
            "clicks": int(len(clicks)),
            "pogo_stick_clicks": int(pogo.sum()),
            "short_dwell_clicks": int(short.sum()),
            "below_min_sessions": int((support < rules.min_sessions).sum()),
        },
    )
    return LogPairs(pairs.reset_index(drop=True), skip_above.reset_index(drop=True), counts, int(frame["session_id"].nunique()))


# --- labelled sets (curated pairs, eval) ------------------------------------------------------


@dataclass(frozen=True)
class LabelledPairs:
    """Accepted rows (query_id, query, passage_id, plus `segment` when given) and quarantined ones."""

    pairs: pd.DataFrame
    quarantine: pd.DataFrame  # row, reason, query_id, query, passage_id
    rows_in: int


def load_labelled_pairs(labelled: LabelledSet, known_ids: set[str]) -> LabelledPairs:
    """Read and validate a labelled set; every rejected row is kept with its reason.

    Rejections: malformed or non-UTF-8 lines, qrels naming an unknown query id, empty queries,
    unknown passage ids, and exact duplicates (same normalised query and passage).
    """
    rejected: list[dict] = []
    if labelled.pairs is not None:
        table = _read_pairs_table(labelled.pairs, rejected)
    else:
        table = _read_beir(labelled.queries, labelled.qrels, rejected)
    table["row"] = table["row"].astype(str)
    table["query"] = table["query"].map(clean_text)
    table["passage_id"] = table["passage_id"].map(lambda v: clean_text(v))
    reasons = pd.Series("", index=table.index, dtype=object)
    reasons[~table["passage_id"].isin(known_ids)] = "unknown passage id"
    reasons[table["passage_id"] == ""] = "missing passage id"
    reasons[table["query"] == ""] = "empty query"
    keys = table["query"].str.casefold() + "\t" + table["passage_id"]
    reasons[keys.duplicated(keep="first") & (reasons == "")] = "duplicate pair"
    bad = table[reasons != ""].assign(reason=reasons[reasons != ""])
    rejected += bad.to_dict("records")
    accepted = table[reasons == ""].drop(columns=["row"]).reset_index(drop=True)
    quarantine = pd.DataFrame(rejected).reindex(columns=["row", "reason", "query_id", "query", "passage_id"])
    quarantine = quarantine.fillna("").astype(str)
    rows_in = len(table) + sum(1 for r in rejected if r.get("stage") == "read")
    assert rows_in == len(accepted) + len(quarantine), (rows_in, len(accepted), len(quarantine))
    return LabelledPairs(accepted, quarantine, rows_in)


def _read_pairs_table(path: Path, rejected: list[dict]) -> pd.DataFrame:
    if Path(path).suffix.lower() in (".jsonl", ".json"):
        rows, bad = read_jsonl(path)
        rejected += [{"row": f"line {n}", "reason": reason, "stage": "read"} for n, reason in bad]
        raw = pd.DataFrame(rows)
    else:
        raw = read_table(Path(path))
    if len(raw) and not {"query", "passage_id"} <= set(raw.columns):
        raise InputError(f"{path}: a pairs table needs columns `query` and `passage_id`; found {list(raw.columns)}")
    raw = raw.reindex(columns=["query", "passage_id", "segment"]) if "segment" in raw else raw.reindex(columns=["query", "passage_id"])
    raw["query_id"] = [f"row{i}" for i in range(len(raw))]
    raw["row"] = [str(i + 2 if Path(path).suffix.lower() == ".csv" else i + 1) for i in range(len(raw))]
    return raw


def _read_beir(queries_path: Path, qrels_path: Path, rejected: list[dict]) -> pd.DataFrame:
    rows, bad = read_jsonl(queries_path)
    rejected += [{"row": f"queries line {n}", "reason": reason, "stage": "read"} for n, reason in bad]
    queries = pd.DataFrame(rows)
    if queries.empty or not {"_id", "text"} <= set(queries.columns):
        raise InputError(f"{queries_path}: BEIR queries need `_id` and `text`")
    queries["_id"] = queries["_id"].astype(str)
    queries = queries.drop_duplicates("_id").set_index("_id")
    segments = queries["metadata"].map(lambda m: m.get("segment") if isinstance(m, dict) else None) if "metadata" in queries else None
    qrels = read_qrels(qrels_path)
    table = pd.DataFrame(
        {
            "row": [f"qrels line {i + 2}" for i in range(len(qrels))],
            "query_id": qrels["query_id"].astype(str),
            "passage_id": qrels["passage_id"].astype(str),
        }
    )
    known = table["query_id"].isin(queries.index)
    unknown = table[~known]
    rejected += [{**r, "reason": "unknown query id", "query": "", "stage": "read"} for r in unknown.to_dict("records")]
    table = table[known].copy()
    table["query"] = table["query_id"].map(queries["text"])
    if segments is not None and segments.notna().any():
        table["segment"] = table["query_id"].map(segments).fillna("").astype(str)
    return table.reset_index(drop=True)


def relevance_map(pairs: pd.DataFrame) -> dict[str, set[str]]:
    """query_id -> set of relevant passage ids."""
    return {qid: set(group) for qid, group in pairs.groupby("query_id")["passage_id"]}


# --- the merged training set ------------------------------------------------------------------


@dataclass(frozen=True)
class MergedPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + positive_text ('' = the passage itself)
    counts: RuleCounts
    per_source: dict[str, int]


def merge_pairs(sources: list[pd.DataFrame], max_synthetic_share: float, seed: int) -> MergedPairs:
    """Union of pair tables with provenance kept, normalised dedup and conflict resolution.

    - Exact duplicates (same normalised query and passage) keep the highest-priority source.
    - Conflicts: when sources give a query different passages, only the pairs of the
      highest-priority source for that query survive (curated > click > synthetic); a query
      with several positives from the same source keeps them all.
    - Budget: synthetic pairs are subsampled (seeded) to at most `max_synthetic_share` of the result.
    """
    columns = PAIR_COLUMNS + ["positive_text"]
    frame = pd.concat([s.reindex(columns=columns) for s in sources if len(s)], ignore_index=True)
    frame["positive_text"] = frame["positive_text"].fillna("")
    rows_in = len(frame)
    frame["key"] = frame["query"].map(query_key)
    frame["priority"] = frame["source"].map(SOURCE_PRIORITY)
    if frame["priority"].isna().any():
        raise ValueError(f"unknown pair source(s): {sorted(set(frame.loc[frame['priority'].isna(), 'source']))}")
    frame = frame.sort_values("priority", ascending=False, kind="stable")
    deduped = frame.drop_duplicates(["key", "passage_id"], keep="first")
    best = deduped.groupby("key")["priority"].transform("max")
    resolved = deduped[deduped["priority"] == best]
    synthetic = resolved["source"] == "synthetic"
    n_real = int((~synthetic).sum())
    cap = int(np.floor(max_synthetic_share / (1 - max_synthetic_share) * n_real)) if max_synthetic_share < 1 else int(synthetic.sum())
    over_budget = max(0, int(synthetic.sum()) - cap)
    if over_budget:
        rng = np.random.default_rng(seed)
        drop_idx = rng.choice(resolved.index[synthetic], size=over_budget, replace=False)
        resolved = resolved.drop(index=drop_idx)
    out = resolved.sort_index()[columns].reset_index(drop=True)
    counts = RuleCounts(
        rows_in=rows_in,
        rows_out=len(out),
        dropped={
            "exact_duplicates": rows_in - len(deduped),
            "source_conflicts": len(deduped) - int((deduped["priority"] == best).sum()),
            "synthetic_over_budget": over_budget,
        },
    )
    return MergedPairs(out, counts, out["source"].value_counts().to_dict())
