"""The whole graph at a glance: assets, checks, jobs, the nightly schedule and the sensors.

As a code location in an existing Dagster deployment: `python_module: embed_pipeline.definitions`
in its workspace.yaml, with the config file's path in $EMBED_PIPELINE_CONFIG of the code server
(read at run time through `dg.EnvVar`); or a module of your own calling
`build_definitions(config_path)` for a config of its own. Nothing here depends on the working
directory or on a checkout of this repo.
"""

import dagster as dg

from embed_pipeline.defs import checks
from embed_pipeline.defs.assets import evaluation, index, model, negatives, pairs, promotion, serving, sources
from embed_pipeline.defs.corpus_sensor import corpus_change_sensor, served_index_sensor
from embed_pipeline.defs.handles import HandleIOManager
from embed_pipeline.defs.jobs import promotion_job, reembed_job, served_index_job, training_job
from embed_pipeline.defs.query_generators import OfflineQueryGenerator, QueryGeneratorResource
from embed_pipeline.defs.recovery import orphaned_mlflow_runs_sensor
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.defs.promotion_sensor import promotion_sensor
from embed_pipeline.defs.retention import retention_sensor
from embed_pipeline.defs.schedules import nightly_retraining

CONFIG_ENV_VAR = "EMBED_PIPELINE_CONFIG"


def build_definitions(config_path: str | dg.EnvVar, query_generator: QueryGeneratorResource | None = None,
               schedule: dg.ScheduleDefinition | None = None, executor: dg.ExecutorDefinition | None = None) -> dg.Definitions:
    """Definitions bound to one config file (a path, or `dg.EnvVar` naming the variable that holds it).

    `query_generator` makes synthetic queries when the YAML says `synthetic.generator: offline`
    (default: inverse cloze + titles); `llm` in the YAML builds the LLM client from its settings.
    `schedule` replaces the nightly schedule (same factory, another cron); `executor` is the
    default executor of the jobs (Dagster's multiprocess one when None; Kubernetes users pass theirs)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([sources, pairs, negatives, model, index, serving, evaluation, promotion]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[training_job, promotion_job, reembed_job, served_index_job],
        schedules=[schedule or nightly_retraining],
        sensors=[promotion_sensor, corpus_change_sensor, served_index_sensor, retention_sensor, orphaned_mlflow_runs_sensor],
        resources={"pipeline": PipelineResource(config_path=config_path), "mlflow": MlflowResource(),
                   "query_generator": query_generator or OfflineQueryGenerator(), "io_manager": HandleIOManager()},
        executor=executor,
    )


build_defs = build_definitions  # the name tests and older user modules import

# The Definitions edge: `dagster dev` / the daemon read the config path from this variable
# (`embed-pipeline ui` sets it; README "The Dagster UI").
defs = build_definitions(dg.EnvVar(CONFIG_ENV_VAR))
