"""The fine-tuned embedding model, tracked and registered in MLflow."""

import dagster as dg
import pandas as pd

from embed_pipeline.defs.assets.common import output_dir, read_corpus
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, ModelHandle, NegativesHandle, PairsHandle
from embed_pipeline.lib.fine_tune import fine_tune
from embed_pipeline.lib.io import write_parquet


@dg.asset(group_name="model", kinds={"pytorch", "mlflow"}, pool="gpu")
def embedding_model(
    context: dg.AssetExecutionContext,
    corpus: CorpusHandle,
    training_pairs: PairsHandle,
    hard_negatives: NegativesHandle,
    pipeline: PipelineResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The fine-tuned sentence-transformers model (one MLflow run and one registered version per materialisation)."""
    config = pipeline.config
    tags = {"dagster_run_id": context.run_id, "training_pairs_version": training_pairs.version,
            "config_hash": pipeline.config_hash}
    model = fine_tune(
        read_corpus(corpus).frame(),
        pd.read_parquet(hard_negatives.path),
        config,
        mlflow.tracker(config),
        model_dir=output_dir(context, config) / "model",
        checkpoint_root=config.artifacts_dir / "checkpoints",
        data_versions={"training_pairs": training_pairs.version, "hard_negatives": hard_negatives.version},
        base_fingerprint=hard_negatives.base_model_fingerprint,
        tags=tags,
        run_name=f"train-{context.run_id[:8]}",
        on_progress=context.log.info,
        reuse_if_died=lambda run_id: _died(context.instance, run_id, context.run_id),
    )
    result = model.training
    dev_path = write_parquet(model.held_out, output_dir(context, config) / "dev_queries.parquet")
    return dg.MaterializeResult(
        value=ModelHandle(str(model.model_dir), model.mlflow_run_id, model.name, model.version, str(dev_path)),
        metadata={
            "mlflow_run_id": model.mlflow_run_id,
            "registered_model": f"{model.name} v{model.version}",
            "model_dir": dg.MetadataValue.path(str(model.model_dir)),
            "device": result.device,
            "precision": model.precision,
            "processes": result.processes,
            "steps": result.steps,
            "resumed_from_step": result.resumed_from_step,
            "reused_from_run": model.reused_from_run or "no (trained in this run)",
            "training_rows": result.pairs,
            "dev_queries": model.dev_queries,
            "best_dev_ndcg@10": round(result.best_dev_ndcg_at_10, 4) if result.best_dev_ndcg_at_10 is not None else "n/a",
            "base_merge": config.training.base_merge,
            "merged_dev_ndcg@10": round(result.merged_dev_ndcg_at_10, 4) if result.merged_dev_ndcg_at_10 is not None else "n/a",
            "negatives_per_row": model.negatives_per_row,
            "padded_negatives": model.padded_negatives,
            "train_seconds": round(result.train_seconds, 1),
            "dev_eval_seconds": round(result.dev_seconds, 1),
            "pairs_per_second": round(result.pairs_per_second, 2),
            "final_loss": round(result.final_loss, 4),
            "config_hash": pipeline.config_hash,
            **({"ray_dashboard": dg.MetadataValue.url(model.ray_job_url)} if model.ray_job_url else {}),
        },
    )


def _died(instance: dg.DagsterInstance, run_id: str, this_run: str) -> bool:
    """Whether the Dagster run `run_id` (not this one) ended without success (killed, failed, canceled)."""
    if run_id == this_run:
        return False
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
