"""The null test: a model trained on positives shuffled across queries must not be promoted.

Every training pair points a query at another query's passage (a derangement), so whatever the
model learns is noise about this eval set; the gate, with its real thresholds, must refuse it
for its lift and confidence clauses (not merely because the fixture's eval set is small).
"""

import json

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from embed_pipeline.cli import EXIT_GATE_REFUSED, main
from embed_pipeline.lib.config import load_config
from embed_pipeline_tests.fixture_data import CURATED, write_project

REAL_GATE = {"min_recall_at_10_lift": 0.01, "min_ci_lower_bound": 0.0, "allow_small_eval": True}


def shuffle_curated_positives(project_root) -> list[tuple[str, str]]:
    """Rewrite the curated qrels so query i points at query (i + 3)'s passage; returns the new pairs."""
    passages = [pid for _, pid in CURATED]
    shuffled = passages[3:] + passages[:3]
    assert all(a != b for a, b in zip(passages, shuffled, strict=True))
    lines = ["query-id\tcorpus-id\tscore"] + [f"c{i}\t{pid}\t1" for i, pid in enumerate(shuffled)]
    (project_root / "curated" / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return [(q, pid) for (q, _), pid in zip(CURATED, shuffled, strict=True)]


@pytest.mark.slow
def test_gate_refuses_a_model_trained_on_shuffled_positives(tmp_path, tiny_model_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    config = write_project(
        tmp_path / "null", tiny_model_path,
        search_logs=None,  # only the shuffled curated pairs train the model
        synthetic={"max_share": 0.0},
        training={"epochs": 4, "learning_rate": 1e-3},  # enough steps that the weights really move
        gate=REAL_GATE,
    )
    shuffle_curated_positives(tmp_path / "null")

    assert main(["run", "--config", str(config), "--json"]) == EXIT_GATE_REFUSED
    report = json.loads(capsys.readouterr().out)

    gate = report["gate"]
    assert gate["passed"] is False
    failed = {c["name"] for c in gate["clauses"] if not c["passed"]}
    assert "eval queries" not in failed  # refused on the evidence, not on the eval set's size
    assert failed & {"recall@10 lift over champion", "recall@10 lift CI lower bound"}, gate
    ci = report["ci"]["recall@10"]
    assert ci["low"] <= 0.0 and ci["queries"] == 12
    assert report["models"]["candidate"]["version"] == "1"

    # The decision and the evidence are recorded where people look: MLflow and the asset's metadata.
    settings = load_config(config)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(report["models"]["candidate"]["run_id"])
    assert run.data.tags["promotion_decision"].startswith("not promoted: recall@10 lift")
    assert {"eval/eval_report.json", "eval/recall_at_k.png", "eval/segment_lift.png", "eval/per_query.parquet"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    meta = event.asset_materialization.metadata
    # A refusal is a normal outcome: the run is green, the gate's verdict is a failed check of WARN severity.
    assert instance.get_run_by_id(event.run_id).status == dg.DagsterRunStatus.SUCCESS
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("eval_report"), "eval_report_promotion_gate")])
    evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert meta["plot: recall_at_k"].value.startswith("![recall_at_k](data:image/png;base64,iVBOR")
    assert "| segment | drivetrain | 4 |" in meta["report"].value
