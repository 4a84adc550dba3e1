"""MLflow tracking and registry through `MlflowClient` (explicit run ids, no global active run).

A global `mlflow.start_run()` leaks across Dagster steps in one process; an explicit client and
run id keeps each training run's lifetime in the caller's hands (`open_run` always closes it).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

MAX_PARAM_CHARS = 6000
CHAMPION_ALIAS = "champion"


class RegistryError(RuntimeError):
    """The model registry could not answer, or answered something inconsistent: fail closed."""


def metric_name(name: str) -> str:
    """MLflow rejects '@' (and some other characters) in metric names: recall@10 -> recall_at_10."""
    return re.sub(r"[^\w\-. /]", "_", name.replace("@", "_at_"))


class Tracker:
    def __init__(self, tracking_uri: str, artifact_location: str | None, experiment: str = "embed-pipeline"):
        """`artifact_location` is used when this creates the experiment; with a tracking server (http/https)
        it is ignored and the server's artifact store (`mlflow-artifacts:`) takes the artifacts."""
        from mlflow.tracking import MlflowClient

        from embed_pipeline.lib.config import SERVER_SCHEMES

        if tracking_uri.startswith(SERVER_SCHEMES):
            artifact_location = None
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location=artifact_location)
        )

    @contextlib.contextmanager
    def open_run(self, run_name: str, tags: dict[str, str]) -> Iterator[str]:
        """A run that stays open for the block and ends FINISHED, or FAILED if the block raises."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, object]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def register_model(self, name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> str:
        """A new registered version whose source is the run's logged model folder; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=run_id, tags=tags)
        return str(version.version)

    def alias_version(self, name: str, alias: str = CHAMPION_ALIAS):
        """The model version holding `alias`; None only when the registry answers that none does.

        Fails closed: a registry that cannot be reached, or any answer other than "no such model"
        or "no such alias", raises `RegistryError` instead of reading as "no champion" (a
        candidate must never be judged against the base model because the registry blinked).
        """
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(f"cannot read registered model {name!r} from {self.tracking_uri}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a store that is down raises OSError, SQLAlchemy errors, ...
            raise RegistryError(f"cannot reach the MLflow registry at {self.tracking_uri}: {exc}") from exc
        aliases = getattr(model, "aliases", None) or {}
        if alias not in aliases:
            return None
        try:
            return self.client.get_model_version(name, str(aliases[alias]))
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"alias {alias!r} of {name!r} names version {aliases[alias]}, which cannot be read: {exc}") from exc

    def set_alias(self, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        self.client.set_registered_model_alias(name, alias, version)


def mlflow_callback(tracker, run_id: str):
    """A Trainer callback that sends every logged value to MLflow per step.

    Training values (loss, learning rate, grad norm) go under `train/`, dev evaluation values
    (`eval_dev_cosine_ndcg@10`, ...) under `dev/`; the tracker sanitises '@'.
    """

    from transformers import TrainerCallback

    class _MlflowCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            named = {(f"dev/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"train/{k}"): v for k, v in numeric.items()}
            if named:
                tracker.log_metrics(run_id, named, step=state.global_step)

    return _MlflowCallback()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a model's numbers, for MLflow tags."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "sentence-transformers", "transformers", "datasets", "accelerate", "faiss-cpu", "faiss-gpu",
                 "dagster", "mlflow", "numpy"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return out


def close_orphaned_runs(tracker: Tracker, dagster_run_id: str) -> list[str]:
    """End as KILLED every MLflow run still RUNNING for a Dagster run whose process is gone."""
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      filter_string=f"tags.dagster_run_id = '{dagster_run_id}' and attributes.status = 'RUNNING'")
    for run in runs:
        tracker.client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in runs]
