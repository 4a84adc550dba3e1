"""The JSON contracts (lib/contracts.py): the shipped schemas are the models' own, what the
pipeline writes validates and reads back unchanged, and a file that drifts is refused by name."""

import json

import pandas as pd
import pytest

from embed_pipeline.lib import contracts
from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.contracts import ContractError, read_eval_report
from embed_pipeline.lib.evaluation import EvalSet, assemble_report, write_report
from embed_pipeline.lib.promotion import HISTORY_FILE, SERVED_FILE, PromotionError, promote, read_served, rollback, served_history

SPEC = {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "config", "rrf_k": 60, "depth": 100,
        "precision": "fp32", "derived": ""}


def test_the_shipped_schemas_are_the_models_current_ones():
    shipped = {path.name.removesuffix(".schema.json"): json.loads(path.read_text())
               for path in contracts.SCHEMA_DIR.glob("*.schema.json")}
    assert shipped == contracts.schemas(), "run `python -m embed_pipeline.lib.contracts` and commit embed_pipeline/schemas/"


def test_the_schemas_ship_with_the_package():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(contracts.__file__).parents[2] / "pyproject.toml").read_text())
    assert "schemas/*.json" in pyproject["tool"]["setuptools"]["package-data"]["embed_pipeline"]


def report(tmp_path) -> dict:
    relevant = {"q1": {"chain-lube"}, "q2": {"brake-rub"}, "q3": {"tubeless-setup"}}
    queries = {"q1": "how often lube a chain", "q2": "disc brake rubs after wheel change", "q3": "tubeless"}
    good = {q: [next(iter(p)), "other"] for q, p in relevant.items()}
    worse = {q: ["other", next(iter(p))] for q, p in relevant.items()}
    rankings = {"base": worse, "champion": worse, "candidate": good, "candidate_exact": good}
    built, _ = assemble_report(EvalSet(queries, relevant), pd.DataFrame({"query_id": list(queries)}), rankings,
                               {"base": "base-model", "candidate": {"version": "2"}}, GateConfig(allow_small_eval=True),
                               {**SPEC, "champion": {**SPEC, "as": "served"}})
    return built


def test_a_report_the_pipeline_builds_is_written_validated_and_read_back_unchanged(tmp_path):
    built = {**report(tmp_path), "leakage": {"mode": "drop", "dropped_pairs": 0}}  # a section a stage adds
    path, _ = write_report(built, pd.DataFrame({"query_id": ["q1"], "model": ["candidate"]}), tmp_path, 1)
    written = json.loads(path.read_text())
    assert read_eval_report(path) == written
    # The shipped schema, used as another program would (a JSON Schema validator), accepts it.
    import jsonschema

    jsonschema.validate(written, json.loads((contracts.SCHEMA_DIR / "eval_report.schema.json").read_text()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**written, "gate": {"passed": "yes"}}, json.loads((contracts.SCHEMA_DIR / "eval_report.schema.json").read_text()))
    assert len(written["gate"]["clauses"]) == 5 and written["segments"][0]["ndcg@10_lift"] > 0
    assert written["retrieval"]["champion"]["as"] == "served" and written["leakage"]["dropped_pairs"] == 0


def test_a_report_that_drifts_is_refused_naming_the_field(tmp_path):
    built = report(tmp_path)
    del built["gate"]["clauses"][0]["threshold"]
    with pytest.raises(ContractError, match=r"EvalReport not written: gate\.clauses\.0\.threshold: Field required"):
        write_report(built, pd.DataFrame(), tmp_path, 1)
    assert not (tmp_path / "eval_report.json").exists()
    (tmp_path / "eval_report.json").write_text(json.dumps({**report(tmp_path), "retrieval": {**SPEC, "mode": "sparse"}}))
    with pytest.raises(ContractError, match=r"eval_report.json is not a valid EvalReport: retrieval\.mode"):
        read_eval_report(tmp_path / "eval_report.json")
    (tmp_path / "eval_report.json").write_text(json.dumps({**report(tmp_path), "retrieval": {**SPEC, "rrf_k": "sixty"}}))
    with pytest.raises(ContractError, match=r"eval_report.json is not a valid EvalReport: retrieval\.rrf_k: Input should be a valid integer"):
        read_eval_report(tmp_path / "eval_report.json")


def test_the_pointer_and_the_history_are_validated_where_they_are_written_and_read(tmp_path):
    for part in ("models/1", "indexes/1"):  # a rollback target must exist whole
        (tmp_path / part).mkdir(parents=True)
    pointer = {"model_name": "m", "model_version": "1", "model_dir": str(tmp_path / "models/1"),
               "index_path": str(tmp_path / "indexes/1"), "retrieval": SPEC}
    promote(tmp_path, pointer, "test", "first")
    promote(tmp_path, {**pointer, "model_version": "2"}, "test", "second")
    rollback(tmp_path, "test", "back")
    assert read_served(tmp_path) == json.loads((tmp_path / SERVED_FILE).read_text())
    import jsonschema

    jsonschema.validate(read_served(tmp_path), json.loads((contracts.SCHEMA_DIR / "served_pointer.schema.json").read_text()))
    for event in served_history(tmp_path):
        jsonschema.validate(event, json.loads((contracts.SCHEMA_DIR / "history_event.schema.json").read_text()))
    assert [e["action"] for e in served_history(tmp_path)] == ["promote", "promote", "rollback"]
    with pytest.raises(ContractError, match=r"HistoryEvent not written: retrieval\.mode: Input should be 'dense' or 'hybrid'"):
        promote(tmp_path, {**pointer, "model_version": "3", "retrieval": {**SPEC, "mode": "sparse"}}, "test", "bad spec")
    assert len(served_history(tmp_path)) == 3, "nothing written"

    # Records from before retrieval specs were kept (mode, fusion, dense_weight only) still read.
    old = {"action": "promote", "model_name": "m", "model_version": "0", "retrieval": {"mode": "hybrid", "fusion": "convex",
                                                                                      "dense_weight": 0.5}, "at": "then", "by": "old"}
    assert contracts.load(contracts.HistoryEvent, old, "old line") == old

    # A history line that is JSON but not an event: refused by line and field, as a damaged line is.
    with open(tmp_path / HISTORY_FILE, "a") as handle:
        handle.write(json.dumps({"action": "promote", "model_name": "m", "at": "now", "by": "hand"}) + "\n")
        handle.write(json.dumps({"action": "promote", "model_name": "m", "model_version": "9", "at": "now", "by": "x"}) + "\n")
    with pytest.raises(PromotionError, match=r"line 4 of 5 is not a valid HistoryEvent: model_version: Field required"):
        served_history(tmp_path)

    served = json.loads((tmp_path / SERVED_FILE).read_text())
    (tmp_path / SERVED_FILE).write_text(json.dumps({**served, "served_since": None}))
    with pytest.raises(PromotionError, match=r"served.json is not a valid ServedPointer: served_since"):
        read_served(tmp_path)
