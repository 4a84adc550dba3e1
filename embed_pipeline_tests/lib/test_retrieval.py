"""`RetrievalSpec`, `rank` and the query API over a served pointer built by hand from the tiny model."""

import json
from pathlib import Path

import pytest

from embed_pipeline.cli import main
from embed_pipeline.lib.config import load_config
from embed_pipeline.lib.encoding import encode, load_model
from embed_pipeline.lib.fusion import fuse_scored
from embed_pipeline.lib.indexing import load_index, publish_index
from embed_pipeline.lib.lexical import LexicalIndex
from embed_pipeline.lib.promotion import promote
from embed_pipeline.lib.retrieval import RetrievalSpec, Searcher, rank, search_served
from embed_pipeline_tests.fixture_data import PASSAGES, write_project

IDS = list(PASSAGES)
TEXTS = [f"{title}\n{text}" for title, text in PASSAGES.values()]
QUERIES = ["chain oil drops", "brake fluid bubbles", "wheel wobble spokes"]
DENSE = RetrievalSpec("dense", None, None, "config", 60, 100, "fp32")
RRF = RetrievalSpec("hybrid", "rrf", 0.4, "config", 7, 12, "fp32")


@pytest.fixture()
def served(tmp_path, tiny_model_path):
    """A project whose artifacts hold the tiny model's FAISS and BM25 indexes; `serve(version, spec)` promotes them."""
    config_path = write_project(tmp_path / "project", tiny_model_path)
    config = load_config(config_path)
    model = load_model(tiny_model_path)
    dense = publish_index(IDS, encode(model, TEXTS, progress=False, precision="fp32"), config.index, {},
                          config.artifacts_dir / "index" / "dense")
    lexical = LexicalIndex.build(IDS, TEXTS).save(config.artifacts_dir / "index" / "lexical")

    from embed_pipeline.defs.resources import MlflowResource

    tracker = MlflowResource().tracker(config)

    def serve(version: str, retrieval: dict | None, lexical_path=lexical):
        # Registered and aliased as a real promotion is: `search` reconciles with the registry first.
        with tracker.open_run("served by hand", {}) as run_id:
            registered = tracker.register_embedding_model("m", run_id, Path(tiny_model_path), query_prompt="", passage_prompt="",
                                                          tags={"model_path": tiny_model_path})
        assert registered == version
        pointer = {"model_name": "m", "model_version": version, "model_dir": tiny_model_path, "mlflow_run_id": run_id,
                   "index_path": str(dense.path), "lexical_path": str(lexical_path) if lexical_path else None,
                   "report_path": None, "retrieval": retrieval}
        promote(config.artifacts_dir, pointer, "test", "by hand", tracker.set_alias)
        return pointer

    return config_path, config, model, serve


def test_a_hybrid_spec_needs_a_fusion_and_a_weight():
    with pytest.raises(ValueError, match="needs a fusion"):
        RetrievalSpec("hybrid", None, 0.5, "config", 60, 100, "fp32")
    with pytest.raises(ValueError, match="needs a fusion"):
        RetrievalSpec("hybrid", "rrf", None, "config", 60, 100, "fp32")
    assert RetrievalSpec.from_record(RRF.as_dict(), 100, "auto") == RRF


def test_an_older_record_is_derived_and_says_what_was_assumed():
    spec = RetrievalSpec.from_record({"mode": "hybrid", "fusion": "rrf", "dense_weight": 0.5}, 40, "auto")
    assert (spec.mode, spec.fusion, spec.dense_weight, spec.rrf_k, spec.depth, spec.precision) == ("hybrid", "rrf", 0.5, 60, 40, "auto")
    assert "rrf_k 60" in spec.derived and "depth 40" in spec.derived
    assert RetrievalSpec.from_record(None, 100, "auto").mode == "dense"


def test_rank_fuses_depth_candidates_with_the_specs_rrf_k_and_serves_a_prefix(served):
    _, _, model, _ = served
    index, lexical = load_index(served[1].artifacts_dir / "index" / "dense"), LexicalIndex.build(IDS, TEXTS)
    vectors = encode(model, QUERIES, progress=False, precision="fp32")
    scores, ids = index.search_ids(vectors, RRF.depth)
    expected = fuse_scored((ids, scores), lexical.search(QUERIES, RRF.depth), "rrf", 0.4, 10, rrf_k=7)
    assert rank(RRF, vectors, QUERIES, index, lexical, 10) == expected
    default_k = fuse_scored((ids, scores), lexical.search(QUERIES, RRF.depth), "rrf", 0.4, 10)
    assert expected[0] != default_k[0] or expected[1] != default_k[1]  # rrf_k changes the ranking or its scores
    for spec in (DENSE, RRF):
        top3, top20 = rank(spec, vectors, QUERIES, index, lexical, 3), rank(spec, vectors, QUERIES, index, lexical, 20)
        assert top3[0] == [row[:3] for row in top20[0]]


def test_search_names_the_mode_that_ranked_and_every_hit_has_one_score_key(served, tmp_path, monkeypatch, capsys):
    config_path, config, _, serve = served
    serve("1", DENSE.as_dict())
    for mode in (None, "dense", "lexical"):
        hits = search_served(config, "chain oil drops", 5, mode)
        assert {h["mode"] for h in hits} == {mode or "dense"}
        assert all(set(h) == {"rank", "passage_id", "score", "mode", "title", "text", "model_version"} for h in hits)
        assert all(isinstance(h["score"], float) for h in hits)
    with pytest.raises(ValueError, match="serves dense"):  # never a dense ranking labelled hybrid
        search_served(config, "chain oil drops", 5, "hybrid")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["search", "--config", str(config_path), "chain oil drops", "--mode", "hybrid"]) == 1
    assert "serves dense" in capsys.readouterr().err

    serve("2", RRF.as_dict())
    assert main(["search", "--config", str(config_path), "chain oil drops", "--k", "4"]) == 0
    captured = capsys.readouterr()
    hits = [json.loads(line) for line in captured.out.splitlines()]
    assert "ranked hybrid" in captured.err and [h["mode"] for h in hits] == ["hybrid"] * 4
    searcher = Searcher(json.loads((config.artifacts_dir / "served.json").read_text()))
    assert searcher.spec == RRF
    assert [(h["passage_id"], h["score"]) for h in hits] == searcher.search(["chain oil drops"], 4)[0]
    dense_hits = search_served(config, "chain oil drops", 4, "dense")
    assert [(h["passage_id"], h["score"]) for h in dense_hits] == searcher.search(["chain oil drops"], 4, "dense")[0]
    assert {h["mode"] for h in dense_hits} == {"dense"}


def test_a_pointer_without_a_spec_still_serves_with_a_derived_one(served):
    _, config, _, serve = served
    serve("1", {"mode": "hybrid", "fusion": "convex", "dense_weight": 0.7})
    searcher = Searcher(json.loads((config.artifacts_dir / "served.json").read_text()), depth=config.retrieval.depth)
    assert searcher.spec.rrf_k == 60 and searcher.spec.depth == config.retrieval.depth and searcher.spec.derived
    assert {h["mode"] for h in search_served(config, "brake fluid bubbles", 3)} == {"hybrid"}
