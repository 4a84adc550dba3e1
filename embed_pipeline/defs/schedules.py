import dagster as dg

from embed_pipeline.defs.jobs import training_job

nightly_retraining = dg.ScheduleDefinition(
    name="nightly_retraining",
    job=training_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain from the latest pairs every night at 02:00 UTC; the promotion sensor decides what ships.",
)
