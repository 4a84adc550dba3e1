"""Jobs: the retraining graph, and promotion (run by the sensor, never by the nightly schedule)."""

import dagster as dg

PROMOTION_ASSETS = dg.AssetSelection.assets("served_model")

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.all() - PROMOTION_ASSETS,
    description="Pairs -> hard negatives -> fine-tuned model -> FAISS index -> eval report (with the promotion gate).",
)

promotion_job = dg.define_asset_job(
    "promotion_job",
    selection=PROMOTION_ASSETS,
    description="Make a gated candidate the champion: MLflow alias + served pointer, atomically.",
)
