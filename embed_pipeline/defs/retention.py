"""Retention: after each successful training run, delete run folders beyond `retention.keep_versions`
per asset, and the snapshots, handles, cached vectors and shard embeddings no kept run or model
needs (lib/retention.py); never what serving, the champion or a rollback still needs, nor a
running run's files."""

import dataclasses
from pathlib import Path

import dagster as dg

from embed_pipeline.defs.handles import handle_asset_key, handles_dir
from embed_pipeline.defs.jobs import training_job
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.config import PipelineConfig
from embed_pipeline.lib.promotion import read_served, rollback_targets
from embed_pipeline.lib.retention import RetentionResult, apply_retention_plan, prune_logged_models

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


def pinned_runs(instance: dg.DagsterInstance) -> set[str]:
    """Runs holding the latest materialisation of an asset that has handles: a later run that does
    not select that asset loads its handle from there."""
    folder = handles_dir(instance)
    keys = {handle_asset_key(path) for path in folder.glob("*/*.json")} if folder.is_dir() else set()
    events = (instance.get_latest_materialization_event(key) for key in keys)
    return {event.run_id for event in events if event is not None}


def apply_retention(config: PipelineConfig, mlflow: MlflowResource, instance: dg.DagsterInstance) -> RetentionResult:
    tracker = mlflow.tracker(config)
    champion = tracker.alias_version(config.registered_model_name)
    busy = instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS))
    result = apply_retention_plan(
        config.artifacts_dir, config.retention.keep_versions,
        protected_paths(config, champion.tags.get("model_path") if champion else None),
        busy_runs={r.dagster_run.run_id for r in busy},
        busy_since=min((r.create_timestamp.timestamp() for r in busy), default=None),
        handles_dir=handles_dir(instance), pinned_runs=pinned_runs(instance),
    )
    copies = prune_logged_models(tracker.client, config.registered_model_name, config.artifacts_dir)
    return dataclasses.replace(result, removed={**result.removed, "logged model copies": copies})


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[training_job], name="retention_sensor",
                      default_status=dg.DefaultSensorStatus.RUNNING)
def retention_sensor(context: dg.RunStatusSensorContext, pipeline: PipelineResource, mlflow: MlflowResource):
    """Keeps the newest `retention.keep_versions` runs' folders (and the cached vectors of kept models) after each successful training run."""
    removed = apply_retention(pipeline.config, mlflow, context.instance)
    return dg.SkipReason(f"retention: removed {removed.summary()}")
