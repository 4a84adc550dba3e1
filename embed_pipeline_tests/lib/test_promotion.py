"""The promotion gate's clauses (each passing and failing), the promotion history, rollback, reconciliation."""

import json
from pathlib import Path
import os
import types

import pytest

from embed_pipeline.lib import io as io_module
from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.promotion import (
    HISTORY_FILE,
    SERVED_FILE,
    PromotionError,
    evaluate_gate,
    promote,
    read_served,
    reconcile,
    record_reindex,
    rollback,
    rollback_targets,
    served_history,
)
from embed_pipeline_tests.reports import make_report


def clause(gate: dict, name: str) -> dict:
    return next(c for c in gate["clauses"] if c["name"] == name)


def test_clear_lift_passes_every_clause():
    champion = [1.0] * 70 + [0.0] * 30
    candidate = [1.0] * 85 + [0.0] * 15
    gate = evaluate_gate(make_report(champion, candidate, {"a": 50, "b": 50}), GateConfig())
    assert gate["passed"], gate
    assert [c["verdict"] for c in gate["clauses"]] == ["pass"] * 5  # the general-domain guard passes as off
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


def _pointer(version: str, root=None) -> dict:
    """A served entry; with `root`, its model folder and index exist there (a rollback target must be whole)."""
    if root is None:
        return {"model_name": "m", "model_version": version, "model_dir": f"/models/{version}", "index_path": f"/indexes/{version}"}
    model_dir, index = Path(root) / "models" / version, Path(root) / "indexes" / version
    model_dir.mkdir(parents=True, exist_ok=True)
    index.mkdir(parents=True, exist_ok=True)
    return {"model_name": "m", "model_version": version, "model_dir": str(model_dir), "index_path": str(index)}


class Registry:
    """A stand-in for the MLflow alias (the real one is exercised in the sensor and lifecycle tests)."""

    def __init__(self):
        self.alias = None
        self.fail = False

    def set_alias(self, name, version):
        if self.fail:
            raise ConnectionError("registry unavailable (crash injected between the two writes)")
        self.alias = version

    def alias_version(self):
        return self.alias


def test_rollback_walks_back_through_the_promotion_history_and_refuses_at_the_start(tmp_path):
    registry = Registry()
    with pytest.raises(PromotionError, match="no model has been promoted"):
        rollback(tmp_path, "test", "nothing yet", registry.set_alias)
    for version in ("1", "2", "3"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    served = []
    for _ in range(2):
        change = rollback(tmp_path, "test", "bad model", registry.set_alias)
        served.append((change.previous_version, change.pointer["model_version"], registry.alias))
    assert served == [("3", "2", "2"), ("2", "1", "1")]  # 3 -> 2 -> 1, never back to 3
    with pytest.raises(PromotionError, match="v1 is the first promoted model"):
        rollback(tmp_path, "test", "again", registry.set_alias)
    assert read_served(tmp_path)["index_path"] == str(tmp_path / "indexes" / "1")
    promote(tmp_path, _pointer("4", tmp_path), "test", "a new champion", registry.set_alias)
    assert rollback(tmp_path, "test", "undo 4", registry.set_alias).pointer["model_version"] == "1"
    actions = [(e["action"], e["model_version"], e["by"]) for e in served_history(tmp_path)]
    assert actions[3:5] == [("rollback", "2", "test"), ("rollback", "1", "test")]


def test_a_crash_between_history_and_registry_is_reconciled_from_the_history(tmp_path):
    registry = Registry()
    promote(tmp_path, _pointer("1", tmp_path), "test", "first", registry.set_alias)
    registry.fail = True
    with pytest.raises(ConnectionError):
        promote(tmp_path, _pointer("2", tmp_path), "test", "second", registry.set_alias)
    assert registry.alias == "1" and read_served(tmp_path)["model_version"] == "2"  # the two views disagree
    registry.fail = False
    repaired = reconcile(tmp_path, registry.alias_version, registry.set_alias)
    assert registry.alias == "2" and repaired == ["registry alias moved from v1 to v2"]
    assert reconcile(tmp_path, registry.alias_version, registry.set_alias) == []  # now they agree


def test_pointer_swap_interrupted_mid_write_leaves_a_valid_pointer_that_reconcile_repairs(tmp_path, monkeypatch):
    registry = Registry()
    promote(tmp_path, _pointer("1", tmp_path), "test", "first", registry.set_alias)

    def killed(src, dst):
        raise KeyboardInterrupt("killed between writing the new pointer and renaming it")

    # Only the io module's view of `os` loses its rename: the rest of the process keeps the real one.
    io_without_rename = types.SimpleNamespace(**{**vars(os), "replace": killed})
    monkeypatch.setattr(io_module, "os", io_without_rename)
    assert os.replace is not killed
    with pytest.raises(KeyboardInterrupt):
        promote(tmp_path, _pointer("2", tmp_path), "test", "second", registry.set_alias)
    monkeypatch.undo()
    served = json.loads((tmp_path / SERVED_FILE).read_text())  # still valid JSON, the old pointer
    assert served["model_version"] == "1" and not list(tmp_path.glob(f".{SERVED_FILE}.tmp-*"))
    repaired = reconcile(tmp_path, registry.alias_version, registry.set_alias)
    assert read_served(tmp_path)["model_version"] == "2" and registry.alias == "2" and len(repaired) == 2


def test_a_reindex_moves_the_served_index_but_only_for_the_model_still_served(tmp_path):
    registry = Registry()
    promote(tmp_path, _pointer("1", tmp_path), "test", "first", registry.set_alias)
    (tmp_path / "indexes" / "1b").mkdir()
    (tmp_path / "lexical").mkdir()
    (tmp_path / "lexical" / "1b").touch()
    one_b, lexical = str(tmp_path / "indexes" / "1b"), str(tmp_path / "lexical" / "1b")
    assert record_reindex(tmp_path, "1", one_b, lexical, "test")["index_path"] == one_b
    promote(tmp_path, _pointer("2", tmp_path), "test", "second", registry.set_alias)
    assert record_reindex(tmp_path, "1", "/indexes/1c", None, "test") is None  # v1 no longer serves
    assert rollback(tmp_path, "test", "undo", registry.set_alias).pointer["index_path"] == one_b


def test_a_torn_last_history_line_is_ignored_and_cut_off_by_the_next_append(tmp_path):
    registry = Registry()
    promote(tmp_path, _pointer("1", tmp_path), "test", "first", registry.set_alias)
    history = tmp_path / HISTORY_FILE
    with open(history, "a", encoding="utf-8") as handle:
        handle.write('{"action": "promote", "model_ver')  # a crash mid-append
    assert [e["model_version"] for e in served_history(tmp_path)] == ["1"]
    promote(tmp_path, _pointer("2", tmp_path), "test", "second", registry.set_alias)
    assert [e["model_version"] for e in served_history(tmp_path)] == ["1", "2"]
    assert all(json.loads(line) for line in history.read_text().splitlines())


def test_any_other_unreadable_history_line_fails_naming_the_file_and_line(tmp_path):
    registry = Registry()
    for version in ("1", "2", "3"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    history = tmp_path / HISTORY_FILE
    lines = history.read_text().splitlines()
    history.write_text("\n".join([lines[0], lines[1][:25], lines[2]]) + "\n")  # the middle event damaged
    with pytest.raises(PromotionError, match=f"{history}: line 2 of 3 is not a JSON event"):
        served_history(tmp_path)
    with pytest.raises(PromotionError, match="line 2 of 3"):  # never rolls back to a guess
        rollback(tmp_path, "test", "bad model", registry.set_alias)


def test_the_retrieval_spec_serves_through_rollback_and_reindex_and_a_new_spec_is_a_promotion(tmp_path):
    registry = Registry()
    dense = {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "config", "rrf_k": 60,
             "depth": 100, "precision": "fp32", "derived": ""}
    rrf = {**dense, "mode": "hybrid", "fusion": "rrf", "dense_weight": 0.4, "rrf_k": 7}
    promote(tmp_path, {**_pointer("1", tmp_path), "retrieval": dense}, "test", "first", registry.set_alias)
    assert promote(tmp_path, {**_pointer("1", tmp_path), "retrieval": dense}, "test", "again", registry.set_alias).event is None
    change = promote(tmp_path, {**_pointer("1", tmp_path), "retrieval": rrf}, "test", "judged with rrf", registry.set_alias)
    assert change.event is not None and change.replaced["retrieval"] == dense and read_served(tmp_path)["retrieval"] == rrf
    one_b = tmp_path / "indexes" / "1b"
    one_b.mkdir()
    record_reindex(tmp_path, "1", str(one_b), None, "test")
    assert read_served(tmp_path)["retrieval"] == rrf
    promote(tmp_path, {**_pointer("2", tmp_path), "retrieval": dense}, "test", "second", registry.set_alias)
    back = rollback(tmp_path, "test", "undo", registry.set_alias)
    assert back.pointer["retrieval"] == rrf and back.pointer["index_path"] == str(one_b)
    assert back.replaced["model_version"] == "2"


def test_a_version_promoted_again_with_another_spec_keeps_the_older_rollback_target_protected(tmp_path):
    registry = Registry()
    dense = {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "config", "rrf_k": 60,
             "depth": 100, "precision": "fp32", "derived": ""}
    promote(tmp_path, {**_pointer("1", tmp_path), "retrieval": dense}, "test", "first", registry.set_alias)
    promote(tmp_path, {**_pointer("2", tmp_path), "retrieval": dense}, "test", "second", registry.set_alias)
    assert [e["model_version"] for e in rollback_targets(tmp_path, keep=1)] == ["1", "2"]
    promote(tmp_path, {**_pointer("2", tmp_path), "retrieval": {**dense, "mode": "hybrid", "fusion": "rrf", "dense_weight": 0.4}},
            "test", "judged with rrf", registry.set_alias)
    # Retention keeps what these entries name: v1 (one model below the current) must still be among them.
    assert [e["model_version"] for e in rollback_targets(tmp_path, keep=1)] == ["1", "2", "2"]


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


def test_a_truncated_history_never_overrules_the_pointer_and_alias_it_disagrees_with(tmp_path):
    registry = Registry()
    for version in ("1", "2"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    history = tmp_path / HISTORY_FILE
    history.write_bytes(history.read_bytes()[:-150])  # the v2 event torn: the readable history says v1
    with pytest.raises(PromotionError, match=r"says v1 \(its last line is torn.*served.json says v2; registry alias 'champion' says v2"):
        reconcile(tmp_path, registry.alias_version, registry.set_alias)
    assert read_served(tmp_path)["model_version"] == "2" and registry.alias == "2"  # nothing moved
    repaired = reconcile(tmp_path, registry.alias_version, registry.set_alias, repair="pointer")
    assert any("recorded v2 from served.json" in line for line in repaired)
    assert [e["action"] for e in served_history(tmp_path)] == ["promote", "repair"]
    assert reconcile(tmp_path, registry.alias_version, registry.set_alias) == []
    assert rollback(tmp_path, "test", "after repair", registry.set_alias).pointer["model_version"] == "1"


def test_repair_history_serves_what_the_readable_history_says(tmp_path):
    registry = Registry()
    for version in ("1", "2"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    history = tmp_path / HISTORY_FILE
    history.write_bytes(history.read_bytes()[:-150])
    reconcile(tmp_path, registry.alias_version, registry.set_alias, repair="history")
    assert read_served(tmp_path)["model_version"] == "1" and registry.alias == "1"
    assert history.read_bytes().endswith(b"\n")  # the torn line is cut


def test_a_truncated_pointer_is_rewritten_when_history_and_alias_agree(tmp_path):
    registry = Registry()
    for version in ("1", "2"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    pointer = tmp_path / SERVED_FILE
    pointer.write_bytes(pointer.read_bytes()[:40])
    with pytest.raises(PromotionError, match="unreadable"):
        read_served(tmp_path)
    repaired = reconcile(tmp_path, registry.alias_version, registry.set_alias)
    assert len(repaired) == 1 and "rewritten to v2" in repaired[0] and read_served(tmp_path)["model_version"] == "2"
    pointer.unlink()  # deleted: the history still says what serves
    reconcile(tmp_path, registry.alias_version, registry.set_alias)
    assert read_served(tmp_path)["model_version"] == "2"


def test_a_truncated_pointer_and_a_disagreeing_alias_are_refused(tmp_path):
    registry = Registry()
    for version in ("1", "2"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    (tmp_path / SERVED_FILE).write_text('{"model_na')
    registry.alias = "1"
    with pytest.raises(PromotionError, match="served.json is unreadable.*alias 'champion' says v1"):
        reconcile(tmp_path, registry.alias_version, registry.set_alias)


def test_rollback_onto_a_version_whose_model_folder_is_gone_is_refused_before_anything_moves(tmp_path):
    import shutil

    registry = Registry()
    for version in ("1", "2"):
        promote(tmp_path, _pointer(version, tmp_path), "test", f"promote {version}", registry.set_alias)
    shutil.rmtree(tmp_path / "models" / "1")
    before = (tmp_path / HISTORY_FILE).read_bytes()
    with pytest.raises(PromotionError, match=r"cannot roll back to v1: its model folder .*models/1 is gone; nothing changed"):
        rollback(tmp_path, "test", "bad", registry.set_alias)
    assert (tmp_path / HISTORY_FILE).read_bytes() == before and registry.alias == "2"
