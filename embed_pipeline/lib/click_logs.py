"""Click logs -> (query, passage) positives and skip-above negatives.

A search log row is one impression: a passage shown at a position for a query in a session,
clicked or not, with the dwell time of the click. `pairs_from_search_logs` explains each rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from embed_pipeline.lib.config import SearchLogRules
from embed_pipeline.lib.pairs import PAIR_COLUMNS, RuleCounts
from embed_pipeline.lib.io import InputError
from embed_pipeline.lib.text import clean_text

LOG_COLUMNS = ["query", "passage_id", "position", "clicked", "dwell_seconds", "session_id", "timestamp"]


@dataclass(frozen=True)
class LogPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + support (distinct satisfied sessions)
    skip_above: pd.DataFrame  # query, passage_id, kind='skip_above': shown above a satisfied click, not clicked
    counts: RuleCounts  # rows_in = impressions read; dropped = rows or clicks removed per rule
    sessions: int  # distinct sessions in the log as read
    clicks: int  # clicks that survived the row rules (candidates for satisfied clicks)


def pairs_from_search_logs(logs: pd.DataFrame, known_ids: set[str], rules: SearchLogRules) -> LogPairs:
    """Satisfied clicks -> positives; results skipped above them -> candidate negatives.

    A click is satisfied when its dwell is at least `min_dwell_seconds` and it is not a pogo-stick
    (the user came back within `pogo_stick_seconds` and clicked another result of the same query in
    the same session). A (query, passage) becomes a pair when at least `min_sessions` distinct
    sessions had a satisfied click on it. Skip-above negatives (Joachims 2005) are results shown
    above a satisfied click in the same session and not clicked; one that is a satisfied click in
    another session is not kept (users disagree; it is no negative). They are candidates only:
    the mining stage decides whether to use them.

    Row rules, applied in order to impressions, each counted: `query_too_short` (fewer than
    `min_query_chars` characters after cleaning: empty or near-empty queries carry no intent),
    `query_too_long` (more than `max_query_chars`: pasted text, not a query),
    `unparseable_position_or_time`, `unknown_passage_id` (not in the corpus). Then per click:
    `pogo_stick_clicks`, `short_dwell_clicks` (dwell below `min_dwell_seconds`, or missing), and
    per (query, passage): `pairs_below_min_sessions`.
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
    next_clicked = clicks.groupby(["session_id", "key"])["passage_id"].shift(-1)
    next_click_elsewhere = next_clicked.notna() & (next_clicked != clicks["passage_id"])
    pogo = next_click_elsewhere & (clicks["dwell_seconds"] < rules.pogo_stick_seconds)
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
    skipped = skipped.drop_duplicates(["key", "passage_id"])
    # A result skipped in one session but a satisfied click in another is not a negative.
    positive_keys = set(zip(satisfied["key"], satisfied["passage_id"], strict=True))
    is_positive = pd.Series([k in positive_keys for k in zip(skipped["key"], skipped["passage_id"], strict=True)],
                            index=skipped.index, dtype=bool)
    skipped = skipped[~is_positive].join(surface, on="key", rsuffix="_surface")
    skip_above = skipped.assign(query=skipped["query_surface"], kind="skip_above")[["query", "passage_id", "kind"]]

    counts = RuleCounts(
        rows_in=len(logs),
        rows_out=len(pairs),
        dropped={
            **dropped,
            "pogo_stick_clicks": int(pogo.sum()),
            "short_dwell_clicks": int(short.sum()),
            "pairs_below_min_sessions": int((support < rules.min_sessions).sum()),
            "skip_above_also_satisfied": int(is_positive.sum()),
        },
    )
    return LogPairs(pairs.reset_index(drop=True), skip_above.reset_index(drop=True), counts,
                    sessions=int(logs["session_id"].nunique()), clicks=int(len(clicks)))


