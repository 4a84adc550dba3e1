"""From mined training triples to a registered model: the one path the asset and the benchmarks share.

Reads like a sentence-transformers training script: hold out a dev split, shape the columns, train
(one process, `training.processes` DDP ranks through torchrun, or with `compute.engine: ray`
`compute.train_workers` Ray Train workers across a cluster's nodes), save, log, register. Around
it, one MLflow run: every config value and data count as params, per-step loss and dev nDCG@10 as
metrics, library versions, device and precision as tags, the model logged with MLflow's
sentence-transformers flavour, and one new registered version whose source is that logged model.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.lib.config import PipelineConfig, config_as_params
from embed_pipeline.lib.corpus import passage_texts
from embed_pipeline.lib.distributed_training import MlflowTarget, build_callbacks, train_distributed
from embed_pipeline.lib.ray_training import train_on_ray
from embed_pipeline.lib.retrieval import dev_relevance
from embed_pipeline.lib.tracking import Tracker, library_versions, mlflow_callback
from embed_pipeline.lib.training import TrainResult, train_model
from embed_pipeline.lib.training_data import checkpoint_key, dev_set, split_dev, training_columns


@dataclass(frozen=True)
class TrainedModel:
    """A fine-tuned model on disk, its MLflow run and registered version, and what it was trained on."""

    model_dir: Path
    mlflow_run_id: str
    name: str  # registered model name
    version: str  # registered version
    training: TrainResult  # steps, timings, pairs/s, loss, device, best dev nDCG@10, processes
    training_rows: int  # rows trained on (after the dev split)
    dev_rows: int
    dev_queries: int  # 0: no dev split, the last checkpoint is the model
    dev_passages: int
    negatives_per_row: int
    padded_negatives: int  # random negatives added to rows with fewer mined ones
    checkpoint_key: str  # the folder under checkpoint_root a retry resumes from
    held_out: pd.DataFrame  # the dev rows held out of training (query, passage_id): the hybrid's weight is chosen on them
    ray_job_url: str | None = None  # the Ray dashboard's page of the job that trained it (compute.engine: ray)
    reused_from_run: str | None = None  # the Dagster run that trained and registered this version, when reused (not retrained)

    @property
    def precision(self) -> str:
        return self.training.precision

    @property
    def dev_relevant(self) -> dict[str, set[str]]:
        """Each held-out dev query and its positives (empty when there was no dev split)."""
        return dev_relevance(self.held_out)[1]


def fine_tune(
    passages: pd.DataFrame,
    triples: pd.DataFrame,
    config: PipelineConfig,
    tracker: Tracker,
    *,
    model_dir: Path,
    checkpoint_root: Path,
    data_versions: dict[str, str],
    base_fingerprint: str,
    tags: dict[str, str],
    run_name: str = "train",
    on_progress: Callable[[str], None] | None = None,
    callbacks: Sequence[str] = (),
    reuse_if_died: Callable[[str], bool] | None = None,
) -> TrainedModel:
    """Fine-tune `config.base_model` on `triples` (query, passage_id, negatives[, source, positive_text]).

    `passages` is the corpus (passage_id, title, text): positives and negatives are looked up in it.
    `data_versions` names the inputs' versions (e.g. {"training_pairs": ..., "hard_negatives": ...}):
    with the training settings and `base_fingerprint` (the base model's content hash) they key the
    checkpoint folder, so a retry of the same job resumes instead of starting over. `tags` go on the
    MLflow run and the registered version. `callbacks` are `module:factory` import paths of extra
    Trainer callbacks (built in every training process; see lib/distributed_training.py).
    Whatever fails, the MLflow run ends FAILED and nothing is registered.

    A run killed after registering its model (say during indexing) left a whole registered
    version: with `reuse_if_died(dagster_run_id) -> bool` (True when that run died), the newest
    version registered for the same checkpoint key (same data, training settings and base model)
    whose model folder is still on disk is returned as it is (`reused_from_run` names the run)
    instead of training again from the base model and leaving that version an orphan.
    """
    settings = config.training
    on_ray = config.compute.engine == "ray"
    if on_ray:  # N Ray Train workers are N DDP processes: same batches, same per-rank checkpoint state
        settings = dataclasses.replace(settings, processes=config.compute.train_workers)
    texts = dict(zip(passages["passage_id"], passage_texts(passages), strict=True))
    train_rows, dev_rows = split_dev(triples, settings.dev_share, settings.dev_max_queries, settings.seed,
                                     config.leakage.near_duplicate_jaccard, config.leakage.shingle_words)
    columns, padded = training_columns(train_rows, texts, settings.num_negatives, settings.seed)
    dev = dev_set(dev_rows, texts, settings.dev_max_passages, settings.seed) if len(dev_rows) else None
    job_key = checkpoint_key("-".join(data_versions.values()), settings, f"{config.base_model}:{base_fingerprint}")
    checkpoint_dir = Path(checkpoint_root) / job_key
    if reuse_if_died is not None and (found := registered_by_dead_run(tracker, config.registered_model_name, job_key,
                                                                     reuse_if_died)) is not None:
        version, run_id, dagster_run = found
        if on_progress:
            on_progress(f"reusing model v{version.version} ({version.tags['model_path']}): registered by run {dagster_run}, "
                        "which died afterwards; same data, settings and base model, so it is not trained again")
        return TrainedModel(
            model_dir=Path(version.tags["model_path"]), mlflow_run_id=run_id, name=config.registered_model_name,
            version=str(version.version), training=_recorded_result(tracker, run_id, Path(version.tags["model_path"]), len(train_rows)),
            training_rows=len(train_rows), dev_rows=len(dev_rows), dev_queries=len(dev.queries) if dev else 0,
            dev_passages=len(dev.corpus) if dev else 0, negatives_per_row=settings.num_negatives, padded_negatives=padded,
            checkpoint_key=job_key, held_out=dev_rows[["query", "passage_id"]].reset_index(drop=True),
            reused_from_run=dagster_run,
        )

    ray_job_url = None
    if on_ray:  # before the MLflow run opens: a cluster that cannot do the work fails the step before any work
        from embed_pipeline.lib.ray_runtime import connect_and_check

        ray_job_url = connect_and_check(config.compute, config.artifacts_dir).job_url

    with tracker.open_run(run_name=run_name, tags=tags) as run_id:
        tracker.log_params(run_id, {
            **config_as_params(config),
            "data.training_rows": len(train_rows), "data.dev_rows": len(dev_rows),
            "data.dev_group_synthetic_rows": len(triples) - len(train_rows) - len(dev_rows),  # in a dev group: trained on by neither side
            "data.dev_queries": len(dev.queries) if dev else 0, "data.dev_passages": len(dev.corpus) if dev else 0,
            "data.padded_negatives": padded, "data.corpus_passages": len(passages),
            **{f"data.{name}_version": version for name, version in data_versions.items()},
            "data.base_model_fingerprint": base_fingerprint, "checkpoint_key": job_key,
        })
        tracker.set_tags(run_id, library_versions())
        if settings.processes == 1 and not on_ray:
            result = train_model(
                config.resolved_base_model, columns, settings, output_dir=model_dir, checkpoint_dir=checkpoint_dir,
                dev=dev, callbacks=[mlflow_callback(tracker, run_id), *build_callbacks(callbacks)], on_progress=on_progress,
            )
        else:
            experiment = tracker.client.get_experiment(tracker.experiment_id)
            target = MlflowTarget(tracker.tracking_uri, experiment.name, experiment.artifact_location, run_id)
            job_dir = checkpoint_dir.with_name(f"{job_key}.job-{uuid.uuid4().hex[:8]}")
            if on_ray:
                result = train_on_ray(
                    config.resolved_base_model, columns, settings, output_dir=model_dir, checkpoint_dir=checkpoint_dir,
                    compute=config.compute, job_dir=job_dir, dev=dev, mlflow=target, callbacks=callbacks, on_progress=on_progress,
                )
            else:
                result = train_distributed(
                    config.resolved_base_model, columns, settings, output_dir=model_dir, checkpoint_dir=checkpoint_dir,
                    processes=settings.processes, job_dir=job_dir, dev=dev, mlflow=target, callbacks=callbacks, on_progress=on_progress,
                )
        summary = {"train_seconds": result.train_seconds, "dev_eval_seconds": result.dev_seconds,
                   "pairs_per_second": result.pairs_per_second, "final_loss": result.final_loss,
                   "resumed_from_step": result.resumed_from_step}
        if result.best_dev_ndcg_at_10 is not None:
            summary["best_dev_ndcg_at_10"] = result.best_dev_ndcg_at_10
        if result.merged_dev_ndcg_at_10 is not None:
            summary["merged_dev_ndcg_at_10"] = result.merged_dev_ndcg_at_10
        tracker.log_metrics(run_id, summary, step=result.steps)
        tracker.set_tags(run_id, {"device": result.device, "precision": result.precision, "processes": result.processes})
        version = tracker.register_embedding_model(config.registered_model_name, run_id, model_dir,
                                                   query_prompt=config.query_prompt, passage_prompt=config.corpus_prompt,
                                                   tags={**tags, "model_path": str(model_dir), "checkpoint_key": job_key})

    return TrainedModel(
        model_dir=Path(model_dir), mlflow_run_id=run_id, name=config.registered_model_name, version=version, training=result,
        training_rows=len(train_rows), dev_rows=len(dev_rows), dev_queries=len(dev.queries) if dev else 0,
        dev_passages=len(dev.corpus) if dev else 0, negatives_per_row=settings.num_negatives, padded_negatives=padded,
        checkpoint_key=job_key, held_out=dev_rows[["query", "passage_id"]].reset_index(drop=True), ray_job_url=ray_job_url,
    )


def registered_by_dead_run(tracker: Tracker, name: str, job_key: str, died: Callable[[str], bool]):
    """(model version, MLflow run id, Dagster run id) of the newest version of `name` registered for
    `job_key` by a Dagster run that `died`, whose model folder is still whole on disk; else None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = version.tags or {}
        path = Path(tags.get("model_path", ""))
        if tags.get("checkpoint_key") != job_key or not tags.get("model_path") or not (path / "config.json").exists() \
                and not (path / "modules.json").exists():
            continue
        if tags.get("dagster_run_id") and died(tags["dagster_run_id"]):
            return version, version.run_id, tags["dagster_run_id"]
    return None


def _recorded_result(tracker: Tracker, run_id: str, model_dir: Path, rows: int) -> TrainResult:
    """The `TrainResult` a registered version's MLflow run recorded (its summary metrics and tags)."""
    run = tracker.client.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    history = tracker.client.get_metric_history(run_id, "final_loss")
    return TrainResult(
        model_dir=model_dir, steps=history[-1].step if history else 0, pairs=rows,
        train_seconds=metrics.get("train_seconds", 0.0), pairs_per_second=metrics.get("pairs_per_second", 0.0),
        final_loss=metrics.get("final_loss", float("nan")), device=tags.get("device", "unrecorded"),
        resumed_from_step=history[-1].step if history else 0, best_dev_ndcg_at_10=metrics.get("best_dev_ndcg_at_10"),
        dev_seconds=metrics.get("dev_eval_seconds", 0.0), bf16=tags.get("precision", "").startswith("bf16"),
        processes=int(tags.get("processes", 1)), merged_dev_ndcg_at_10=metrics.get("merged_dev_ndcg_at_10"),
    )
