"""The embedding_model asset against a real MLflow store under tmp_path: params, tags, dev metrics,
registered version, and a FAILED run when training fails."""

from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from embed_pipeline.defs.assets.model import embedding_model
from embed_pipeline.defs.resources import MlflowResource, PipelineResource
from embed_pipeline.lib.artifacts import CorpusHandle, NegativesHandle, PairsHandle
from embed_pipeline_tests.fixture_data import build_dataset
from embed_pipeline.lib.config import config_as_params, load_config
from embed_pipeline_tests.fixture_data import CURATED, PASSAGES, write_project

NEGATIVES = {"chain-lube": "chain-clean", "chain-wear": "chain-lube", "chain-clean": "chain-lube", "tire-puncture": "tubeless-setup",
             "tire-pressure": "tubeless-setup", "brake-bleed": "brake-pads", "brake-rub": "brake-pads",
             "derailleur-index": "derailleur-limit", "derailleur-limit": "derailleur-index", "wheel-true": "hub-bearings"}


def upstream(root):
    root.mkdir(parents=True, exist_ok=True)
    corpus = pd.DataFrame([(pid, t, x) for pid, (t, x) in PASSAGES.items()], columns=["passage_id", "title", "text"])
    dataset = build_dataset(corpus, root / "corpus", 2)
    triples = pd.DataFrame([(q, p, [NEGATIVES[p]], "curated", "") for q, p in CURATED],
                           columns=["query", "passage_id", "negatives", "source", "positive_text"])
    triples.to_parquet(root / "hard_negatives.parquet", index=False)
    return {
        "corpus": CorpusHandle(path=str(dataset.folder), passages=len(corpus), quarantine_path=str(dataset.quarantine_path),
                               version=dataset.version),
        "training_pairs": PairsHandle(path="", pairs=len(triples), version="pairs-v1"),
        "hard_negatives": NegativesHandle(path=str(root / "hard_negatives.parquet"), rows=len(triples), version="neg-v1",
                                          base_model_fingerprint="fp"),
    }


def materialise(config_path, inputs):
    return embedding_model(
        context=dg.build_asset_context(),
        pipeline=PipelineResource(config_path=str(config_path)),
        mlflow=MlflowResource(),
        **inputs,
    )


TRAINING = {"epochs": 3, "batch_size": 4, "max_seq_length": 32, "logging_steps": 1, "checkpoint_steps": 2,
            "dev_share": 0.3, "dev_max_passages": 12, "learning_rate": 1e-3}


def test_embedding_model_tracks_everything_and_registers_a_tagged_version(tmp_path, tiny_model_path):
    # base_merge on: the saved model is the average with the base, scored on the dev split too
    config_path = write_project(tmp_path / "project", tiny_model_path, training={**TRAINING, "base_merge": 0.5})
    config = load_config(config_path)

    result = materialise(config_path, upstream(tmp_path / "inputs"))

    value = result.value
    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    run = client.get_run(value.run_id)
    assert run.info.status == "FINISHED"
    assert set(config_as_params(config)) <= set(run.data.params)
    assert run.data.params["data.training_pairs_version"] == "pairs-v1"
    assert run.data.params["data.hard_negatives_version"] == "neg-v1"
    assert run.data.params["data.dev_queries"] == "3"
    held_out = pd.read_parquet(value.dev_path)  # the dev rows training held out, named by the handle for eval_report
    assert held_out["query"].nunique() == 3 and set(held_out.columns) == {"query", "passage_id"}
    assert set(zip(held_out["query"], held_out["passage_id"], strict=True)) <= set(CURATED)
    assert "version.torch" in run.data.tags and "version.sentence-transformers" in run.data.tags
    assert client.get_metric_history(run.info.run_id, "train/loss")
    dev = client.get_metric_history(run.info.run_id, "dev/dev_cosine_ndcg_at_10")
    assert len(dev) >= 2, "dev nDCG@10 must be logged at every checkpoint"
    assert run.data.metrics["best_dev_ndcg_at_10"] == pytest.approx(max(m.value for m in dev))
    version = client.get_model_version(config.registered_model_name, value.version)
    assert version.run_id == run.info.run_id
    assert version.tags["training_pairs_version"] == "pairs-v1"
    assert version.tags["dagster_run_id"] == run.data.tags["dagster_run_id"]
    assert (Path(value.model_dir) / "modules.json").is_file()
    assert result.metadata["processes"] == 1 and result.metadata["steps"] > 0
    assert result.metadata["base_merge"] == 0.5
    assert result.metadata["merged_dev_ndcg@10"] == pytest.approx(run.data.metrics["merged_dev_ndcg_at_10"], abs=1e-4)
    assert not any((config.artifacts_dir / "checkpoints").glob("*/checkpoint-*")), "finished jobs keep no checkpoints"


def test_a_failed_training_closes_its_mlflow_run_as_failed(tmp_path):
    broken_model = tmp_path / "not-a-model"
    broken_model.mkdir()
    config_path = write_project(tmp_path / "project", str(broken_model), training=TRAINING)
    config = load_config(config_path)

    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises, the run must be closed
        materialise(config_path, upstream(tmp_path / "inputs"))

    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("embed-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.params["training.batch_size"] == "4", "params are logged before training starts"
