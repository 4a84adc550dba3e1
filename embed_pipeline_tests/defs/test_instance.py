"""Two pipeline instances in one code location (defs/instance.py, the EmbeddingPipeline component's
wiring): their sensors act on their own keys, partitions and jobs only."""

import dagster as dg
import pytest

from embed_pipeline.definitions import build_definitions
from embed_pipeline.defs.assets.evaluation import report_metadata
from embed_pipeline.defs.instance import instance_definitions
from embed_pipeline.lib.config import GateConfig
from embed_pipeline.lib.corpus import shard_keys
from embed_pipeline.lib.io import write_json
from embed_pipeline_tests.fixture_data import write_project
from embed_pipeline_tests.reports import CLEAR_LIFT, make_report


@pytest.fixture()
def two(tmp_path):
    configs = {name: write_project(tmp_path / name, "unused-base-model", index={"shards": 3}) for name in ("support", "contracts")}
    defs = dg.Definitions.merge(instance_definitions(str(configs["support"]), "support"),
                                instance_definitions(str(configs["contracts"]), "legal/contracts"))
    return defs, configs


def test_an_instance_has_every_definition_of_build_definitions_under_its_own_names(two):
    defs, _ = two
    base = build_definitions("unused.yaml")
    repo = defs.get_repository_def()
    for suffix in ("_support", "_legal_contracts"):
        assert {s.name for s in repo.sensor_defs if s.name.endswith(suffix)} == {s.name + suffix for s in base.sensors}
        assert {j.name for j in repo.get_all_jobs() if j.name.endswith(suffix)} == {j.name + suffix for j in base.jobs}
    # GPU steps keep one shared pool: instances on one machine take turns on its GPU.
    assert {a.op.pool for a in defs.assets if a.op.pool} == {"gpu"}
    assert len(repo.asset_graph.get_all_asset_keys()) == 2 * len(base.resolve_asset_graph().get_all_asset_keys())


def test_the_promotion_sensor_promotes_its_own_report_through_its_own_op(two, tmp_path):
    defs, configs = two
    instance = dg.DagsterInstance.ephemeral()
    report = make_report(*CLEAR_LIFT, models={"candidate": {"name": "m", "version": "3"}}, gate=GateConfig())
    path = write_json(report, tmp_path / "eval_report.json")

    @dg.asset(key=["support", "eval_report"])
    def stand_in() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=report_metadata(report, path, {}))

    run_id = dg.materialize([stand_in], instance=instance).run_id

    def tick(suffix):  # the Definitions' own resources, as the daemon passes them
        context = dg.build_sensor_context(instance=instance, resources=defs.resources)
        return defs.resolve_sensor_def(f"promotion_sensor{suffix}").evaluate_tick(context)

    (request,) = tick("_support").run_requests
    assert request.run_key == f"promote-{run_id}" and request.job_name in (None, "promotion_job_support")
    assert request.run_config["ops"]["support__served_model"]["config"]["report_path"] == str(path)
    promotion_job = defs.resolve_job_def("promotion_job_support")
    assert dg.validate_run_config(promotion_job, request.run_config)
    assert not tick("_legal_contracts").run_requests  # not its asset

    # The renamed op reads its config and its instance's resources: a rollback with nothing promoted says so.
    run = promotion_job.execute_in_process(run_config={"ops": {"support__served_model": {"config": {"action": "rollback"}}}},
                                           instance=instance, raise_on_error=False)
    (failure,) = [e for e in run.all_events if e.is_step_failure]
    assert "nothing to roll back to: no model has been promoted yet" in failure.event_specific_data.error.message
    assert (configs["support"].parent / "artifacts").is_dir() and not (configs["contracts"].parent / "artifacts").exists()


def test_the_corpus_sensor_adds_shards_to_its_own_partitions(two):
    defs, configs = two
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    result = defs.resolve_sensor_def("corpus_change_sensor_support").evaluate_tick(context)
    (added,) = result.dynamic_partitions_requests
    assert added.partitions_def_name == "corpus_shards_support" and sorted(added.partition_keys) == shard_keys(3)
    assert len(result.run_requests) == 1
    reembed = defs.resolve_job_def("reembed_job_support")
    assert reembed.partitions_def.name == "corpus_shards_support"
    assert defs.resolve_job_def("reembed_job_legal_contracts").partitions_def.name == "corpus_shards_legal_contracts"


@pytest.mark.parametrize("prefix, suffix", [("", None), ("legal//contracts", None), ("support-articles", None), ("support", "")])
def test_a_prefix_or_suffix_dagster_cannot_name_is_refused_in_one_line(prefix, suffix):
    with pytest.raises(ValueError, match=r"^(key_prefix|name_suffix) '.*': .*[^\n]$"):
        instance_definitions("unused.yaml", prefix, suffix)
