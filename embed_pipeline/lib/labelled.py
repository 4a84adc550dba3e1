"""Labelled sets (curated pairs, the eval set): read and validated row by row, bad rows quarantined.

Two layouts: BEIR (`queries.jsonl` + a qrels TSV) or one table (Parquet/CSV/TSV/JSONL with
`query` and `passage_id`). Every rejected row keeps its file, its line number (1-based, as an
editor shows it; for Parquet, the 1-based row) and its reason, and `rows_in == accepted +
quarantined` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.lib.config import LabelledSet
from embed_pipeline.lib.io import InputError, decoded_lines, read_jsonl_numbered, read_qrels, read_table
from embed_pipeline.lib.parsing import parse_ids
from embed_pipeline.lib.text import clean_text

QUARANTINE_COLUMNS = ["file", "line", "reason", "query_id", "query", "passage_id"]


@dataclass(frozen=True)
class LabelledPairs:
    """Accepted rows (query_id, query, passage_id, plus `segment` when given) and quarantined ones."""

    pairs: pd.DataFrame
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS: file (name), line (1-based), reason, query_id, query, passage_id
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
    table["query"] = table["query"].map(lambda v: clean_text(_text(v))).astype(object)
    table["passage_id"] = parse_ids(table["passage_id"]).map(clean_text).astype(object)
    reasons = pd.Series("", index=table.index, dtype=object)
    reasons[~table["passage_id"].isin(known_ids)] = "unknown passage id"
    reasons[table["passage_id"] == ""] = "missing passage id"
    reasons[table["query"] == ""] = "empty query"
    keys = table["query"].str.casefold() + "\t" + table["passage_id"]
    reasons[keys.duplicated(keep="first") & (reasons == "")] = "duplicate pair"
    bad = table[reasons != ""].assign(reason=reasons[reasons != ""])
    rejected += bad.to_dict("records")
    accepted = table[reasons == ""].drop(columns=["file", "line"]).reset_index(drop=True)
    quarantine = pd.DataFrame(rejected).reindex(columns=QUARANTINE_COLUMNS)
    text_columns = [c for c in QUARANTINE_COLUMNS if c != "line"]
    quarantine[text_columns] = quarantine[text_columns].fillna("").astype(str)
    quarantine = quarantine.astype({"line": "int64"}).sort_values(["file", "line"], kind="stable").reset_index(drop=True)
    rows_in = len(table) + sum(1 for r in rejected if r.get("stage") == "read")
    assert rows_in == len(accepted) + len(quarantine), (rows_in, len(accepted), len(quarantine))
    return LabelledPairs(accepted, quarantine, rows_in)


def _text(value) -> str:
    """A cell as text: missing (None, NaN) is empty, anything else its string form."""
    return "" if value is None or value is pd.NA or (isinstance(value, float) and value != value) else str(value)


def _read_pairs_table(path: Path, rejected: list[dict]) -> pd.DataFrame:
    """Rows of a pairs table with their `file` and `line`; unreadable rows go to `rejected` instead.

    JSONL and CSV/TSV are read line by line so one bad line (invalid UTF-8, broken JSON, a wrong
    number of fields, a row missing `query` or `passage_id`) is quarantined, not fatal. A file
    whose header lacks a required column is an input error (every row would be rejected).
    Blank lines are not rows: they are neither accepted nor quarantined.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        numbered, bad = read_jsonl_numbered(path)
        rejected += [{"file": path.name, "line": n, "reason": reason, "stage": "read"} for n, reason in bad]
        rows, lines = [row for _, row in numbered], [n for n, _ in numbered]
    elif suffix in (".csv", ".tsv"):
        rows, lines = _read_delimited(path, "\t" if suffix == ".tsv" else ",", rejected)
    else:
        raw = read_table(path)
        if not {"query", "passage_id"} <= set(raw.columns):
            raise InputError(f"{path}: a pairs table needs columns `query` and `passage_id`; found {list(raw.columns)}")
        rows, lines = raw.to_dict("records"), list(range(1, len(raw) + 1))
    # A pairs table has no query ids: a row's position names its query ("line7"; Parquet: "7").
    id_prefix = "" if suffix == ".parquet" else "line"
    keep_rows, keep_lines = [], []
    for row, line in zip(rows, lines, strict=True):
        missing = [c for c in ("query", "passage_id") if c not in row]
        if missing:
            rejected.append({"file": path.name, "line": line, "reason": f"missing field(s) {missing}", "stage": "read",
                             "query": str(row.get("query", "")), "passage_id": str(row.get("passage_id", ""))})
        else:
            keep_rows.append(row)
            keep_lines.append(line)
    if rows and not keep_rows and all("query" not in r and "passage_id" not in r for r in rows):
        raise InputError(f"{path}: no row has the fields `query` and `passage_id` (line {lines[0]} has {sorted(rows[0])})")
    raw = pd.DataFrame(keep_rows)
    columns = ["query", "passage_id"] + [c for c in ("segment", "source") if c in raw.columns]
    raw = raw.reindex(columns=columns)
    raw["query_id"] = [f"{id_prefix}{line}" for line in keep_lines]
    raw["file"] = path.name
    raw["line"] = keep_lines
    return raw


def _read_delimited(path: Path, sep: str, rejected: list[dict]) -> tuple[list[dict], list[int]]:
    import csv

    rows: list[dict] = []
    lines: list[int] = []
    header: list[str] | None = None
    for number, line, problem in decoded_lines(path):
        if line is None:
            if header is None:
                raise InputError(f"{path}: the header line is not valid UTF-8")
            rejected.append({"file": path.name, "line": number, "reason": problem, "stage": "read"})
            continue
        fields = next(csv.reader([line], delimiter=sep))
        if header is None:
            header = [f.strip() for f in fields]
            if not {"query", "passage_id"} <= set(header):
                raise InputError(f"{path}: a pairs table needs columns `query` and `passage_id`; found {header}")
            continue
        if len(fields) != len(header):
            rejected.append({"file": path.name, "line": number, "stage": "read",
                             "reason": f"malformed line: {len(fields)} fields, header has {len(header)}"})
            continue
        rows.append(dict(zip(header, fields, strict=True)))
        lines.append(number)
    return rows, lines


def _read_beir(queries_path: Path, qrels_path: Path, rejected: list[dict]) -> pd.DataFrame:
    numbered, bad = read_jsonl_numbered(queries_path)
    rejected += [{"file": queries_path.name, "line": n, "reason": reason, "stage": "read"} for n, reason in bad]
    rows = []
    first_line: dict[str, int] = {}
    for number, row in numbered:
        if "_id" not in row or "text" not in row:
            rejected.append({"file": queries_path.name, "line": number, "stage": "read",
                             "reason": f"missing field(s) {[c for c in ('_id', 'text') if c not in row]}"})
            continue
        qid = parse_ids(pd.Series([row["_id"]], dtype=object)).iloc[0]
        if not qid:
            rejected.append({"file": queries_path.name, "line": number, "reason": "missing query id", "stage": "read",
                             "query": str(row.get("text", ""))})
            continue
        if qid in first_line:  # the first text wins; the second is set aside, never silently dropped
            rejected.append({"file": queries_path.name, "line": number, "stage": "read", "query_id": qid,
                             "query": str(row.get("text", "")),
                             "reason": f"duplicate query id {qid!r} (first on line {first_line[qid]})"})
            continue
        first_line[qid] = number
        rows.append({**row, "_id": qid})
    if not rows:
        raise InputError(f"{queries_path}: no readable BEIR query (each line needs `_id` and `text`"
                         + (f"; first problem: line {rejected[-1]['line']}: {rejected[-1]['reason']}" if rejected else "") + ")")
    queries = pd.DataFrame(rows).set_index("_id")
    segments = queries["metadata"].map(lambda m: m.get("segment") if isinstance(m, dict) else None) if "metadata" in queries else None
    sources = queries["metadata"].map(lambda m: m.get("source") if isinstance(m, dict) else None) if "metadata" in queries else None
    bad_qrels: list[tuple[int, str]] = []
    qrels = read_qrels(qrels_path, bad_qrels)
    rejected += [{"file": qrels_path.name, "line": n, "reason": reason, "stage": "read"} for n, reason in bad_qrels]
    table = pd.DataFrame(
        {
            "file": qrels_path.name,
            "line": qrels["line"].astype("int64"),
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
    if sources is not None and sources.notna().any():  # eval reports slice by query source (click, curated, synthetic)
        table["source"] = table["query_id"].map(sources).fillna("").astype(str)
    return table.reset_index(drop=True)


def relevance_map(pairs: pd.DataFrame) -> dict[str, set[str]]:
    """query_id -> set of relevant passage ids."""
    return {qid: set(group) for qid, group in pairs.groupby("query_id")["passage_id"]}


