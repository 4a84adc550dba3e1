"""The promotion sensor: a new eval report that passed its gate becomes the champion, once."""

import dagster as dg

from embed_pipeline.defs import metadata as md
from embed_pipeline.defs.jobs import promotion_job


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
        run_config={"ops": {"served_model": {"config": {"report_path": meta[md.REPORT_PATH].value}}}},
        tags={"promoted_model_version": str(version)},
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("eval_report"),
    job=promotion_job,
    name="promotion_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def promotion_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """Promotes each new eval report's candidate when its gate passed; skips with the lift and threshold otherwise."""
    return promotion_decision(asset_event)
