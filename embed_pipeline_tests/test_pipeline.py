"""The whole graph on the fixture project: real MLflow store, real FAISS index, real Dagster instance."""

import json

import dagster as dg
import mlflow
import pytest

from embed_pipeline.cli import main
from embed_pipeline.definitions import build_defs
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.metrics import METRICS


@pytest.mark.slow
def test_full_graph_materialises_every_artifact(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    for switch in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # the CLI sets them: restored afterwards
        monkeypatch.delenv(switch, raising=False)
    (tmp_path / "dagster_home").mkdir()

    assert main(["run", "--config", str(project), "--json"]) == 0

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    # Encodes report as our own lines with an ETA; library bars and the trainer's raw log dicts stay out.
    assert "encoding: " in captured.err and ", eta " in captured.err
    for noise in ("Loading weights", "Batches:", "{'loss'", "it/s]"):
        assert noise not in captured.err, noise
    config = load_config(project)
    for model in ("bm25", "base", "champion", "champion_hybrid", "candidate", "candidate_exact", "candidate_hybrid"):
        assert set(report[model]) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in report[model].values()), report[model]
    retrieval = report["retrieval"]
    assert retrieval["mode"] == "hybrid" and retrieval["fusion"] == "convex" and 0.0 <= retrieval["dense_weight"] <= 1.0
    assert report["judged"] == {"candidate": "candidate_hybrid", "champion": "champion_hybrid"}
    assert report["lift"] == pytest.approx({m: report["candidate_hybrid"][m] - report["base"][m] for m in METRICS}, abs=1e-6)
    general = report["general"]  # the forgetting guard: three scores, judged by the gate
    assert general["available"] and general["pairs"] == 12 and {"base", "champion", "candidate"} <= set(general)
    assert general["champion"] == general["base"], "no champion yet: the base model stands in"
    assert any(c["name"] == "general-domain score vs base" for c in report["gate"]["clauses"])
    assert report["leakage"] == {"mode": "drop", "available": True, "dropped_pairs": 0, "exact": 0, "near_duplicate": 0}

    candidate = report["models"]["candidate"]
    run_id = candidate["model_dir"].split("/")[-2]
    assert candidate["model_dir"] == str(config.artifacts_dir / "assets" / "embedding_model" / run_id / "model")
    index = load_index(report["models"]["index"]["path"])
    assert index.index.ntotal == index.meta["size"] == 20
    assert report["index"]["lexical_path"].startswith(str(config.artifacts_dir / "assets" / "corpus_index" / run_id))

    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    run = client.get_run(candidate["run_id"])
    assert run.info.status == "FINISHED"
    assert "training.batch_size" in run.data.params
    assert client.get_metric_history(candidate["run_id"], "train/loss"), "per-step loss must be logged"
    assert "eval/recall_at_10" in run.data.metrics
    version = client.get_model_version(config.registered_model_name, candidate["version"])
    assert version.run_id == candidate["run_id"]

    instance = dg.DagsterInstance.get()
    for key in ("corpus", "training_pairs", "hard_negatives", "embedding_model", "corpus_index", "eval_report"):
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key


PARENTS = {
    "corpus": set(),
    "search_log_pairs": {"corpus"},
    "curated_pairs": {"corpus"},
    "synthetic_pairs": {"corpus"},
    "training_pairs": {"corpus", "search_log_pairs", "curated_pairs", "synthetic_pairs"},
    "hard_negatives": {"corpus", "training_pairs", "search_log_pairs"},
    "embedding_model": {"corpus", "training_pairs", "hard_negatives"},
    "corpus_index": {"corpus", "embedding_model"},
    "eval_report": {"corpus", "curated_pairs", "training_pairs", "embedding_model", "corpus_index"},
    "served_model": {"eval_report"},
    "corpus_embeddings": {"corpus"},
    "served_index": {"corpus_embeddings"},
}


def test_definitions_graph():
    defs = build_defs("unused.yaml")  # the graph does not read the config
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == set(PARENTS)
    for key, expected in PARENTS.items():
        assert {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys} == expected, key

    training = defs.resolve_job_def("training_job")
    in_training = {k.to_user_string() for k in training.asset_layer.executable_asset_keys}
    assert in_training == keys - {"served_model", "corpus_embeddings", "served_index"}
    reembed = defs.resolve_job_def("reembed_job")
    assert {k.to_user_string() for k in reembed.asset_layer.executable_asset_keys} == {"corpus_embeddings"}
    schedule = defs.resolve_schedule_def("nightly_retraining")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "training_job"
    sensor = defs.resolve_sensor_def("promotion_sensor")
    assert sensor.job_name == "promotion_job"
    assert {s.name for s in defs.sensors} == {"promotion_sensor", "corpus_change_sensor", "served_index_sensor", "retention_sensor",
                                              "orphaned_mlflow_runs_sensor"}
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {"training_pairs_no_eval_leakage", "curated_pairs_quarantine_share", "eval_report_promotion_gate",
                      "eval_report_eval_set_size"}
