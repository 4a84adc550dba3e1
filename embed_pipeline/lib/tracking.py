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
        """A new registered version whose source is a plain folder the run logged (no `MLmodel`: the
        pipeline reads it through the `model_path` tag, MLflow's loaders cannot). How versions were
        registered before `register_embedding_model`; kept for folders that are not sentence-transformers models."""
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        return self._create_version(name, source, run_id, tags)

    def register_embedding_model(self, name: str, run_id: str, model_dir: Path, *, query_prompt: str, passage_prompt: str,
                                 tags: dict[str, str]) -> str:
        """Log the model folder with MLflow's sentence-transformers flavour under run `run_id`, register
        that logged model as a new version of `name` and return the version.

        The logged model is a complete MLflow model (an `MLmodel` file, signature, input example,
        pinned requirements, the query and passage prompts in its metadata and in the model's own
        `prompts`), so `mlflow.sentence_transformers.load_model`, `mlflow.pyfunc.load_model` and
        `mlflow models serve` work on `models:/<name>@champion`. The pipeline itself keeps reading
        `model_dir` (the `model_path` tag).

        The version's source: with a local artifact store (`file:`), the logged model's folder, so
        retention (`prune_logged_models`, which prunes only local copies under artifacts_dir) finds
        it exactly as it found the earlier folder-only versions; otherwise `models:/<model_id>`,
        MLflow 3's own form, which a tracking server requires (it refuses a source outside the
        run's artifacts). MLflow loads both the same way; the id is also the `mlflow_model_id` tag.
        """
        from urllib.parse import urlparse

        model_id = log_embedding_model(self, run_id, model_dir, query_prompt=query_prompt, passage_prompt=passage_prompt,
                                       tags=tags)
        location = self.client.get_logged_model(model_id).artifact_location
        source = location if urlparse(location).scheme == "file" else f"models:/{model_id}"
        with _tracking_uri(self.tracking_uri):  # a models:/ source is resolved through MLflow's process-wide client
            return self._create_version(name, source, run_id, {**tags, "mlflow_model_id": model_id}, model_id)

    def _create_version(self, name: str, source: str, run_id: str, tags: dict[str, str], model_id: str | None = None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        version = self.client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
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


# The libraries a logged model needs to load and encode, pinned to the versions that trained it.
MODEL_REQUIREMENTS = ("mlflow", "sentence-transformers", "transformers", "torch")


def model_requirements() -> list[str]:
    """`name==version` for MODEL_REQUIREMENTS as installed here. A local version label (torch's
    `+cpu`, `+cu124`) is dropped: it names a wheel index, not a release, and PyPI has no such pin."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+', 1)[0]}" for name in MODEL_REQUIREMENTS]


def embedding_signature(dimension: int):
    """Strings in, one float32 row of `dimension` per string out; `prompt_name` ("query" or
    "passage", the model's own prompts) and `normalize_embeddings` (default true, as the pipeline
    encodes) are inference parameters a pyfunc caller or `/invocations` request may pass."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([TensorSpec(np.dtype("float32"), (-1, dimension))]),
                          params=ParamSchema([ParamSpec("prompt_name", "string", None),
                                              ParamSpec("normalize_embeddings", "boolean", True)]))


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's `log_model` (and a `models:/` source's resolution in a local registry) use the
    process-wide tracking URI: point it at `uri` for the block, then put back exactly what was
    there. MLflow's module global is swapped directly, because `mlflow.set_tracking_uri` also
    writes MLFLOW_TRACKING_URI into the environment, which would outlive the block; the tracker's
    own client never relies on either."""
    from mlflow.tracking._tracking_service import utils

    saved = utils._tracking_uri
    utils._tracking_uri = uri
    try:
        yield
    finally:
        utils._tracking_uri = saved


def log_embedding_model(tracker: Tracker, run_id: str, model_dir: Path, *, query_prompt: str, passage_prompt: str,
                        tags: dict[str, str]) -> str:
    """Log the sentence-transformers folder `model_dir` with `mlflow.sentence_transformers.log_model`
    as run `run_id`'s model "model"; return the logged model's id.

    The model object gets the pipeline's prompts as its `prompts` ("query", "passage"), so a
    consumer encodes as the pipeline does with `prompt_name`; they are in the metadata too. The
    requirements are pinned explicitly (MLflow's inference of them would load the model in a
    subprocess); MLflow checks the input example against the saved model (one short encode).
    """
    import mlflow.sentence_transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.prompts = {**(model.prompts or {}), "query": query_prompt, "passage": passage_prompt}
    example = ["what does the warranty cover"]
    # Created here, in the tracker's experiment: MLflow's fluent API would file it under the
    # process's active experiment (the Default one, artifacts under the working directory).
    logged = tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=run_id,
                                                tags={k: str(v) for k, v in tags.items()}, model_type="embedding")
    with _tracking_uri(tracker.tracking_uri):
        info = mlflow.sentence_transformers.log_model(
            model, name="model", model_id=logged.model_id, run_id=run_id,
            signature=embedding_signature(model.get_sentence_embedding_dimension()),
            input_example=example, pip_requirements=model_requirements(),
            metadata={"query_prompt": query_prompt, "passage_prompt": passage_prompt, "normalize_embeddings": True,
                      "model_path": str(model_dir)},
        )
    return info.model_id


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
