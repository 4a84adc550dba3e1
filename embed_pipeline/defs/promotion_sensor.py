"""The promotion sensor: a new eval report that passed its gate becomes the champion, once."""

import dagster as dg

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.jobs import promotion_job
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.promotion import reconcile


def promotion_decision(event: dg.EventLogEntry) -> dg.RunRequest | dg.SkipReason:
    """RunRequest for the promotion job when the report's gate passed, else SkipReason with the numbers.

    The run key is the eval report's run id, so repeated ticks (or `embed-pipeline promote`)
    for the same report promote at most once.
    """
    meta = event.asset_materialization.metadata
    version = meta[md.CANDIDATE_VERSION].value
    lift = meta[md.RECALL10_LIFT].value
    threshold = meta[md.RECALL10_THRESHOLD].value
    if not meta[md.GATE_PASSED].value:
        summary = meta[md.GATE_SUMMARY].value if md.GATE_SUMMARY in meta else "see the eval_report_promotion_gate check"
        return dg.SkipReason(
            f"not promoting model v{version}: gate refused (recall@10 lift over champion {lift:+.4f}, "
            f"threshold {threshold:+.4f}); failed: {summary}"
        )
    return dg.RunRequest(
        run_key=f"promote-{event.run_id}",
        run_config={"ops": {"served_model": {"config": {"action": "promote", "report_path": meta[md.REPORT_PATH].value,
                                                        "requested_by": "promotion_sensor",
                                                        "reason": f"gate passed on the eval report of run {event.run_id}"}}}},
        tags={"promoted_model_version": str(version)},
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("eval_report"),
    job=promotion_job,
    name="promotion_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
)
def promotion_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry, pipeline: PipelineResource,
                     mlflow: MlflowResource):
    """Promotes each new eval report's candidate when its gate passed; skips with the lift and threshold otherwise.

    Each tick first reconciles the served pointer and the registry alias with the promotion
    history, closing the window a crash between the two writes would leave."""
    config = pipeline.config
    for line in reconcile_served(config, mlflow):
        context.log.warning(f"reconciled: {line}")
    return promotion_decision(asset_event)


def reconcile_served(config, mlflow: MlflowResource, repair: str | None = None) -> list[str]:
    """`lib.promotion.reconcile` with this config's registry (the CLI calls it too, with its `--repair`)."""
    tracker = mlflow.tracker(config)

    def alias_version():
        version = tracker.alias_version(config.registered_model_name)
        return None if version is None else str(version.version)

    return reconcile(config.artifacts_dir, alias_version, tracker.set_alias, repair)
