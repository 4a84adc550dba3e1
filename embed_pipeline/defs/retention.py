"""Retention: after each successful training run, delete run folders beyond `retention.keep_versions`
per asset, never what serving, the champion or a rollback still needs, nor a running run's files."""

from pathlib import Path

import dagster as dg

from embed_pipeline.defs.jobs import training_job
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.artifacts import prune
from embed_pipeline.lib.config import PipelineConfig
from embed_pipeline.lib.promotion import read_served, rollback_targets

IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED,
               dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.CANCELING]


def protected_paths(config: PipelineConfig, champion_model_dir: str | None) -> set[Path]:
    """Every file or folder that serving, the champion or the last promotions (rollback targets) name."""
    entries = rollback_targets(config.artifacts_dir, config.retention.keep_promotions)
    served = read_served(config.artifacts_dir)
    paths = {p for e in entries + ([served] if served else []) for p in (e.get("model_dir"), e.get("index_path"), e.get("lexical_path")) if p}
    if champion_model_dir:
        paths.add(champion_model_dir)
    return {Path(p) for p in paths}


def apply_retention(config: PipelineConfig, mlflow: MlflowResource, instance: dg.DagsterInstance) -> list[Path]:
    champion = mlflow.tracker(config).alias_version(config.registered_model_name)
    busy = {r.run_id for r in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS))}
    return prune(config.artifacts_dir, config.retention.keep_versions,
                 protected_paths(config, champion.tags.get("model_path") if champion else None), busy)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[training_job], name="retention_sensor",
                      default_status=dg.DefaultSensorStatus.RUNNING)
def retention_sensor(context: dg.RunStatusSensorContext, pipeline: PipelineResource, mlflow: MlflowResource):
    """Keeps the newest `retention.keep_versions` run folders per asset after each successful training run."""
    removed = apply_retention(pipeline.config, mlflow, context.instance)
    return dg.SkipReason(f"retention: removed {len(removed)} old run folder(s)")
