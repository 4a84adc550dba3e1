"""What `embed-pipeline promote` and `rollback` do, outside Dagster's daemon.

`promote` evaluates the promotion sensor's own decision function on the latest eval_report
materialisation and runs the promotion job in process with the sensor's run key, so the CLI and
the daemon can never promote the same report twice or decide differently.
"""

from collections.abc import Callable

from embed_pipeline.lib.config import PipelineConfig

RUN_KEY_TAG = "dagster/run_key"


def promote_latest(config: PipelineConfig, say: Callable[[str], None]) -> int:
    import dagster as dg

    from embed_pipeline.definitions import build_defs
    from embed_pipeline.defs.sensors import promotion_decision

    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    if event is None:
        say("no eval_report has been materialised yet: run `embed-pipeline run` first")
        return 1
    decision = promotion_decision(event)
    if isinstance(decision, dg.SkipReason):
        say(decision.skip_message)
        return 0
    already = instance.get_run_records(dg.RunsFilter(tags={RUN_KEY_TAG: decision.run_key}), limit=1)
    if already:
        say(f"already promoted by run {already[0].dagster_run.run_id} (run key {decision.run_key})")
        return 0
    job = build_defs(str(config.source)).resolve_job_def("promotion_job")
    result = job.execute_in_process(
        run_config=decision.run_config, instance=instance, tags={**decision.tags, RUN_KEY_TAG: decision.run_key}
    )
    say(f"promoted model v{decision.tags['promoted_model_version']} (run {result.run_id})")
    return 0 if result.success else 1


def rollback(config: PipelineConfig, say: Callable[[str], None]) -> int:
    from embed_pipeline.defs.resources import MlflowResource
    from embed_pipeline.lib.promotion import rollback_served

    tracker = MlflowResource().tracker(config)
    restored = rollback_served(config.artifacts_dir)
    if restored is None:
        say("nothing to roll back to: fewer than two promotions recorded")
        return 1
    tracker.set_alias(restored["model_name"], restored["model_version"])
    say(f"rolled back: champion is now {restored['model_name']} v{restored['model_version']}, index {restored['index_path']}")
    return 0
