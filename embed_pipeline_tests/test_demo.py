"""`embed-pipeline demo` on the fixture project: every transition of the walkthrough, asserted."""

import json

import dagster as dg
import pytest

from embed_pipeline.cli import main
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.indexing import load_index
from embed_pipeline.lib.promotion import read_served, served_history
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.fixture_data import write_project


@pytest.mark.slow
def test_the_demo_walks_train_promote_serve_change_and_roll_back(tmp_path, tiny_model_path, monkeypatch, capsys):
    config = write_project(tmp_path / "project", tiny_model_path, index={"shards": 4})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()

    assert main(["demo", "--config", str(config), "--json"]) == 0

    out = json.loads(capsys.readouterr().out)
    settings = load_config(config)
    assert out["promoted"] is True and out["report"]["gate"]["passed"]
    assert out["report"]["models"]["champion"]["version"] == "1"  # the stock model served first, as v1
    assert out["reembedded"]["encoded"] == 4  # three edited passages and the added one; nothing else
    assert out["reembedded"]["changed"] == 5  # ... plus the deleted one
    assert out["rollback"] == {"from": "2", "to": "1"}
    assert set(out["seconds"]) == {"serve the stock model", "train", "promote", "serve the new champion",
                                   "change the corpus", "roll back"}

    demo_config = load_config(settings.artifacts_dir / "demo" / "config.yaml")
    assert config.parent.joinpath("corpus.jsonl").read_text().count("Edited by the demo") == 0  # data/ never edited
    served = read_served(settings.artifacts_dir)
    assert served["model_version"] == "1"
    assert Tracker(settings.tracking_uri, settings.mlflow_artifacts_uri).alias_version(
        settings.registered_model_name).version == 1
    ids = set(load_index(served["index_path"]).passage_ids)
    assert "demo-added-passage" in ids and "cassette-remove" not in ids  # the last passage was deleted
    actions = [e["action"] for e in served_history(settings.artifacts_dir)]
    assert actions[0] == "promote" and "rollback" in actions and actions.count("promote") == 2
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("served_model")).asset_materialization
    assert event.metadata["action"].value == "rollback"
    sensor_runs = instance.get_runs(dg.RunsFilter(job_name="reembed_job"))
    assert any(r.tags.get("dagster/partition") for r in sensor_runs), "the corpus edit re-embedded single shards"
    assert demo_config.corpus != settings.corpus


@pytest.mark.slow
def test_a_refused_candidate_keeps_the_stock_model_serving_and_the_demo_says_so(tmp_path, tiny_model_path, monkeypatch,
                                                                                 capsys):
    """The gate refuses (an unreachable lift): the sensor skips, the stock model still serves, the
    corpus edit is re-embedded for it, nothing is rolled back, and the exit code is 3, not a crash."""
    config = write_project(tmp_path / "project", tiny_model_path, index={"shards": 4},
                           gate={"min_recall_at_10_lift": 1.0})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))  # not created: the CLI creates it

    assert main(["demo", "--config", str(config), "--json"]) == 3

    captured = capsys.readouterr()
    out = json.loads(captured.out)
    settings = load_config(config)
    assert out["report"]["gate"]["passed"] is False and out["promoted"] is False and out["rollback"] is None
    assert set(out["seconds"]) == {"serve the stock model", "train", "promote", "change the corpus"}
    assert out["reembedded"]["encoded"] == 4 and out["reembedded"]["changed"] == 5
    served = read_served(settings.artifacts_dir)
    assert served["model_version"] == "1"  # the stock model, served first, still serves
    assert Tracker(settings.tracking_uri, settings.mlflow_artifacts_uri).alias_version(
        settings.registered_model_name).version == 1
    assert "demo-added-passage" in set(load_index(served["index_path"]).passage_ids)
    assert [e["action"] for e in served_history(settings.artifacts_dir)].count("promote") == 1
    assert "the promotion sensor skipped the refused candidate" in captured.err
