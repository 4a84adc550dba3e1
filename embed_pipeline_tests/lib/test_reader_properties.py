"""Property: the readers of search logs, BEIR queries and qrels raise nothing but `InputError` on
whatever they are fed, and never lose a row without a quarantine entry giving its reason."""

import json
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed_pipeline.lib.click_logs import LOG_COLUMNS, pairs_from_search_logs, read_search_logs
from embed_pipeline.lib.config import LabelledSet, SearchLogRules
from embed_pipeline.lib.io import InputError
from embed_pipeline.lib.labelled import load_labelled_pairs
from embed_pipeline.lib.parsing import parse_bools, parse_timestamps

KNOWN = {"p1", "p2", "p3"}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(st.none(), st.text(max_size=12), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                 st.booleans())
clicked = st.one_of(junk, st.sampled_from([True, False, 1.0, 0.0, "Y", "N", "yes", "no", "true", "0", "1", " T "]))
stamp = st.one_of(junk, st.sampled_from(["2026-01-02T10:00:00Z", "2026-01-02 10:00", "2026-01-02", "02/01/2026"]),
                  st.integers(0, 2_000_000_000), st.integers(10**12, 2 * 10**12))
passage = st.one_of(junk, st.sampled_from(sorted(KNOWN) + ["nope"]))
query = st.one_of(junk, st.sampled_from(["oil my chain", "a", "x" * 400, "  spaced   query  "]))
row = st.fixed_dictionaries({"query": query, "passage_id": passage, "position": st.one_of(junk, st.integers(1, 5)),
                             "clicked": clicked, "dwell_seconds": st.one_of(junk, st.floats(0, 200)),
                             "session_id": st.one_of(junk, st.sampled_from(["s1", "s2"])), "timestamp": stamp})


@SETTINGS
@given(st.lists(row, max_size=25))
def test_search_log_reader_quarantines_every_row_it_does_not_keep(rows):
    frame = pd.DataFrame(rows, columns=LOG_COLUMNS)
    try:
        result = pairs_from_search_logs(frame, KNOWN, SearchLogRules())
    except InputError:
        return
    kept = result.counts.rows_in - len(result.quarantine)
    assert result.counts.rows_in == len(rows) and kept >= 0
    assert (result.quarantine["reason"].str.len() > 0).all()
    assert sorted(result.quarantine["line"]) == sorted(set(result.quarantine["line"]))  # one entry per row
    assert set(result.quarantine["line"]) <= set(range(1, len(rows) + 1))


@SETTINGS
@given(st.lists(row, min_size=1, max_size=10), st.sampled_from(["object", "string"]))
def test_search_logs_on_disk_read_or_fail_as_input_errors(rows, dtype):
    frame = pd.DataFrame(rows, columns=LOG_COLUMNS).astype(str if dtype == "string" else object)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "logs.parquet"
        try:
            frame.to_parquet(path, index=False)
        except Exception:  # noqa: BLE001 - pyarrow cannot store some mixed object columns: write them as text
            frame.astype(str).to_parquet(path, index=False)
        try:
            pairs_from_search_logs(read_search_logs(path), KNOWN, SearchLogRules())
        except InputError:
            pass


def test_the_documented_rules():
    assert parse_bools(pd.Series([1.0, 0.0, "Y", "n", None, "", "maybe", 2])).tolist()[:6] == [True, False, True, False, False, False]
    assert parse_bools(pd.Series(["maybe", 2])).isna().all()
    stamps = parse_timestamps(pd.Series(["2026-01-31T10:00:00Z", "31/01/2026", 1_700_000_000, 1_700_000_000_000, None], dtype=object))
    assert stamps.isna().tolist() == [False, True, False, False, True] and stamps[2] == stamps[3]


line = st.one_of(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30),
                 st.builds(lambda q, p, s: f"{q}\t{p}\t{s}", st.sampled_from(["q1", "q2", "q9", ""]),
                           st.sampled_from(["p1", "p2", "nope", ""]), st.sampled_from(["1", "2", "x", "", "1.5", "-1", "0"])))
query_line = st.one_of(st.text(max_size=20),
                       st.builds(lambda i, t: json.dumps({"_id": i, "text": t}), st.sampled_from(["q1", "q2", 3, None, "q1"]),
                                 st.sampled_from(["oil my chain", "", "brake pads"])),
                       st.just('{"_id": "q2"}'), st.just("[1, 2]"))


@SETTINGS
@given(st.lists(query_line, max_size=8), st.lists(line, max_size=12), st.binary(max_size=6))
def test_beir_reader_never_loses_a_qrels_row_without_a_reason(query_lines, qrels_lines, garbage):
    with tempfile.TemporaryDirectory() as folder:
        queries, qrels = Path(folder) / "queries.jsonl", Path(folder) / "qrels.tsv"
        queries.write_text("\n".join(query_lines) + "\n", encoding="utf-8")
        qrels.write_bytes(("\n".join(qrels_lines) + "\n").encode("utf-8") + garbage)
        try:
            loaded = load_labelled_pairs(LabelledSet(queries=queries, qrels=qrels), KNOWN)
        except InputError:
            return
        assert loaded.rows_in == len(loaded.pairs) + len(loaded.quarantine)
        assert (loaded.quarantine["reason"].str.len() > 0).all()
        # every qrels row is accepted, quarantined with a reason, or a judgement of non-relevance (score <= 0)
        rows, non_relevant = _qrels_rows(qrels.read_bytes())
        from_qrels = int((loaded.quarantine["file"] == "qrels.tsv").sum())
        assert rows - non_relevant == len(loaded.pairs) + from_qrels


def _qrels_rows(data: bytes) -> tuple[int, int]:
    """(rows, rows scored <= 0) as a qrels file holds them: non-blank lines (undecodable ones count), no header."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces = pieces[:-1]
    rows = non_relevant = 0
    first = True
    for raw in pieces:
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            rows += 1
            first = False
            continue
        if not text.strip():
            continue
        fields = [f.strip() for f in text.split("\t")]
        if first and fields[0].lower() in ("query-id", "query_id", "qid"):
            first = False
            continue
        first = False
        rows += 1
        if len(fields) > 2 and fields[0] and fields[1] and fields[2]:
            try:
                non_relevant += int(float(fields[2])) <= 0
            except (ValueError, OverflowError):
                pass
    return rows, non_relevant
