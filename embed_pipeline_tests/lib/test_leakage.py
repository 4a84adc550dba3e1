"""Leakage detection and the grouped eval split."""

import pandas as pd

from embed_pipeline.lib.leakage import (
    decontaminate,
    find_leaks,
    group_queries,
    leakage_block,
    near_duplicates,
    shingles,
    split_eval_queries,
    split_labelled_pairs,
)

EVAL = ["knocking in the headset when braking", "chain needs lube", "spongy brakes bleed"]


def test_exact_leak_after_normalisation_is_caught():
    train = pd.DataFrame({"query": ["Chain  NEEDS lube", "chain needs cleaning"], "passage_id": ["a", "b"], "source": ["click", "click"]})
    leaks = find_leaks(train, EVAL, threshold=0.8)
    assert list(leaks["query"]) == ["Chain  NEEDS lube"]
    assert list(leaks["kind"]) == ["exact"] and list(leaks["eval_query"]) == ["chain needs lube"]


def test_near_duplicate_leak_is_caught_and_a_distinct_query_is_not():
    train = pd.DataFrame({"query": ["knocking in the headset when braking hard",  # 5 of 6 bigrams shared
                                    "knocking noise from the bottom bracket when pedalling",
                                    "spongy brakes, bleed!"],  # punctuation only: same shingles
                          "passage_id": ["h", "bb", "b"], "source": ["synthetic", "synthetic", "click"]})
    leaks = find_leaks(train, EVAL, threshold=0.8)
    got = dict(zip(leaks["query"], leaks["kind"], strict=True))
    assert got == {"knocking in the headset when braking hard": "near-duplicate", "spongy brakes, bleed!": "near-duplicate"}
    assert leaks.set_index("query").loc["knocking in the headset when braking hard", "jaccard"] == round(5 / 6, 3)
    assert find_leaks(train, EVAL, threshold=0.9)["query"].tolist() == ["spongy brakes, bleed!"]


def test_no_leaks_gives_an_empty_table_with_columns():
    train = pd.DataFrame({"query": ["true a wheel"], "passage_id": ["w"], "source": ["curated"]})
    leaks = find_leaks(train, EVAL, threshold=0.8)
    assert leaks.empty and {"query", "eval_query", "kind", "jaccard", "source"} <= set(leaks.columns)


def test_short_queries_compare_as_whole_strings():
    assert shingles("Lube") == frozenset({"lube"})
    assert near_duplicates(["lube", "oil"], ["LUBE"], 0.8) == [(0, 0, 1.0)]


def test_split_is_seeded_sized_and_keeps_near_duplicates_together():
    queries = [f"distinct question number {i} about bikes" for i in range(18)]
    queries += ["how do I bleed hydraulic disc brakes", "how do I bleed hydraulic disc brakes quickly"]
    split = split_eval_queries(queries, fraction=0.15, seed=3, threshold=0.8)
    again = split_eval_queries(queries, fraction=0.15, seed=3, threshold=0.8)
    assert split.eval_keys == again.eval_keys
    assert 3 <= len(split.eval_keys) <= 4  # 15% of 20, plus at most one extra member of a pair group
    assert split.grouped_queries == 2
    pair = {"how do i bleed hydraulic disc brakes", "how do i bleed hydraulic disc brakes quickly"}
    for seed in range(12):  # whichever side the pair lands on, it lands there together
        keys = split_eval_queries(queries, 0.15, seed, 0.8).eval_keys
        assert len(pair & keys) in (0, 2)


def test_split_labelled_pairs_never_leaks_between_sides():
    rows = [(f"query about topic {i} and its details", f"p{i}") for i in range(30)]
    rows += [("query about topic 3 and its details", "p99")]  # second positive of a query: same side
    pairs = pd.DataFrame(rows, columns=["query", "passage_id"])
    train, held, _ = split_labelled_pairs(pairs, 0.2, 1, 0.8)
    assert len(train) + len(held) == len(pairs)
    assert find_leaks(train, list(held["query"]), 0.8).empty
    if "query about topic 3 and its details" in set(held["query"]):
        assert (held["query"] == "query about topic 3 and its details").sum() == 2


def test_the_reports_leakage_block_counts_the_runs_leaks_file_and_says_when_it_has_none(tmp_path):
    train = pd.DataFrame({"query": ["Chain  NEEDS lube", "chain needs lube", "knocking in the headset when braking hard",
                                    "true a wheel"], "passage_id": ["a", "b", "c", "d"], "source": ["click"] * 4})
    clean = decontaminate(train, EVAL, threshold=0.8)
    path = tmp_path / "leaking_pairs.parquet"
    clean.leaks.to_parquet(path, index=False)
    assert leakage_block(str(path), clean.dropped_pairs) == {"available": True, "dropped_pairs": 3, "exact": 2,
                                                              "near_duplicate": 1}
    assert leakage_block(None, 0) == {"available": False, "reason": "the training_pairs handle of this run names no leaks file"}
    missing = leakage_block(str(tmp_path / "gone.parquet"), 0)
    assert missing["available"] is False and "gone.parquet" in missing["reason"] and "dropped_pairs" not in missing


def test_one_grouping_joins_near_duplicates_and_shared_positives_transitively():
    queries = ["how do I bleed hydraulic disc brakes", "how do I bleed hydraulic disc brakes quickly",
               "air in the brake line", "true a wheel", "true a wheel"]
    passages = ["bleed", "bleed-video", "bleed-video", "truing", "spokes"]
    groups = group_queries(queries, passages, threshold=0.8)
    assert groups[queries[0]] == groups[queries[1]] == groups[queries[2]]  # wording, then the shared positive
    assert groups[queries[3]] != groups[queries[0]]
    assert len(groups) == 4  # distinct queries
    assert len(set(group_queries(queries, None, threshold=0.8).values())) == 3  # wording alone


def test_split_labelled_pairs_keeps_queries_sharing_a_positive_on_one_side():
    rows = [(f"query about topic {i} and its details", f"p{i}") for i in range(30)]
    rows += [("a differently worded question", "p7")]  # shares topic 7's positive
    pairs = pd.DataFrame(rows, columns=["query", "passage_id"])
    for seed in range(20):
        train, held, split = split_labelled_pairs(pairs, 0.2, seed, 0.8)
        assert set(train["passage_id"]).isdisjoint(held["passage_id"]), seed
        assert split.grouped_queries == 2
