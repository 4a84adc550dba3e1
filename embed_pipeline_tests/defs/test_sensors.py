"""The promotion sensor on an ephemeral Dagster instance, and the promotion it triggers, then rollback.

Eval reports are real report dicts (constructed per-query hits through `build_report` and
`evaluate_gate`), materialised under the asset key `eval_report` with the metadata the real
asset writes, so the sensor reads exactly what it reads in production.
"""

import dagster as dg
import pytest

from embed_pipeline.cli import main
from embed_pipeline.definitions import build_defs
from embed_pipeline.defs.assets.evaluation import report_metadata
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.defs.promotion_sensor import promotion_sensor
from embed_pipeline.lib.config import GateConfig, load_config
from embed_pipeline.lib.io import write_json
from embed_pipeline.lib.promotion import read_served
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.fixture_data import write_project
from embed_pipeline_tests.reports import CLEAR_LIFT, NO_LIFT, make_report


def materialise_report(instance: dg.DagsterInstance, report: dict, path) -> str:
    """Write `report` to `path` and record an eval_report materialisation for it; returns the run id."""
    write_json(report, path)

    @dg.asset(name="eval_report")
    def stand_in() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=report_metadata(report, path, {}))

    return dg.materialize([stand_in], instance=instance).run_id


def tick(instance: dg.DagsterInstance, config_path, cursor: str | None = None):
    resources = {"pipeline": PipelineResource(config_path=str(config_path)), "mlflow": MlflowResource()}
    return promotion_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))


def test_sensor_promotes_a_passed_gate_once_and_skips_a_refused_one_with_its_numbers(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    config_path = write_project(tmp_path / "project", "unused-base-model")
    models = {"candidate": {"name": "m", "version": "7"}}
    passed = make_report(*CLEAR_LIFT, models=models, gate=GateConfig())
    run_id = materialise_report(instance, passed, tmp_path / "r1" / "eval_report.json")

    first = tick(instance, config_path)
    assert [r.run_key for r in first.run_requests] == [f"promote-{run_id}"]
    request = first.run_requests[0]
    assert request.run_config["ops"]["served_model"]["config"]["report_path"] == str(tmp_path / "r1" / "eval_report.json")
    assert request.tags["promoted_model_version"] == "7"
    again = tick(instance, config_path)  # a re-evaluated tick for the same report asks with the same key: Dagster runs it once
    assert [r.run_key for r in again.run_requests] == [f"promote-{run_id}"]
    assert not tick(instance, config_path, first.cursor).run_requests  # and the cursor moves past it

    refused = make_report(*NO_LIFT, models={"candidate": {"name": "m", "version": "8"}}, gate=GateConfig())
    materialise_report(instance, refused, tmp_path / "r2" / "eval_report.json")
    skipped = tick(instance, config_path, first.cursor)
    assert not skipped.run_requests
    message = skipped.skip_message
    assert "not promoting model v8" in message
    assert "recall@10 lift over champion +0.0000" in message and "threshold +0.0100" in message
    assert "recall@10 lift CI lower bound +0.0000 is not > +0.0000" in message


@pytest.fixture()
def promotable(tmp_path, monkeypatch):
    """A project config plus two registered candidate versions in a real MLflow store under tmp_path."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    config_path = write_project(tmp_path / "project", "unused-base-model")
    config = load_config(config_path)
    tracker = Tracker(config.tracking_uri, config.mlflow_artifacts_uri)
    candidates = []
    for n in (1, 2):
        with tracker.open_run(f"train-{n}", {}) as run_id:
            model_dir = str(tmp_path / "models" / str(n))
            (tmp_path / "models" / str(n)).mkdir(parents=True)  # a rollback target must exist on disk
            (tmp_path / "indexes" / str(n)).mkdir(parents=True)
            version = tracker.register_model(config.registered_model_name, run_id, "model", {"model_path": model_dir})
        candidates.append({"name": config.registered_model_name, "version": version, "run_id": run_id, "model_dir": model_dir})
    return config_path, config, tracker, candidates


def test_sensor_decision_promotes_then_rollback_restores_alias_and_pointer(tmp_path, promotable):
    config_path, config, tracker, candidates = promotable
    instance = dg.DagsterInstance.get()
    job = build_defs(str(config_path)).resolve_job_def("promotion_job")
    cursor = None
    for n, candidate in enumerate(candidates, start=1):
        models = {"candidate": candidate, "index": {"path": str(tmp_path / "indexes" / str(n)), "type": "flat", "size": 20}}
        materialise_report(instance, make_report(*CLEAR_LIFT, models=models, gate=GateConfig()), tmp_path / f"r{n}" / "eval_report.json")
        if n == 1:  # as the daemon would: the sensor's request, run with its run key
            result = tick(instance, config_path, cursor)
            cursor = result.cursor
            request = result.run_requests[0]
            assert job.execute_in_process(run_config=request.run_config, instance=instance,
                                          tags={**request.tags, "dagster/run_key": request.run_key}).success
        else:  # `embed-pipeline promote` applies the same decision; a second call finds the run key and does nothing
            assert main(["promote", "--config", str(config_path)]) == 0
            assert main(["promote", "--config", str(config_path)]) == 0
        assert str(tracker.alias_version(config.registered_model_name).version) == candidate["version"]
        assert read_served(config.artifacts_dir)["index_path"] == str(tmp_path / "indexes" / str(n))
    promotions = instance.get_run_records(dg.RunsFilter(job_name="promotion_job"))
    assert len(promotions) == 2, "each report promotes exactly once"
    run = tracker.client.get_run(candidates[1]["run_id"])
    assert run.data.tags["promotion"] == "promoted"
    assert run.data.tags["promotion_decision"] == "promoted v2, replacing v1"
    assert tracker.client.get_run(candidates[0]["run_id"]).data.tags["promotion"] == "replaced"

    assert main(["rollback", "--config", str(config_path), "--reason", "v2 answers badly"]) == 0
    assert str(tracker.alias_version(config.registered_model_name).version) == candidates[0]["version"]
    served = read_served(config.artifacts_dir)
    assert served["model_version"] == candidates[0]["version"] and served["index_path"] == str(tmp_path / "indexes" / "1")
    assert served["last_event"] == "rollback"
    event = instance.get_latest_materialization_event(dg.AssetKey("served_model")).asset_materialization
    assert event.metadata["action"].value == "rollback" and event.metadata["model_version"].value == candidates[0]["version"]
    assert event.metadata["reason"].value == "v2 answers badly" and "embed-pipeline rollback" in event.metadata["requested_by"].value
    rolled_back, restored = (tracker.client.get_run(c["run_id"]).data.tags for c in reversed(candidates))
    assert rolled_back["promotion"] == "rolled back" and rolled_back["promotion_decision"] == "rolled back from v2 to v1"
    assert restored["promotion"] == "serves again" and restored["promotion_decision"] == "rolled back from v2 to v1"
    # Nothing before the first promotion: refused in one line as a usage error (exit 2), nothing changes.
    assert main(["rollback", "--config", str(config_path)]) == 2
    assert read_served(config.artifacts_dir)["model_version"] == candidates[0]["version"]


def test_promotion_job_refuses_a_report_whose_gate_failed(tmp_path):
    config_path = write_project(tmp_path / "project", "unused-base-model")
    candidate = {"name": "embed-pipeline", "version": "1", "run_id": "r1", "model_dir": str(tmp_path / "models" / "1")}
    models = {"candidate": candidate, "index": {"path": str(tmp_path / "indexes" / "1"), "type": "flat", "size": 20}}
    path = write_json(make_report(*NO_LIFT, models=models, gate=GateConfig()), tmp_path / "r" / "eval_report.json")
    job = build_defs(str(config_path)).resolve_job_def("promotion_job")
    result = job.execute_in_process(run_config={"ops": {"served_model": {"config": {"report_path": str(path)}}}},
                                    instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "refusing to promote" in failure.event_specific_data.error.message
    assert read_served(load_config(config_path).artifacts_dir) is None
