import dagster as dg

from embed_pipeline.defs.jobs import training_job

NIGHTLY_CRON = "0 2 * * *"


def nightly_schedule(cron: str = NIGHTLY_CRON, status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING,
                     should_execute=None, job=training_job, name: str = "nightly_retraining") -> dg.ScheduleDefinition:
    """The nightly retraining schedule. The lifecycle test runs the same definition on a one-minute
    cron with `should_execute` (a tick's gate) deciding when "night" comes; each EmbeddingPipeline
    component instance gets one with its own `job` and `name` (defs/instance.py)."""
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=status,
        should_execute=should_execute,
        tags={"embed_pipeline/trigger": "nightly"},
        description="Retrain from the latest pairs every night at 02:00 UTC; the promotion sensor decides what ships.",
    )


nightly_retraining = nightly_schedule()
