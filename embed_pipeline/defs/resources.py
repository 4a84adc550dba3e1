"""Resources: the pipeline's config (one snapshot per run) and the MLflow store.

Not dagster-mlflow: its releases pin old Dagster versions and its hook ends the MLflow run early
on multi-step jobs. A small resource over `MlflowClient` (lib/tracking.py) is all we need.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from embed_pipeline.lib.config import ConfigSnapshot, PipelineConfig, config_hash, load_config, load_snapshot, write_snapshot
from embed_pipeline.lib.tracking import RegistryError, Tracker

SNAPSHOT_TAG = "embed_pipeline/config_snapshot"
CONFIG_HASH_TAG = "embed_pipeline/config_hash"


def run_snapshot(instance: dg.DagsterInstance, run_id: str, config_path: str) -> ConfigSnapshot:
    """The config run `run_id` uses: the snapshot its first step took, else a new one taken now.

    The snapshot's location and hash are run tags, so every later step (in this process or
    another) reads the same values even if the YAML was edited in between.
    """
    run = instance.get_run_by_id(run_id)
    if run is not None and SNAPSHOT_TAG in run.tags and Path(run.tags[SNAPSHOT_TAG]).is_file():
        return load_snapshot(Path(run.tags[SNAPSHOT_TAG]))
    config = load_config(config_path)
    target = config.artifacts_dir / "runs" / run_id / "config.json"
    snapshot = write_snapshot(config, Path(config_path).resolve(), target)
    if run is not None:
        instance.add_run_tags(run_id, {SNAPSHOT_TAG: str(target), CONFIG_HASH_TAG: snapshot.hash})
    return snapshot


class PipelineResource(dg.ConfigurableResource):
    """The YAML config contract (README "The config file"), frozen per run.

    In a run, every step sees the snapshot taken when the run's first step started; outside a run
    (sensors, the CLI's checks) `config` reads the file as it is now.
    """

    config_path: str = Field(description="Path of the pipeline YAML (README: `embed-pipeline run --config`).")
    _snapshot: ConfigSnapshot | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None and context.instance is not None:
            self._snapshot = run_snapshot(context.instance, run.run_id, self.config_path)

    @property
    def config(self) -> PipelineConfig:
        return self._snapshot.config if self._snapshot is not None else load_config(self.config_path)

    @property
    def config_hash(self) -> str:
        return self._snapshot.hash if self._snapshot is not None else config_hash(self.config)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry. Empty settings take the pipeline config's values
    (default: a SQLite store and an artifact folder under `artifacts_dir`)."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty = from the pipeline config.")
    experiment: str = Field(default="embed-pipeline", description="MLflow experiment name.")

    def tracker(self, config: PipelineConfig) -> Tracker:
        """A tracker on the configured store; `RegistryError` (a clear one-line failure) when it cannot be reached."""
        uri = self.tracking_uri or config.tracking_uri
        config.artifacts_dir.mkdir(parents=True, exist_ok=True)
        try:
            return Tracker(uri, config.mlflow_artifacts_uri, self.experiment)
        except Exception as exc:  # noqa: BLE001 - connection refused, a locked or missing store, HTTP errors ...
            raise RegistryError(f"cannot reach the MLflow store at {uri}: {' '.join(str(exc).split())[:300]}") from exc
