"""Resources: where the pipeline's config comes from, and the MLflow store.

Not dagster-mlflow: its releases pin old Dagster versions and its hook ends the MLflow run early
on multi-step jobs. A small resource over `MlflowClient` (lib/tracking.py) is all we need.
"""

import os

import dagster as dg
from pydantic import Field

from embed_pipeline.lib.config import CONFIG_ENV_VAR, PipelineConfig, load_config
from embed_pipeline.lib.tracking import Tracker


class PipelineResource(dg.ConfigurableResource):
    """The YAML config contract (README "Config"): corpus, pairs, eval set, model and knobs."""

    config_path: str = Field(
        default="",
        description=f"Path of the pipeline YAML. Empty: ${CONFIG_ENV_VAR}, else the bundled demo config.",
    )

    def load(self) -> PipelineConfig:
        return load_config(self.config_path or os.environ.get(CONFIG_ENV_VAR) or None)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry. Empty settings take the pipeline config's values
    (default: a SQLite store and an artifact folder under `artifacts_dir`)."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty = from the pipeline config.")
    experiment: str = Field(default="embed-pipeline", description="MLflow experiment name.")

    def tracker(self, config: PipelineConfig) -> Tracker:
        uri = self.tracking_uri or config.tracking_uri
        config.artifacts_dir.mkdir(parents=True, exist_ok=True)
        return Tracker(uri, config.mlflow_artifacts_uri, self.experiment)
