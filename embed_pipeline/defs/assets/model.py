"""The fine-tuned embedding model, tracked and registered in MLflow."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.config import config_as_params
from embed_pipeline.lib.corpus import passage_texts
from embed_pipeline.lib.training import library_versions, mlflow_callback, train_model, training_columns


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
    tracker = mlflow.tracker(config)
    passages = read_corpus(corpus)
    triples = pd.read_parquet(hard_negatives["path"])
    texts = dict(zip(passages["passage_id"], passage_texts(passages), strict=True))
    columns, padded = training_columns(triples, texts, config.mining.num_negatives, config.training.seed)
    model_dir = config.artifacts_dir / "models" / context.run_id
    tags = {"dagster_run_id": context.run_id, "training_pairs_version": training_pairs["version"]}
    with tracker.open_run(run_name=f"train-{context.run_id[:8]}", tags=tags) as run_id:
        tracker.log_params(run_id, {**config_as_params(config), "data.training_rows": len(triples),
                                    "data.padded_negatives": padded, "data.training_pairs_version": training_pairs["version"],
                                    "data.base_model_fingerprint": hard_negatives["base_model_fingerprint"]})
        tracker.set_tags(run_id, library_versions())
        result = train_model(
            config.resolved_base_model,
            columns,
            config.training,
            output_dir=model_dir,
            checkpoint_dir=config.artifacts_dir / "checkpoints" / context.run_id,
            callbacks=[mlflow_callback(tracker, run_id)],
            on_progress=context.log.info,
        )
        tracker.log_metrics(run_id, {"train_seconds": result.train_seconds, "pairs_per_second": result.pairs_per_second,
                                     "final_loss": result.final_loss}, step=result.steps)
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
            "steps": result.steps,
            "training_rows": result.pairs,
            "padded_negatives": padded,
            "train_seconds": round(result.train_seconds, 1),
            "pairs_per_second": round(result.pairs_per_second, 2),
            "final_loss": round(result.final_loss, 4),
        },
    )
