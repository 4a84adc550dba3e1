"""The pair assets and their checks on the fixture project: real Dagster instance, real files."""

import json

import dagster as dg
import pandas as pd
import pytest

from embed_pipeline.cli import main
from embed_pipeline.defs import checks
from embed_pipeline.defs.assets import pairs as pair_assets
from embed_pipeline.defs.assets import sources
from embed_pipeline.defs.assets.common import load_eval_set
from embed_pipeline.defs.query_generators import OfflineQueryGenerator, OpenAICompatibleQueryGenerator
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.leakage import find_leaks
from embed_pipeline_tests.fixture_data import CURATED, EVAL, write_project
from embed_pipeline_tests.lib.test_llm import FakeEndpoint

PAIR_ASSETS = [sources.corpus, sources.search_log_pairs, sources.curated_pairs, sources.synthetic_pairs, pair_assets.training_pairs]
PAIR_CHECKS = [checks.training_pairs_no_eval_leakage, checks.curated_pairs_quarantine_share]


def materialise(config_path, generator=None):
    return dg.materialize(
        PAIR_ASSETS + PAIR_CHECKS,
        resources={"pipeline": PipelineResource(config_path=str(config_path)), "query_generator": generator or OfflineQueryGenerator()},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def metadata(result, key):
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(key)[0].metadata.items()}


def check_results(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_without_an_eval_set_a_grouped_split_is_held_out_and_nothing_leaks(tmp_path, tiny_model_path):
    config_path = write_project(tmp_path / "p", tiny_model_path, eval=None, synthetic={"round_trip_k": 5})
    result = materialise(config_path)
    assert result.success
    config = load_config(config_path)
    curated = result.output_for_node("curated_pairs")
    split = pd.read_parquet(curated.files["eval_split"])
    assert curated.files["eval_split"].startswith(str(config.artifacts_dir / "assets" / "curated_pairs" / result.run_id))
    curated_meta = metadata(result, "curated_pairs")
    assert curated_meta["eval_split_queries"] == len(split) == round(0.15 * len(CURATED))
    assert curated_meta["accepted"] == len(CURATED) and curated_meta["dagster/row_count"] == len(CURATED) - len(split)
    assert curated_meta["rows_in == accepted + quarantined"] is True
    eval_set, _ = load_eval_set(config, set(), curated)
    assert sorted(eval_set.queries.values()) == sorted(split["query"])
    training = pd.read_parquet(result.output_for_node("training_pairs").path)
    assert find_leaks(training, list(split["query"]), 0.8).empty
    leak_check = check_results(result)["training_pairs_no_eval_leakage"]
    assert leak_check.passed and leak_check.metadata["eval_queries"].value == len(split)

    synthetic_meta = metadata(result, "synthetic_pairs")
    assert synthetic_meta["kept_by_round_trip"] <= synthetic_meta["generated"]
    assert synthetic_meta["round_trip_keep_rate"] == round(synthetic_meta["kept_by_round_trip"] / synthetic_meta["generated"], 4)
    training_meta = metadata(result, "training_pairs")
    assert "query words" in training_meta["query_length_histogram"]
    assert training_meta["dagster/row_count"] == len(training)
    log_meta = metadata(result, "search_log_pairs")
    assert log_meta["impressions_read"] == 18 and log_meta["sessions"] == 6 and log_meta["pairs_out"] == 3
    assert "pogo_stick_clicks | 3" in log_meta["dropped_by_rule"]


def write_leaky_project(root, tiny_model_path, **overrides):
    """The fixture project whose curated pairs copy two eval queries: one exactly, one near-duplicated."""
    write_project(root, tiny_model_path)
    eval_texts = {q for q, _, _ in EVAL}
    assert {"spongy brakes bleed", "knocking in the headset when braking"} <= eval_texts  # what the plants copy
    planted = [{"query": q, "passage_id": p} for q, p in CURATED]
    planted.append({"query": "  SPONGY brakes bleed ", "passage_id": "brake-bleed"})  # exact after normalisation
    planted.append({"query": "knocking in the headset when braking hard", "passage_id": "headset-play"})  # near duplicate
    (root / "leaky.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted))
    return write_project(root, tiny_model_path, curated_pairs="leaky.jsonl", **overrides)


def test_leaking_pairs_are_dropped_quarantined_and_counted_then_the_run_goes_on(tmp_path, tiny_model_path):
    config_path = write_leaky_project(tmp_path / "p", tiny_model_path)
    result = materialise(config_path)
    assert result.success
    meta = metadata(result, "training_pairs")
    assert meta["leakage_mode"] == "drop"
    assert meta["leaking_pairs_dropped"] == 2 and meta["leaks_exact"] == 1 and meta["leaks_near_duplicate"] == 1
    assert "curated | 2" in meta["leaking_pairs_per_source"]
    handle = result.output_for_node("training_pairs")
    leaks = pd.read_parquet(handle.files["leaks"])
    assert set(leaks["eval_query"]) == {"spongy brakes bleed", "knocking in the headset when braking"}
    assert leaks["jaccard"].between(0.8, 1.0).all() and set(leaks["kind"]) == {"exact", "near-duplicate"}
    training = pd.read_parquet(handle.path)
    assert "knocking in the headset when braking hard" not in set(training["query"])
    assert len(training) == meta["dagster/row_count"] and handle.quarantined == 2
    leak_check = check_results(result)["training_pairs_no_eval_leakage"]
    assert leak_check.passed and leak_check.metadata["dropped_before_this_check"].value == 2


def test_planted_leaks_fail_the_run_in_fail_mode_and_the_cli_prints_the_offenders(tmp_path, tiny_model_path, monkeypatch, capsys):
    config_path = write_leaky_project(tmp_path / "p", tiny_model_path, leakage={"on_leak": "fail"})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()

    assert main(["run", "--config", str(config_path)]) == 1

    err = capsys.readouterr().err
    assert "check FAILED: training_pairs_no_eval_leakage on training_pairs" in err
    assert "exact_leaks: 1" in err and "near_duplicate_leaks: 1" in err
    assert "SPONGY brakes bleed" in err and "knocking in the headset when braking hard" in err
    assert "step hard_negatives: done" not in err, "a failed blocking check must stop training"


def test_a_broken_curated_file_is_quarantined_and_the_share_check_blocks(tmp_path, tiny_model_path):
    root = tmp_path / "p"
    write_project(root, tiny_model_path)
    lines = [json.dumps({"query": q, "passage_id": p}).encode() for q, p in CURATED]
    lines += [b"", b'{"query": "caf\xe9", "passage_id": "chain-lube"}', b"not json",
              json.dumps({"query": "wheel"}).encode(), json.dumps({"query": "ghost", "passage_id": "no-such"}).encode()]
    (root / "broken.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config_path = write_project(root, tiny_model_path, curated_pairs="broken.jsonl")
    result = materialise(config_path)
    meta = metadata(result, "curated_pairs")
    assert meta["rows_in"] == 14 and meta["accepted"] == 10 and meta["quarantined"] == 4
    assert meta["rows_in == accepted + quarantined"] is True
    quarantine = pd.read_parquet(meta["quarantine_path"])
    assert len(quarantine) == 4 and (quarantine["reason"] != "").all()
    share_check = check_results(result)["curated_pairs_quarantine_share"]
    assert not share_check.passed
    assert share_check.metadata["quarantined_share"].value == round(4 / 14, 4)
    assert share_check.metadata["threshold"].value == 0.05
    assert not result.success and not result.asset_materializations_for_node("training_pairs")


def test_llm_generator_resource_feeds_synthetic_pairs_without_exposing_the_key(tmp_path, tiny_model_path, monkeypatch):
    server = FakeEndpoint()
    try:
        monkeypatch.setenv("FIXTURE_LLM_KEY", "sk-fixture-secret")
        config_path = write_project(tmp_path / "p", tiny_model_path, synthetic={"max_passages": 3, "pairs_per_passage": 2})
        generator = OpenAICompatibleQueryGenerator(base_url=server.url, model="tiny-llm", api_key=dg.EnvVar("FIXTURE_LLM_KEY"),
                                                   backoff_seconds=0.01)
        result = dg.materialize([sources.corpus, sources.synthetic_pairs],
                                resources={"pipeline": PipelineResource(config_path=str(config_path)), "query_generator": generator},
                                instance=dg.DagsterInstance.ephemeral())
    finally:
        server.close()
    meta = metadata(result, "synthetic_pairs")
    assert meta["llm_requests"] == 3 and meta["generated"] == 6
    assert {r["auth"] for r in server.requests} == {"Bearer sk-fixture-secret"}
    assert "sk-fixture-secret" not in json.dumps({k: str(v) for k, v in meta.items()})
    assert set(pd.read_parquet(result.output_for_node("synthetic_pairs").path)["method"]) <= {"llm"}


def test_the_yaml_selects_the_llm_generator_and_names_only_the_key_variable(tmp_path, tiny_model_path, monkeypatch):
    server = FakeEndpoint()
    try:
        monkeypatch.setenv("FIXTURE_LLM_KEY", "sk-yaml-secret")
        config_path = write_project(tmp_path / "p", tiny_model_path, synthetic={
            "max_passages": 2, "pairs_per_passage": 1, "generator": "llm",
            "llm": {"base_url": server.url, "model": "tiny-llm", "api_key_env": "FIXTURE_LLM_KEY"}})
        result = dg.materialize([sources.corpus, sources.synthetic_pairs],
                                resources={"pipeline": PipelineResource(config_path=str(config_path)),
                                           "query_generator": OfflineQueryGenerator()},
                                instance=dg.DagsterInstance.ephemeral())
    finally:
        server.close()
    meta = metadata(result, "synthetic_pairs")
    assert meta["llm_requests"] == 2 and {r["auth"] for r in server.requests} == {"Bearer sk-yaml-secret"}
    assert "sk-yaml-secret" not in config_path.read_text() + json.dumps({k: str(v) for k, v in meta.items()})


@pytest.mark.parametrize("eval_value", [None])
def test_config_without_eval_or_curated_is_an_error(tmp_path, tiny_model_path, eval_value):
    from embed_pipeline.lib.config import ConfigError

    config_path = write_project(tmp_path / "p", tiny_model_path, eval=eval_value, curated_pairs=None)
    with pytest.raises(ConfigError, match="eval"):
        load_config(config_path)
