"""Click-log rules, curated-set validation and the merge: every rule with a drop and a keep case."""

import json

import pandas as pd
import pytest

from embed_pipeline.lib.config import LabelledSet, SearchLogRules, SourceQuotas
from embed_pipeline.lib.io import InputError
from embed_pipeline.lib.click_logs import pairs_from_search_logs
from embed_pipeline.lib.labelled import load_labelled_pairs
from embed_pipeline.lib.pairs import length_histogram, merge_pairs
from embed_pipeline.lib.plots import query_lengths_png

KNOWN = {"chain-lube", "chain-clean", "chain-wear", "brake-bleed", "brake-pads"}
T0 = pd.Timestamp("2026-01-01T10:00:00Z")


def impression(query, pid, position, session, seconds=0, clicked=False, dwell=None):
    return {"query": query, "passage_id": pid, "position": position, "clicked": clicked,
            "dwell_seconds": dwell, "session_id": session, "timestamp": T0 + pd.Timedelta(seconds=seconds)}


def run(rows, **rules):
    return pairs_from_search_logs(pd.DataFrame(rows), KNOWN, SearchLogRules(**rules))


def positives(result):
    return set(zip(result.pairs["query"].str.casefold(), result.pairs["passage_id"], strict=True))


def test_dwell_threshold_drops_short_clicks_and_keeps_long_ones():
    result = run([impression("oil my chain", "chain-lube", 1, "s1", clicked=True, dwell=29.0),
                  impression("clean my chain", "chain-clean", 1, "s2", clicked=True, dwell=30.0),
                  impression("bleed my brakes", "brake-bleed", 1, "s3", clicked=True, dwell=None)])
    assert positives(result) == {("clean my chain", "chain-clean")}
    assert result.counts.dropped["short_dwell_clicks"] == 2  # 29 s and a missing dwell
    assert result.counts.rows_in == 3 and result.sessions == 3 and result.clicks == 3


def test_pogo_stick_click_is_dropped_but_a_long_click_before_another_is_kept():
    rows = [
        # s1: quick return (5 s) then another click: pogo-stick on chain-wear, satisfied on chain-lube
        impression("chain oil", "chain-wear", 1, "s1", 0, clicked=True, dwell=5.0),
        impression("chain oil", "chain-lube", 2, "s1", 20, clicked=True, dwell=120.0),
        # s2: a long read, then another click: both satisfied
        impression("chain oil", "chain-clean", 1, "s2", 0, clicked=True, dwell=45.0),
        impression("chain oil", "chain-lube", 2, "s2", 60, clicked=True, dwell=90.0),
    ]
    result = run(rows, min_dwell_seconds=30.0, pogo_stick_seconds=10.0)
    assert positives(result) == {("chain oil", "chain-lube"), ("chain oil", "chain-clean")}
    assert result.counts.dropped["pogo_stick_clicks"] == 1
    lube = result.pairs.set_index("passage_id").loc["chain-lube", "support"]
    assert lube == 2


def test_a_quick_second_click_on_the_same_result_is_not_a_pogo_stick():
    rows = [impression("chain oil", "chain-lube", 1, "s1", 0, clicked=True, dwell=4.0),   # double click, then a long read
            impression("chain oil", "chain-lube", 1, "s1", 4, clicked=True, dwell=95.0)]
    result = run(rows, min_dwell_seconds=30.0, pogo_stick_seconds=10.0)
    assert result.counts.dropped["pogo_stick_clicks"] == 0
    assert positives(result) == {("chain oil", "chain-lube")}


def test_min_sessions_drops_single_session_pairs_and_keeps_supported_ones():
    rows = [impression("Chain  Lube", "chain-lube", 1, "s1", clicked=True, dwell=60.0),
            impression("chain lube", "chain-lube", 1, "s2", clicked=True, dwell=60.0),  # same query after normalisation
            impression("brake pads", "brake-pads", 1, "s3", clicked=True, dwell=60.0)]
    result = run(rows, min_sessions=2)
    assert positives(result) == {("chain lube", "chain-lube")}
    assert result.counts.dropped["pairs_below_min_sessions"] == 1


def test_query_length_rules_drop_near_empty_and_very_long_queries():
    long_query = "x" * 301
    rows = [impression(" a ", "chain-lube", 1, "s1", clicked=True, dwell=60.0),
            impression("abc", "chain-lube", 1, "s2", clicked=True, dwell=60.0),
            impression(long_query, "chain-lube", 1, "s3", clicked=True, dwell=60.0),
            impression("y" * 300, "chain-wear", 1, "s4", clicked=True, dwell=60.0)]
    result = run(rows)
    assert positives(result) == {("abc", "chain-lube"), ("y" * 300, "chain-wear")}
    assert result.counts.dropped["query_too_short"] == 1
    assert result.counts.dropped["query_too_long"] == 1


def test_unknown_passages_and_unparseable_rows_are_dropped_and_counted():
    rows = [impression("oil chain", "not-in-corpus", 1, "s1", clicked=True, dwell=60.0),
            impression("oil chain", "chain-lube", 1, "s2", clicked=True, dwell=60.0),
            {**impression("wear gauge", "chain-wear", 1, "s3", clicked=True, dwell=60.0), "timestamp": "not a time"}]
    result = run(rows)
    assert positives(result) == {("oil chain", "chain-lube")}
    assert result.counts.dropped["unknown_passage_id"] == 1
    assert result.counts.dropped["unparseable_rows"] == 1
    assert list(result.quarantine["reason"]) == ["unknown passage id (not in the corpus)", "timestamp 'not a time' is not ISO 8601 or epoch seconds"]


def test_skip_above_keeps_skipped_results_above_a_satisfied_click_only():
    rows = [
        impression("spongy brake lever", "brake-pads", 1, "s1"),  # shown above, skipped: negative
        impression("spongy brake lever", "brake-bleed", 2, "s1", 5, clicked=True, dwell=80.0),
        impression("spongy brake lever", "chain-wear", 3, "s1"),  # below the click: not a negative
        # s2: chain-lube shown above a click but satisfied in s3: users disagree, not a negative
        impression("degrease chain", "chain-lube", 1, "s2"),
        impression("degrease chain", "chain-clean", 2, "s2", 5, clicked=True, dwell=80.0),
        impression("degrease chain", "chain-lube", 1, "s3", clicked=True, dwell=80.0),
    ]
    result = run(rows)
    skip = set(zip(result.skip_above["query"], result.skip_above["passage_id"], strict=True))
    assert skip == {("spongy brake lever", "brake-pads")}
    assert set(result.skip_above["kind"]) == {"skip_above"}
    assert result.counts.dropped["skip_above_also_satisfied"] == 1


def test_search_logs_missing_columns_is_an_input_error():
    with pytest.raises(InputError, match="dwell_seconds"):
        pairs_from_search_logs(pd.DataFrame([{"query": "q", "passage_id": "p"}]), KNOWN, SearchLogRules())


# --- curated pairs -----------------------------------------------------------------------------


def test_broken_jsonl_quarantines_every_bad_row_with_a_reason(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = [{"query": "how to oil a chain", "passage_id": "chain-lube"},
            {"query": "replace worn brake pads", "passage_id": "brake-pads"}]
    lines = [json.dumps(good[0]).encode(), b"",  # blank line: not a row
             b'{"query": "caf\xe9 bike", "passage_id": "chain-lube"}',  # latin-1 byte: bad UTF-8
             b'{"query": "broken json", ',  # malformed
             json.dumps({"query": "no passage column"}).encode(),  # missing field
             json.dumps({"query": "bleed brakes", "passage_id": "brake-bleeding"}).encode(),  # unknown id
             json.dumps({"query": "   ", "passage_id": "chain-lube"}).encode(),  # empty query
             json.dumps({"query": "How to  OIL a chain", "passage_id": "chain-lube"}).encode(),  # duplicate after normalising
             json.dumps(good[1]).encode(), b"   "]
    path.write_bytes(b"\n".join(lines) + b"\n")
    loaded = load_labelled_pairs(LabelledSet(pairs=path), KNOWN)
    assert loaded.rows_in == 8 == len(loaded.pairs) + len(loaded.quarantine)
    assert list(loaded.pairs["query"]) == ["how to oil a chain", "replace worn brake pads"]
    assert set(loaded.quarantine["file"]) == {"pairs.jsonl"}
    reasons = dict(zip(loaded.quarantine["line"], loaded.quarantine["reason"], strict=True))
    assert list(reasons) == [3, 4, 5, 6, 7, 8]  # file lines, in file order
    assert reasons[3].startswith("invalid UTF-8")
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "missing field(s) ['passage_id']"
    assert reasons[6] == "unknown passage id"
    assert reasons[7] == "empty query"
    assert reasons[8] == "duplicate pair"


def test_broken_csv_quarantines_bad_lines_and_keeps_good_ones(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"query,passage_id\n"
                     b"clean a chain,chain-clean\n"
                     b"\n"
                     b"too,many,fields\n"
                     b"\xff\xfe bad bytes,chain-lube\n"
                     b"chain stretch,chain-wear\n")
    loaded = load_labelled_pairs(LabelledSet(pairs=path), KNOWN)
    assert loaded.rows_in == 4 == len(loaded.pairs) + len(loaded.quarantine)
    assert set(loaded.pairs["passage_id"]) == {"chain-clean", "chain-wear"}
    assert loaded.quarantine["line"].tolist() == [4, 5]
    assert loaded.quarantine.set_index("line").loc[4, "reason"].startswith("malformed line")


def test_pairs_table_without_required_columns_is_an_input_error(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,doc\nclean a chain,chain-clean\n")
    with pytest.raises(InputError, match="passage_id"):
        load_labelled_pairs(LabelledSet(pairs=path), KNOWN)


def test_beir_broken_qrels_and_queries_are_quarantined_by_line(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "q1", "text": "oil chain"}) + "\n\n{oops\n")
    (tmp_path / "qrels.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n"
                                         b"q1\tchain-lube\t1\n"
                                         b"\n"
                                         b"q1\tchain-wear\t0\n"  # judged not relevant: not a pair, not an error
                                         b"q9\tchain-wear\t1\n"  # unknown query id
                                         b"q1\n"  # one field
                                         b"q1\tchain-clean\thigh\n"  # non-numeric score
                                         b"q1\tbrake-pads\t\xff\n")  # bad UTF-8
    loaded = load_labelled_pairs(LabelledSet(queries=tmp_path / "q.jsonl", qrels=tmp_path / "qrels.tsv"), KNOWN)
    assert loaded.rows_in == len(loaded.pairs) + len(loaded.quarantine) == 6
    assert list(loaded.pairs["passage_id"]) == ["chain-lube"]
    reasons = {(f, n): r for f, n, r in loaded.quarantine[["file", "line", "reason"]].itertuples(index=False)}
    assert reasons[("q.jsonl", 3)].startswith("invalid JSON")
    assert reasons[("qrels.tsv", 5)] == "unknown query id"
    assert reasons[("qrels.tsv", 6)].startswith("malformed qrels line")
    assert reasons[("qrels.tsv", 7)] == "non-numeric score 'high'"
    assert reasons[("qrels.tsv", 8)].startswith("invalid UTF-8")


# --- merge -------------------------------------------------------------------------------------


def frame(rows, source):
    return pd.DataFrame([{"query": q, "passage_id": p, "source": source} for q, p in rows])


def test_merge_dedups_after_normalisation_and_curated_wins_conflicts():
    curated = frame([("oil a chain", "chain-lube")], "curated")
    click = frame([("Oil a  chain", "chain-lube"), ("oil a chain", "chain-clean"), ("brake pads", "brake-pads")], "click")
    synthetic = frame([("brake pads", "brake-bleed"), ("chain stretch", "chain-wear")], "synthetic")
    merged = merge_pairs([curated, click, synthetic], max_synthetic_share=1.0, seed=0)
    got = set(zip(merged.pairs["query"], merged.pairs["passage_id"], merged.pairs["source"], strict=True))
    assert got == {("oil a chain", "chain-lube", "curated"), ("brake pads", "brake-pads", "click"),
                   ("chain stretch", "chain-wear", "synthetic")}
    assert merged.counts.dropped["exact_duplicates"] == 1
    assert merged.counts.dropped["source_conflicts"] == 2  # click's chain-clean, synthetic's brake-bleed
    assert merged.per_source_in == {"click": 3, "synthetic": 2, "curated": 1}


def test_merge_synthetic_budget_and_quotas():
    curated = frame([(f"real query {i}", "chain-lube") for i in range(4)], "curated")
    synthetic = frame([(f"made up query {i}", "chain-wear") for i in range(10)], "synthetic")
    merged = merge_pairs([curated, synthetic], max_synthetic_share=0.5, seed=0)
    assert merged.per_source == {"curated": 4, "synthetic": 4}
    assert merged.counts.dropped["synthetic_over_budget"] == 6
    quota = merge_pairs([curated, synthetic], 1.0, 0, SourceQuotas(synthetic=3, curated=2))
    assert quota.per_source == {"curated": 2, "synthetic": 3}
    assert quota.counts.dropped["over_quota_synthetic"] == 7 and quota.counts.dropped["over_quota_curated"] == 2
    assert "weight" not in quota.pairs  # the trainer weighs every row alike; no column that pretends otherwise
    unlimited = merge_pairs([curated, synthetic], 1.0, 0)
    assert unlimited.per_source == {"curated": 4, "synthetic": 10}


def test_length_histogram_buckets_queries_by_words():
    pairs = frame([("oil", "a"), ("oil a chain", "b")], "click")
    pairs = pd.concat([pairs, frame([("a much longer synthetic sentence taken from a passage", "c")], "synthetic")])
    table = length_histogram(pairs)
    assert table.loc["1-2", "click"] == 1 and table.loc["3-4", "click"] == 1 and table.loc["8-11", "synthetic"] == 1
    assert int(table.to_numpy().sum()) == 3


def test_length_histogram_plot_is_a_png():
    pairs = frame([("oil a chain", "b"), ("how do I true a wheel at home", "c")], "curated")
    assert query_lengths_png(length_histogram(pairs))[:8] == b"\x89PNG\r\n\x1a\n"


def test_rules_reject_impossible_settings():

    with pytest.raises(ValueError, match="min_sessions"):
        SearchLogRules(min_sessions=0)
    with pytest.raises(ValueError, match="min_query_chars"):
        SearchLogRules(min_query_chars=50, max_query_chars=10)
