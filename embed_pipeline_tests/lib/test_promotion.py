"""The promotion gate's clauses (each passing and failing), the atomic served pointer, rollback."""

import json

import pytest

from embed_pipeline.lib import io as io_module
from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.promotion import (
    HISTORY_FILE,
    SERVED_FILE,
    evaluate_gate,
    read_served,
    rollback_served,
    served_history,
    write_served,
)
from embed_pipeline_tests.reports import make_report


def clause(gate: dict, name: str) -> dict:
    return next(c for c in gate["clauses"] if c["name"] == name)


def test_clear_lift_passes_every_clause():
    champion = [1.0] * 70 + [0.0] * 30
    candidate = [1.0] * 85 + [0.0] * 15
    gate = evaluate_gate(make_report(champion, candidate, {"a": 50, "b": 50}), GateConfig())
    assert gate["passed"], gate
    assert [c["verdict"] for c in gate["clauses"]] == ["pass"] * 4
    assert clause(gate, "recall@10 lift over champion")["value"] == pytest.approx(0.15)
    assert clause(gate, "recall@10 lift over champion")["threshold"] == 0.01
    assert clause(gate, "recall@10 lift CI lower bound")["value"] > 0
    assert clause(gate, "worst segment recall@10 lift")["value"] == pytest.approx(0.0)  # segment a: no change
    assert gate["summary"] == "all clauses passed"


def test_lift_below_threshold_fails_with_value_and_threshold():
    champion = [1.0] * 70 + [0.0] * 30
    candidate = [1.0] * 72 + [0.0] * 28
    gate = evaluate_gate(make_report(champion, candidate), GateConfig(min_recall_at_10_lift=0.03))
    lift = clause(gate, "recall@10 lift over champion")
    assert not gate["passed"] and lift["verdict"] == "fail"
    assert lift["value"] == pytest.approx(0.02) and lift["threshold"] == 0.03
    assert "recall@10 lift over champion +0.0200 is not >= +0.0300" in gate["summary"]


def test_noisy_lift_fails_only_the_confidence_clause():
    # +10 hits, -5 hits over 100 queries: mean +0.05 clears the 0.01 threshold, but the
    # paired interval (about +/-0.075) includes zero.
    champion = [0.0] * 10 + [1.0] * 5 + [1.0] * 60 + [0.0] * 25
    candidate = [1.0] * 10 + [0.0] * 5 + [1.0] * 60 + [0.0] * 25
    gate = evaluate_gate(make_report(champion, candidate), GateConfig())
    assert not gate["passed"]
    failed = [c["name"] for c in gate["clauses"] if not c["passed"]]
    assert failed == ["recall@10 lift CI lower bound"]
    assert clause(gate, "recall@10 lift CI lower bound")["value"] < 0 < clause(gate, "recall@10 lift over champion")["value"]


def test_segment_regression_fails_only_when_the_segment_is_big_enough():
    # Segment a loses 4 hits; segment b gains 20: a big average lift bought by breaking a.
    def hits(a_size: int) -> tuple[list[float], list[float]]:
        b_size = 100 - a_size
        champion = [1.0] * a_size + [0.0] * b_size
        candidate = [0.0] * 4 + [1.0] * (a_size - 4) + [1.0] * 20 + [0.0] * (b_size - 20)
        return champion, candidate

    gate = evaluate_gate(make_report(*hits(40), {"a": 40, "b": 60}), GateConfig())
    worst = clause(gate, "worst segment recall@10 lift")
    assert not gate["passed"] and worst["verdict"] == "fail"
    assert worst["value"] == pytest.approx(-0.1) and worst["threshold"] == -0.03
    assert "segment=a (40 queries" in worst["detail"]

    small = evaluate_gate(make_report(*hits(20), {"a": 20, "b": 80}), GateConfig())
    assert small["passed"], small  # 20 queries < min_segment_queries (30): reported, not judged
    assert clause(small, "worst segment recall@10 lift")["value"] == pytest.approx(0.25)  # segment b: 20 of 80


def test_small_eval_set_is_refused_unless_allowed():
    champion = [0.0] * 20
    candidate = [1.0] * 20
    report = make_report(champion, candidate)
    refused = evaluate_gate(report, GateConfig())
    assert not refused["passed"]
    assert [c["name"] for c in refused["clauses"] if not c["passed"]] == ["eval queries"]
    assert clause(refused, "eval queries")["value"] == 20 and clause(refused, "eval queries")["threshold"] == 50
    allowed = evaluate_gate(report, GateConfig(allow_small_eval=True))
    assert allowed["passed"] and "allowed by gate.allow_small_eval" in clause(allowed, "eval queries")["detail"]


def test_report_carries_ci_and_segments():
    report = make_report([1.0] * 70 + [0.0] * 30, [1.0] * 85 + [0.0] * 15, {"a": 50, "b": 50})
    assert set(report["ci"]) == {"recall@10", "ndcg@10"}
    assert report["ci"]["recall@10"]["resamples"] == 1000 and report["ci"]["recall@10"]["queries"] == 100
    assert {(s["kind"], s["segment"], s["queries"]) for s in report["segments"]} == {("segment", "a", 50), ("segment", "b", 50)}
    b = next(s for s in report["segments"] if s["segment"] == "b")
    assert b["recall@10_lift"] == pytest.approx(0.3)


def _pointer(version: str) -> dict:
    return {"model_name": "m", "model_version": version, "model_dir": f"/models/{version}", "index_path": f"/indexes/{version}"}


def test_pointer_swap_interrupted_mid_write_leaves_the_old_pointer(tmp_path, monkeypatch):
    write_served(tmp_path, _pointer("1"))

    def killed(src, dst):
        raise KeyboardInterrupt("killed between writing the new pointer and renaming it")

    monkeypatch.setattr(io_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_served(tmp_path, _pointer("2"))
    monkeypatch.undo()

    served = json.loads((tmp_path / SERVED_FILE).read_text())  # still valid JSON
    assert served["model_version"] == "1" and served["index_path"] == "/indexes/1"
    assert [h["model_version"] for h in served_history(tmp_path)] == ["1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SERVED_FILE, HISTORY_FILE]  # no temp file left


def test_rollback_restores_the_previous_champion(tmp_path):
    assert rollback_served(tmp_path) is None
    write_served(tmp_path, _pointer("1"))
    assert rollback_served(tmp_path) is None  # nothing before the first champion
    write_served(tmp_path, _pointer("2"))
    restored = rollback_served(tmp_path)
    assert restored["model_version"] == "1" and restored["rolled_back_from"] == "2"
    assert read_served(tmp_path)["index_path"] == "/indexes/1"
    assert [h["model_version"] for h in served_history(tmp_path)] == ["1", "2", "1"]


def test_eval_queries_are_sliced_by_source_length_and_segment(tmp_path):
    from embed_pipeline.lib.config import LabelledSet
    from embed_pipeline.lib.evaluation import query_groups
    from embed_pipeline.lib.labelled import load_labelled_pairs

    rows = [("e1", "chain lube", {"segment": "drivetrain", "source": "logs"}),
            ("e2", "how do I stop my disc brakes from rubbing on the rotor", {"segment": "brakes", "source": "support"}),
            ("e3", "tubeless sealant top up", {"segment": "wheels"})]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": t, "metadata": m}) for i, t, m in rows) + "\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\ne1\tchain-lube\t1\ne2\tbrake-rub\t1\ne3\ttubeless-setup\t1\n")
    loaded = load_labelled_pairs(LabelledSet(queries=tmp_path / "queries.jsonl", qrels=tmp_path / "qrels.tsv"),
                                 {"chain-lube", "brake-rub", "tubeless-setup"})
    queries = dict(zip(loaded.pairs["query_id"], loaded.pairs["query"], strict=True))
    groups = query_groups(loaded.pairs, queries)
    assert groups["source"] == {"e1": "logs", "e2": "support", "e3": "(none)"}
    assert groups["segment"] == {"e1": "drivetrain", "e2": "brakes", "e3": "wheels"}
    assert groups["length"] == {"e1": "1-3 words", "e2": "7+ words", "e3": "4-6 words"}
