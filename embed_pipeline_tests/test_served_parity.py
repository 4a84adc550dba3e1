"""What the gate judged is what serves: after each promotion, the eval queries ranked through the query
API score what the judged report row says, for dense, hybrid-convex and hybrid-RRF (rrf_k 7, depth 15).

One training run; the two hybrid specs are judged by re-executing `eval_report` alone with their
config (the same candidate, its dev queries, its index) and promoted like any report: a newly
judged spec of the model that serves is a promotion of that spec.
"""

import dataclasses
import json

import dagster as dg
import pytest
import yaml

from embed_pipeline.cli import main
from embed_pipeline.console import Session
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.evaluation import EvalSet, report_markdown, served_parity
from embed_pipeline.lib.io import read_json
from embed_pipeline.lib.labelled import load_labelled_pairs, relevance_map
from embed_pipeline.lib.promotion import read_served, served_history
from embed_pipeline.lib.retrieval import served_searcher
from embed_pipeline.lib.tracking import Tracker
from embed_pipeline_tests.fixture_data import PASSAGES

MODES = {
    "dense": {"mode": "dense"},
    "hybrid-convex": {"mode": "hybrid", "fusion": "convex"},  # the weight chosen on the run's dev queries
    "hybrid-rrf": {"mode": "hybrid", "fusion": "rrf", "rrf_k": 7, "depth": 15, "dense_weight": 0.6},
}


def variant(project, name: str, retrieval: dict):
    """The fixture project's config with another `retrieval` section (same data, same artifacts)."""
    raw = yaml.safe_load(project.read_text())
    raw["retrieval"] = retrieval
    path = project.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_served_ranking_scores_what_the_gate_judged_in_every_mode(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    configs = {name: variant(project, name, retrieval) for name, retrieval in MODES.items()}
    config = load_config(configs["dense"])
    pairs = load_labelled_pairs(config.eval, set(PASSAGES)).pairs
    eval_set = EvalSet(pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict(), relevance_map(pairs))

    for n, (name, path) in enumerate(configs.items()):
        if n == 0:
            assert main(["run", "--config", str(path)]) == 0
        else:  # the same candidate judged again, with this spec
            assert Session(str(path)).execute("training_job", asset_selection=[dg.AssetKey("eval_report")]).success
        assert main(["promote", "--config", str(path)]) == 0
        pointer = read_served(config.artifacts_dir)
        report = read_json(pointer["report_path"])
        assert pointer["model_version"] == "1" and served_history(config.artifacts_dir)[-1]["action"] == "promote"
        spec = {k: v for k, v in report["retrieval"].items() if k != "champion"}
        assert pointer["retrieval"] == spec, "the spec the gate judged is copied whole into the served pointer"
        assert {k: spec[k] for k in MODES[name]} == MODES[name] and spec["derived"] == ""
        parity = served_parity(served_searcher(load_config(path)), eval_set, report)
        print(json.dumps({"mode": name, **parity}))
        assert parity["row"] == ("candidate" if name == "dense" else "candidate_hybrid")
        for metric, judged in parity["judged"].items():
            assert parity["served"][metric] == pytest.approx(judged, abs=1e-4), (name, metric, parity)
        if name == "hybrid-rrf":  # served as older versions did (rrf_k 60, 100 candidates), it would not be what was judged
            searcher = served_searcher(load_config(path))
            searcher.spec = dataclasses.replace(searcher.spec, rrf_k=60, depth=100)
            assert served_parity(searcher, eval_set, report)["served"] != pytest.approx(parity["judged"], abs=1e-4)

    # Three promotions of one model, one per spec; MLflow records the last spec judged.
    assert [e["retrieval"]["mode"] for e in served_history(config.artifacts_dir)] == ["dense", "hybrid", "hybrid"]
    tags = Tracker(config.tracking_uri, config.mlflow_artifacts_uri).client.get_run(pointer["mlflow_run_id"]).data.tags
    assert tags["retrieval.fusion"] == "rrf" and tags["retrieval.rrf_k"] == "7"


@pytest.mark.slow
def test_long_passages_read_in_windows_are_judged_and_served_alike(project, tmp_path, monkeypatch, capsys):
    """Windows of 12 tokens split most fixture passages (23-34 tokens): the index holds a row per
    window, the report counts the long passages, every dense ranking (eval, query API, CLI) keeps
    each passage once at its best window, and what serves scores what was judged."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    raw = yaml.safe_load(project.read_text())
    raw["retrieval"] = {"mode": "dense"}
    raw["index"] = {**raw.get("index", {}), "passage_windows": True, "window_tokens": 12, "window_stride": 6}
    path = project.with_name("windows.yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(path)
    assert main(["run", "--config", str(path)]) == 0
    assert main(["promote", "--config", str(path)]) == 0
    pointer = read_served(config.artifacts_dir)
    report = read_json(pointer["report_path"])
    windows = report["windows"]
    assert windows["tokens"] == 12 and windows["stride"] == 6 and windows["passages"] == len(PASSAGES)
    assert windows["long_passages"] >= len(PASSAGES) // 2 and windows["rows"] > windows["passages"]
    assert f"{windows['long_passages']} of {len(PASSAGES)} longer than the model's window" in report_markdown(report)

    pairs = load_labelled_pairs(config.eval, set(PASSAGES)).pairs
    eval_set = EvalSet(pairs.drop_duplicates("query_id").set_index("query_id")["query"].to_dict(), relevance_map(pairs))
    searcher = served_searcher(config)
    assert searcher.dense.index.ntotal == windows["rows"]
    parity = served_parity(searcher, eval_set, report)
    for metric, judged in parity["judged"].items():
        assert parity["served"][metric] == pytest.approx(judged, abs=1e-4), (metric, parity)

    capsys.readouterr()
    assert main(["search", "--config", str(path), "--k", str(len(PASSAGES)), next(iter(eval_set.queries.values()))]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    ids = [h["passage_id"] for h in hits]
    assert len(ids) == len(set(ids)) == len(PASSAGES), "every passage once, however many windows it has"
