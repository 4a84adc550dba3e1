"""Jobs: the retraining graph, and promotion (run by the sensor, never by the nightly schedule)."""

import dagster as dg

PROMOTION_ASSETS = dg.AssetSelection.assets("served_model")
# Re-embedding for the served model runs apart from training: partitioned (per shard) assets
# cannot share one job with the unpartitioned training graph (docs/scaling.md).
REEMBED_ASSETS = dg.AssetSelection.assets("corpus_embeddings")
SERVED_INDEX_ASSETS = dg.AssetSelection.assets("served_index")

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.all() - PROMOTION_ASSETS - REEMBED_ASSETS - SERVED_INDEX_ASSETS,
    description="Pairs -> hard negatives -> fine-tuned model -> FAISS index -> eval report (with the promotion gate).",
)

promotion_job = dg.define_asset_job(
    "promotion_job",
    selection=PROMOTION_ASSETS,
    description="Make a gated candidate the champion: MLflow alias + served pointer, atomically.",
)

reembed_job = dg.define_asset_job(
    "reembed_job",
    selection=REEMBED_ASSETS,
    executor_def=dg.in_process_executor,
    description="Re-embed corpus shards with the served model (one partition per shard; a backfill of many shards is one run).",
)

served_index_job = dg.define_asset_job(
    "served_index_job",
    selection=SERVED_INDEX_ASSETS,
    executor_def=dg.in_process_executor,
    description="Rebuild the served model's index from its shard embeddings and switch the served pointer to it.",
)
