"""The fine-tuned embedding model, tracked and registered in MLflow."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.config import config_as_params
from embed_pipeline.lib.corpus import passage_texts
from embed_pipeline.lib.tracking import library_versions, mlflow_callback
from embed_pipeline.lib.training import train_model
from embed_pipeline.lib.training_data import checkpoint_key, dev_set, split_dev, training_columns


@dg.asset(group_name="model", kinds={"pytorch", "mlflow"}, pool="gpu")
def embedding_model(
    context: dg.AssetExecutionContext,
    corpus: dict,
    training_pairs: dict,
    hard_negatives: dict,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The fine-tuned sentence-transformers model (one MLflow run and one registered version per materialisation)."""
    config = pipeline.load()
    settings = config.training
    tracker = mlflow.tracker(config)
    passages = read_corpus(corpus)
    triples = pd.read_parquet(hard_negatives["path"])
    texts = dict(zip(passages["passage_id"], passage_texts(passages), strict=True))
    train_rows, dev_rows = split_dev(triples, settings.dev_share, settings.dev_max_queries, settings.seed)
    columns, padded = training_columns(train_rows, texts, settings.num_negatives, settings.seed)
    dev = dev_set(dev_rows, texts, settings.dev_max_passages, settings.seed) if len(dev_rows) else None
    data_version = f"{training_pairs['version']}-{hard_negatives.get('version', '')}"
    job_key = checkpoint_key(data_version, settings, f"{config.base_model}:{hard_negatives['base_model_fingerprint']}")
    model_dir = config.artifacts_dir / "models" / context.run_id
    tags = {"dagster_run_id": context.run_id, "training_pairs_version": training_pairs["version"]}
    with tracker.open_run(run_name=f"train-{context.run_id[:8]}", tags=tags) as run_id:
        tracker.log_params(run_id, {
            **config_as_params(config), "data.training_rows": len(train_rows), "data.dev_rows": len(dev_rows),
            "data.dev_queries": len(dev.queries) if dev else 0, "data.dev_passages": len(dev.corpus) if dev else 0,
            "data.padded_negatives": padded, "data.training_pairs_version": training_pairs["version"],
            "data.hard_negatives_version": hard_negatives.get("version", ""), "data.corpus_passages": len(passages),
            "data.base_model_fingerprint": hard_negatives["base_model_fingerprint"], "checkpoint_key": job_key,
        })
        tracker.set_tags(run_id, library_versions())
        result = train_model(
            config.resolved_base_model,
            columns,
            settings,
            output_dir=model_dir,
            checkpoint_dir=config.artifacts_dir / "checkpoints" / job_key,
            dev=dev,
            callbacks=[mlflow_callback(tracker, run_id)],
            on_progress=context.log.info,
        )
        summary = {"train_seconds": result.train_seconds, "dev_eval_seconds": result.dev_seconds,
                   "pairs_per_second": result.pairs_per_second, "final_loss": result.final_loss,
                   "resumed_from_step": result.resumed_from_step}
        if result.best_dev_ndcg_at_10 is not None:
            summary["best_dev_ndcg_at_10"] = result.best_dev_ndcg_at_10
        tracker.log_metrics(run_id, summary, step=result.steps)
        precision = "bf16 autocast" if result.bf16 else "fp32"
        tracker.set_tags(run_id, {"device": result.device, "precision": precision})
        tracker.log_artifacts(run_id, model_dir, "model")
        version = tracker.register_model(config.registered_model_name, run_id, "model",
                                         tags={**tags, "model_path": str(model_dir)})
    return dg.MaterializeResult(
        value={"model_dir": str(model_dir), "run_id": run_id, "name": config.registered_model_name, "version": version},
        metadata={
            "mlflow_run_id": run_id,
            "registered_model": f"{config.registered_model_name} v{version}",
            "model_dir": dg.MetadataValue.path(str(model_dir)),
            "device": result.device,
            "precision": precision,
            "steps": result.steps,
            "resumed_from_step": result.resumed_from_step,
            "training_rows": result.pairs,
            "dev_queries": len(dev.queries) if dev else 0,
            "best_dev_ndcg@10": round(result.best_dev_ndcg_at_10, 4) if result.best_dev_ndcg_at_10 is not None else "n/a",
            "negatives_per_row": settings.num_negatives,
            "padded_negatives": padded,
            "train_seconds": round(result.train_seconds, 1),
            "dev_eval_seconds": round(result.dev_seconds, 1),
            "pairs_per_second": round(result.pairs_per_second, 2),
            "final_loss": round(result.final_loss, 4),
        },
    )
