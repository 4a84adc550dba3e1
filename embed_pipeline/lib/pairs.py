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

from embed_pipeline.lib.config import LabelledSet, SearchLogRules, SourceQuotas, SourceWeights
from embed_pipeline.lib.io import InputError, atomic_path, read_jsonl, read_jsonl_numbered, read_qrels, read_table
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
    """Rows of a pairs table with a `row` label each; unreadable rows go to `rejected` instead.

    JSONL and CSV/TSV are read line by line so one bad line (invalid UTF-8, broken JSON, a wrong
    number of fields, a row missing `query` or `passage_id`) is quarantined, not fatal. A file
    whose header lacks a required column is an input error (every row would be rejected).
    Blank lines are not rows: they are neither accepted nor quarantined.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        numbered, bad = read_jsonl_numbered(path)
        rejected += [{"row": f"line {n}", "reason": reason, "stage": "read"} for n, reason in bad]
        rows, labels = [row for _, row in numbered], [f"line {n}" for n, _ in numbered]
    elif suffix in (".csv", ".tsv"):
        rows, labels = _read_delimited(Path(path), "\t" if suffix == ".tsv" else ",", rejected)
    else:
        raw = read_table(Path(path))
        rows, labels = raw.to_dict("records"), [str(i + 1) for i in range(len(raw))]
    keep_rows, keep_labels = [], []
    for row, label in zip(rows, labels, strict=True):
        missing = [c for c in ("query", "passage_id") if c not in row]
        if missing:
            rejected.append({"row": label, "reason": f"missing field(s) {missing}", "stage": "read",
                             "query": str(row.get("query", "")), "passage_id": str(row.get("passage_id", ""))})
        else:
            keep_rows.append(row)
            keep_labels.append(label)
    raw = pd.DataFrame(keep_rows)
    columns = ["query", "passage_id"] + [c for c in ("segment", "source") if c in raw.columns]
    raw = raw.reindex(columns=columns)
    raw["query_id"] = [label.replace(" ", "") for label in keep_labels]
    raw["row"] = keep_labels
    return raw


def _read_delimited(path: Path, sep: str, rejected: list[dict]) -> tuple[list[dict], list[str]]:
    import csv

    rows: list[dict] = []
    labels: list[str] = []
    header: list[str] | None = None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                if header is None:
                    raise InputError(f"{path}: the header line is not valid UTF-8") from None
                rejected.append({"row": f"line {number}", "reason": f"invalid UTF-8: {exc.reason}", "stage": "read"})
                continue
            if not line.strip():
                continue
            fields = next(csv.reader([line.rstrip("\r\n")], delimiter=sep))
            if header is None:
                header = [f.strip() for f in fields]
                if not {"query", "passage_id"} <= set(header):
                    raise InputError(f"{path}: a pairs table needs columns `query` and `passage_id`; found {header}")
                continue
            if len(fields) != len(header):
                rejected.append({"row": f"line {number}", "reason": f"malformed line: {len(fields)} fields, header has {len(header)}",
                                 "stage": "read"})
                continue
            rows.append(dict(zip(header, fields, strict=True)))
            labels.append(f"line {number}")
    return rows, labels


def _read_beir(queries_path: Path, qrels_path: Path, rejected: list[dict]) -> pd.DataFrame:
    rows, bad = read_jsonl(queries_path)
    rejected += [{"row": f"queries line {n}", "reason": reason, "stage": "read"} for n, reason in bad]
    queries = pd.DataFrame(rows)
    if queries.empty or not {"_id", "text"} <= set(queries.columns):
        raise InputError(f"{queries_path}: BEIR queries need `_id` and `text`")
    queries["_id"] = queries["_id"].astype(str)
    queries = queries.drop_duplicates("_id").set_index("_id")
    segments = queries["metadata"].map(lambda m: m.get("segment") if isinstance(m, dict) else None) if "metadata" in queries else None
    sources = queries["metadata"].map(lambda m: m.get("source") if isinstance(m, dict) else None) if "metadata" in queries else None
    bad_qrels: list[tuple[int, str]] = []
    qrels = read_qrels(qrels_path, bad_qrels)
    rejected += [{"row": f"qrels line {n}", "reason": reason, "stage": "read"} for n, reason in bad_qrels]
    table = pd.DataFrame(
        {
            "row": [f"qrels line {n}" for n in qrels["line"]],
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
    if sources is not None and sources.notna().any():  # eval reports slice by query source (issue 5)
        table["source"] = table["query_id"].map(sources).fillna("").astype(str)
    return table.reset_index(drop=True)


def relevance_map(pairs: pd.DataFrame) -> dict[str, set[str]]:
    """query_id -> set of relevant passage ids."""
    return {qid: set(group) for qid, group in pairs.groupby("query_id")["passage_id"]}


# --- the merged training set ------------------------------------------------------------------


@dataclass(frozen=True)
class MergedPairs:
    pairs: pd.DataFrame  # PAIR_COLUMNS + positive_text ('' = the passage itself) + weight
    counts: RuleCounts
    per_source: dict[str, int]
    per_source_in: dict[str, int]


def merge_pairs(sources: list[pd.DataFrame], max_synthetic_share: float, seed: int,
                quotas: SourceQuotas | None = None, weights: SourceWeights | None = None) -> MergedPairs:
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
    Each row gets `weight` = its source's weight (a per-row loss or sampling weight for trainers
    that use one; 1.0 everywhere by default).
    """
    quotas = quotas or SourceQuotas()
    weights = weights or SourceWeights()
    columns = PAIR_COLUMNS + ["positive_text"]
    frame = pd.concat([s.reindex(columns=columns) for s in sources if len(s)], ignore_index=True)
    if frame.empty:
        empty = pd.DataFrame(columns=columns + ["weight"])
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
    out["weight"] = out["source"].map(lambda src: float(getattr(weights, src)))
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


def plot_length_histogram(table: pd.DataFrame, target: Path) -> Path:
    """A small grouped bar chart (PNG) of `length_histogram`'s table: query words x source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6), dpi=90)
    width = 0.8 / max(1, len(table.columns))
    positions = np.arange(len(table.index))
    for i, source in enumerate(table.columns):
        ax.bar(positions + i * width, table[source].to_numpy(), width, label=str(source))
    ax.set_xticks(positions + width * (len(table.columns) - 1) / 2, [str(b) for b in table.index], fontsize=8)
    ax.set_xlabel("query length (words)", fontsize=8)
    ax.set_ylabel("pairs", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(target)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(target)
