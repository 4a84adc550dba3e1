"""The registry holds MLflow models: what `fine_tune` registers (`Tracker.register_embedding_model`)
loads through MLflow's own loaders and serves through `mlflow models serve`, giving the vectors the
pipeline computes for the same texts. Versions registered the earlier way (a plain folder) still
resolve for the pipeline (their `model_path`), beside the new ones.
"""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.lib.encoding import encode
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.test_lifecycle import free_port, wait_for

QUERIES = ["how do I reset my router", "warranty for a cracked screen"]
PASSAGES = ["Hold the reset button for ten seconds.", "The warranty covers manufacturing defects, not drops."]
QUERY_PROMPT, PASSAGE_PROMPT = "query: ", "passage: "


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_path):
    """An MLflow store with two versions: v1 the earlier way (a folder, no MLmodel), v2 flavour-logged (champion)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, (root / "mlruns").as_uri())
    with tracker.open_run("old", {}) as run_id:
        tracker.log_artifacts(run_id, Path(tiny_model_path), "model")
        old = tracker.register_model("emb", run_id, "model", {"model_path": tiny_model_path})
    with tracker.open_run("new", {"dagster_run_id": "r1"}) as run_id:
        new = tracker.register_embedding_model("emb", run_id, Path(tiny_model_path), query_prompt=QUERY_PROMPT,
                                               passage_prompt=PASSAGE_PROMPT, tags={"model_path": tiny_model_path})
    tracker.set_alias("emb", new)
    return tracker, uri, old, new


@pytest.fixture(scope="module")
def pipeline_vectors(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_path, device="cpu")
    return encode(model, QUERIES, prompt=QUERY_PROMPT), encode(model, PASSAGES, prompt=PASSAGE_PROMPT)


@pytest.fixture
def tracking_uri(registry, monkeypatch):
    """The store as MLflow's process-wide tracking URI (the registry follows it) for `models:/` URIs,
    put back afterwards: `mlflow.set_*_uri` would leave globals and environment variables behind."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", registry[1])
    return registry[1]


def test_the_champion_is_an_mlflow_model_with_signature_requirements_and_prompts(registry, tracking_uri):
    from mlflow.models.model import get_model_info

    tracker, _, old, new = registry
    version = tracker.client.get_model_version("emb", new)
    (logged,) = tracker.client.search_logged_models([tracker.experiment_id])
    assert version.source == logged.artifact_location and logged.source_run_id == version.run_id
    assert version.source.startswith("file://") and version.tags["mlflow_model_id"] == logged.model_id
    info = get_model_info("models:/emb@champion")
    assert "sentence_transformers" in info.flavors and info.metadata["query_prompt"] == QUERY_PROMPT
    assert info.metadata["passage_prompt"] == PASSAGE_PROMPT
    assert tuple(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 32)
    assert {p.name for p in info.signature.params} == {"prompt_name", "normalize_embeddings"}
    import mlflow

    folder = Path(mlflow.artifacts.download_artifacts("models:/emb@champion"))
    requirements = (folder / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "sentence-transformers", "transformers", "torch"}
    assert all("==" in r and "+" not in r for r in requirements), requirements
    assert json.loads((folder / "serving_input_example.json").read_text())["inputs"]
    # The earlier version is still what it was: a folder the pipeline reads through its model_path tag.
    assert Path(tracker.client.get_model_version("emb", old).tags["model_path"]).is_dir()
    assert str(tracker.alias_version("emb").version) == new


def test_mlflows_loaders_give_the_pipelines_vectors(registry, tracking_uri, pipeline_vectors):
    import mlflow.pyfunc
    import mlflow.sentence_transformers

    queries, passages = pipeline_vectors
    model = mlflow.sentence_transformers.load_model("models:/emb@champion")
    assert model.prompts["query"] == QUERY_PROMPT
    assert cosines(model.encode(QUERIES, prompt_name="query"), queries).min() >= 0.9999
    assert cosines(model.encode(PASSAGES, prompt_name="passage"), passages).min() >= 0.9999
    # A prompt matters: without it the vectors differ (so the comparison above can fail).
    assert cosines(model.encode(QUERIES), queries).min() < 0.9999

    pyfunc = mlflow.pyfunc.load_model("models:/emb@champion")
    vectors = np.asarray(pyfunc.predict(QUERIES, params={"prompt_name": "query"}))
    assert cosines(vectors, queries).min() >= 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5), "normalised by default, as the pipeline encodes"


def test_mlflow_models_serve_answers_invocations(registry, tracking_uri, pipeline_vectors, tmp_path):
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the environment's console scripts: mlflow, and the uvicorn it execs
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": tracking_uri,
           "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/emb@champion", "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def ping() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return False

    try:
        wait_for("mlflow models serve", ping, 180)
        body = json.dumps({"inputs": QUERIES, "params": {"prompt_name": "query"}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = json.loads(reply.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
        log.close()
    assert cosines(predictions, pipeline_vectors[0]).min() >= 0.9999


def test_retention_prunes_the_logged_copy_of_a_flavour_logged_version_whose_folder_is_gone(tmp_path, tiny_model_path):
    import shutil

    from embed_pipeline.lib.retention import prune_logged_models

    artifacts = tmp_path / "artifacts"
    folder = artifacts / "runs" / "r1" / "model"
    shutil.copytree(tiny_model_path, folder)
    tracker = Tracker(f"sqlite:///{artifacts / 'mlflow.db'}", (artifacts / "mlruns").as_uri())
    with tracker.open_run("train", {}) as run_id:
        version = tracker.register_embedding_model("emb", run_id, folder, query_prompt="", passage_prompt="",
                                                   tags={"model_path": str(folder)})
    copy = Path(urllib.request.url2pathname(tracker.client.get_model_version("emb", version).source.removeprefix("file://")))
    assert (copy / "MLmodel").is_file()
    assert prune_logged_models(tracker.client, "emb", artifacts) == [], "kept while its folder exists"
    shutil.rmtree(folder)
    assert prune_logged_models(tracker.client, "emb", artifacts) == [copy.resolve()]
    assert not copy.exists()
    assert tracker.client.get_model_version("emb", version).tags["model_artifacts"] == "pruned by retention"
