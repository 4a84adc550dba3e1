"""The whole graph at a glance: assets, checks, jobs, the nightly schedule and the promotion sensor."""

import dagster as dg

from embed_pipeline.defs import checks
from embed_pipeline.defs.assets import embeddings, evaluation, index, model, negatives, pairs, promotion, sources
from embed_pipeline.defs.corpus_sensor import corpus_change_sensor, served_index_sensor
from embed_pipeline.defs.jobs import promotion_job, reembed_job, served_index_job, training_job
from embed_pipeline.defs.query_generators import OfflineQueryGenerator, QueryGeneratorResource
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.defs.schedules import nightly_retraining
from embed_pipeline.defs.sensors import promotion_sensor


def build_defs(config_path: str = "", query_generator: QueryGeneratorResource | None = None) -> dg.Definitions:
    """Definitions bound to one config file (empty: $EMBED_PIPELINE_CONFIG, else the demo).

    `query_generator` makes synthetic queries: the offline generator unless an LLM one is given."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([sources, pairs, negatives, model, index, embeddings, evaluation, promotion]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[training_job, promotion_job, reembed_job, served_index_job],
        schedules=[nightly_retraining],
        sensors=[promotion_sensor, corpus_change_sensor, served_index_sensor],
        resources={"pipeline": PipelineResource(config_path=config_path), "mlflow": MlflowResource(),
                   "query_generator": query_generator or OfflineQueryGenerator()},
    )


defs = build_defs()
