"""Click logs -> (query, passage) positives and skip-above negatives.

A search log row is one impression: a passage shown at a position for a query in a session,
clicked or not, with the dwell time of the click. `pairs_from_search_logs` explains each rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import SearchLogRules
from embed_pipeline.lib.pairs import PAIR_COLUMNS, RuleCounts
from embed_pipeline.lib.io import InputError, read_table
from embed_pipeline.lib.parsing import parse_bools, parse_ids, parse_timestamps
from embed_pipeline.lib.text import clean_text

LOG_COLUMNS = ["query", "passage_id", "position", "clicked", "dwell_seconds", "session_id", "timestamp"]


QUARANTINE_COLUMNS = ["file", "line", "reason", "query", "passage_id"]


@dataclass(frozen=True)
class LogPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + support (distinct satisfied sessions)
    skip_above: pd.DataFrame  # query, passage_id, kind='skip_above': shown above a satisfied click, not clicked
    counts: RuleCounts  # rows_in = impressions read; dropped = rows or clicks removed per rule
    sessions: int  # distinct sessions in the log as read
    clicks: int  # clicks that survived the row rules (candidates for satisfied clicks)
    quarantine: pd.DataFrame = None  # QUARANTINE_COLUMNS: every impression set aside, with its 1-based row and reason
    clicks_read: int = 0  # impressions whose `clicked` parsed true, before the row rules

    @property
    def impressions_kept(self) -> int:
        return self.counts.rows_in - len(self.quarantine)


def read_search_logs(path: Path) -> pd.DataFrame:
    """The search-log file as a table; `InputError` in one line when it cannot be read at all
    (a folder, not Parquet, a missing column, no rows)."""
    path = Path(path)
    if path.is_dir() and path.suffix.lower() != ".parquet":
        raise InputError(f"{path}: search_logs is a folder; name a Parquet file (.parquet)")
    try:
        logs = read_table(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow, pandas and OS errors for a file that is not what it claims
        kind = "Parquet" if path.suffix.lower() == ".parquet" else path.suffix.lstrip(".").upper() or "a table"
        raise InputError(f"{path}: search logs cannot be read as {kind}: {type(exc).__name__}: "
                         f"{(str(exc).strip().splitlines() or [''])[0]}") from None
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        raise InputError(f"{path}: search logs lack column(s) {missing}; expected {LOG_COLUMNS}")
    if logs.empty:
        raise InputError(f"{path}: search logs have no rows (an empty export?); remove search_logs from the config "
                         "to train without clicks")
    return logs


def parse_search_logs(logs: pd.DataFrame, source: str = "search_logs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions with parsed values, quarantined rows with reasons) by the rules of lib/parsing.py.

    A row whose `clicked`, `position` or `timestamp` cannot be parsed, or whose `passage_id` or
    `session_id` is blank, is quarantined with the first reason that applies. A column in which no
    value parses at all is an `InputError` naming `source`, the column and its first value (a
    whole column in a format we do not read is a wrong export, not bad rows).
    """
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        raise InputError(f"{source}: search logs lack column(s) {missing}; expected {LOG_COLUMNS}")
    frame = logs[LOG_COLUMNS].reset_index(drop=True).copy()
    frame["line"] = np.arange(1, len(frame) + 1)  # 1-based row, as the Parquet row number
    raw = frame.copy()
    frame["query"] = frame["query"].map(lambda v: clean_text("" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v))
    frame["passage_id"] = parse_ids(frame["passage_id"])
    frame["session_id"] = parse_ids(frame["session_id"])
    clicked = parse_bools(frame["clicked"])
    timestamp = parse_timestamps(frame["timestamp"])
    position = pd.to_numeric(frame["position"].map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    dwell = pd.to_numeric(frame["dwell_seconds"].map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    if len(frame):
        for column, parsed in (("clicked", clicked), ("timestamp", timestamp), ("position", position)):
            if parsed.isna().all():
                raise InputError(f"{source}: column `{column}`: no value parses (row 1: {raw[column].iloc[0]!r}); "
                                 f"{_RULE_HINTS[column]}")
    reasons = pd.Series("", index=frame.index, dtype=object)
    for bad, why in ((frame["session_id"] == "", lambda i: "missing session_id"),
                     (position.isna(), lambda i: f"position {raw['position'].iloc[i]!r} is not a number"),
                     (timestamp.isna(), lambda i: f"timestamp {raw['timestamp'].iloc[i]!r} is not ISO 8601 or epoch seconds"),
                     (clicked.isna(), lambda i: f"clicked {raw['clicked'].iloc[i]!r} is not a boolean"),
                     (frame["passage_id"] == "", lambda i: "missing passage_id")):
        for i in np.flatnonzero(bad.to_numpy(dtype=bool)):
            reasons.iloc[i] = why(i)
    frame["clicked"] = clicked.fillna(False).astype(bool)
    frame["timestamp"] = timestamp
    frame["position"] = position
    frame["dwell_seconds"] = dwell.fillna(0.0)
    bad = reasons != ""
    quarantine = _quarantine_rows(raw[bad], reasons[bad], source)
    return frame[~bad].reset_index(drop=True), quarantine


_RULE_HINTS = {
    "clicked": "booleans are true/false, yes/no, y/n, t/f or 1/0",
    "timestamp": "timestamps are ISO 8601 (2026-01-31T10:00:00Z) or Unix epoch seconds",
    "position": "positions are numbers (1 = top)",
}


def _quarantine_rows(rows: pd.DataFrame, reasons: pd.Series, source: str) -> pd.DataFrame:
    return pd.DataFrame({"file": Path(source).name, "line": rows["line"].astype("int64"), "reason": reasons.astype(str),
                         "query": rows["query"].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)),
                         "passage_id": rows["passage_id"].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))},
                        columns=QUARANTINE_COLUMNS).reset_index(drop=True)


def pairs_from_search_logs(logs: pd.DataFrame, known_ids: set[str], rules: SearchLogRules,
                           source: str = "search_logs") -> LogPairs:
    """Satisfied clicks -> positives; results skipped above them -> candidate negatives.

    A click is satisfied when its dwell is at least `min_dwell_seconds` and it is not a pogo-stick
    (the user came back within `pogo_stick_seconds` and clicked another result of the same query in
    the same session). A (query, passage) becomes a pair when at least `min_sessions` distinct
    sessions had a satisfied click on it. Skip-above negatives (Joachims 2005) are results shown
    above a satisfied click in the same session and not clicked; one that is a satisfied click in
    another session is not kept (users disagree; it is no negative). They are candidates only:
    the mining stage decides whether to use them.

    Values are parsed by lib/parsing.py's rules (`parse_search_logs`); rows that cannot be are
    `unparseable_rows`. Row rules, applied in order to the parsed impressions, each counted:
    `query_too_short` (fewer than `min_query_chars` characters after cleaning: empty or
    near-empty queries carry no intent), `query_too_long` (more than `max_query_chars`: pasted
    text, not a query), `unknown_passage_id` (not in the corpus). Every impression these set
    aside is in `quarantine` with its row and reason (rows_in == kept + quarantined). Then per
    click: `pogo_stick_clicks`, `short_dwell_clicks` (dwell below `min_dwell_seconds`, or
    missing), and per (query, passage): `pairs_below_min_sessions`. No impression left (every
    passage unknown, every query too short) is an empty result with these counts, not an error.
    """
    frame, quarantined = parse_search_logs(logs, source)
    dropped: dict[str, int] = {"unparseable_rows": len(quarantined)}
    clicks_read = int(frame["clicked"].sum())
    set_aside = [quarantined]
    frame["key"] = frame["query"].str.casefold()

    def drop(mask: pd.Series, rule: str, reason) -> None:
        nonlocal frame
        mask = mask.astype(bool)
        dropped[rule] = int(mask.sum())
        if mask.any():
            rows = frame[mask]
            set_aside.append(_quarantine_rows(rows, rows.apply(reason, axis=1), source))
        frame = frame[~mask]

    drop(frame["query"].str.len() < rules.min_query_chars, "query_too_short",
         lambda r: f"query too short ({len(r['query'])} chars < min_query_chars {rules.min_query_chars})")
    drop(frame["query"].str.len() > rules.max_query_chars, "query_too_long",
         lambda r: f"query too long ({len(r['query'])} chars > max_query_chars {rules.max_query_chars})")
    drop(~frame["passage_id"].isin(known_ids), "unknown_passage_id", lambda r: "unknown passage id (not in the corpus)")
    quarantine = pd.concat([q for q in set_aside if len(q)], ignore_index=True) if any(len(q) for q in set_aside) \
        else pd.DataFrame(columns=QUARANTINE_COLUMNS).astype({"line": "int64"})
    quarantine = quarantine.sort_values("line", kind="stable").reset_index(drop=True)

    clicks = frame[frame["clicked"]].sort_values(["session_id", "timestamp"])
    next_clicked = clicks.groupby(["session_id", "key"])["passage_id"].shift(-1)
    next_click_elsewhere = next_clicked.notna() & (next_clicked != clicks["passage_id"])
    pogo = next_click_elsewhere & (clicks["dwell_seconds"] < rules.pogo_stick_seconds)
    short = ~pogo & (clicks["dwell_seconds"] < rules.min_dwell_seconds)
    satisfied = clicks[~pogo & ~short]
    support = satisfied.groupby(["key", "passage_id"])["session_id"].nunique().rename("support")
    if satisfied.empty:  # nothing to pair or to skip above (pandas' joins on empty groupings are not safe)
        pairs = pd.DataFrame(columns=PAIR_COLUMNS + ["support"])
        skip_above = pd.DataFrame(columns=["query", "passage_id", "kind"])
        is_positive = pd.Series(dtype=bool)
    else:
        pairs, skip_above, is_positive = _pairs_and_skips(frame, satisfied, support, rules)

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
    assert counts.rows_in == len(frame) + len(quarantine), (counts.rows_in, len(frame), len(quarantine))
    return LogPairs(pairs.reset_index(drop=True), skip_above.reset_index(drop=True), counts,
                    sessions=int(logs["session_id"].nunique()), clicks=int(len(clicks)), quarantine=quarantine,
                    clicks_read=clicks_read)


def _pairs_and_skips(frame: pd.DataFrame, satisfied: pd.DataFrame, support: pd.Series, rules: SearchLogRules):
    """(pairs, skip-above negatives, which skipped results were satisfied elsewhere) from satisfied clicks."""
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
    return pairs, skip_above, is_positive
