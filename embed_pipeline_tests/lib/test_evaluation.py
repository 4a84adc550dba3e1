"""`lib.evaluation.evaluate`: the rows, the fused rows, where the dense weight comes from, what the gate judges."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from embed_pipeline.lib.config import GateConfig, RetrievalConfig
from embed_pipeline.lib.encoding import embed_corpus_and_queries
from embed_pipeline.lib.evaluation import Contenders, EvalSet, evaluate
from embed_pipeline.lib.indexing import build_faiss_index
from embed_pipeline.lib.lexical import LexicalIndex
from embed_pipeline_tests.fixture_data import CURATED, EVAL, PASSAGES

IDS = list(PASSAGES)
TEXTS = [f"{title}\n{text}" for title, text in PASSAGES.values()]


@pytest.fixture()
def eval_inputs():
    pairs = pd.DataFrame([{"query_id": f"e{i}", "query": q, "passage_id": p, "segment": s} for i, (q, p, s) in enumerate(EVAL)])
    eval_set = EvalSet(dict(zip(pairs["query_id"], pairs["query"], strict=True)),
                       {qid: {pid} for qid, pid in zip(pairs["query_id"], pairs["passage_id"], strict=True)})
    return eval_set, pairs


@pytest.fixture()
def encode(tmp_path: Path):
    calls = []

    def encode(model_ref: str, queries: list[str]):
        calls.append((model_ref, tuple(queries)))
        vectors = embed_corpus_and_queries(model_ref, TEXTS, queries, tmp_path / "cache")
        return vectors.query_vectors, vectors.corpus_vectors

    encode.calls = calls
    return encode


DEV_QUERIES = [q for q, _ in CURATED]
DEV_RELEVANT = {q: {p} for q, p in CURATED}


def test_hybrid_rows_are_added_and_judged_with_a_weight_chosen_on_the_dev_queries(tiny_model_path, eval_inputs, encode):
    eval_set, pairs = eval_inputs
    lexical = LexicalIndex.build(IDS, TEXTS)

    evaluation = evaluate(eval_set, pairs, IDS, Contenders(base=tiny_model_path, candidate=tiny_model_path), encode,
                          RetrievalConfig(mode="hybrid"), GateConfig(), {"base": "tiny"}, precision="fp32", lexical=lexical,
                          dev_queries=DEV_QUERIES, dev_relevant=DEV_RELEVANT)

    report = evaluation.report
    for row in ("bm25", "base", "champion", "candidate", "candidate_exact", "candidate_hybrid", "champion_hybrid"):
        assert set(report[row]) == set(report["candidate"]), row
    assert report["judged"] == {"candidate": "candidate_hybrid", "champion": "champion_hybrid"}
    assert report["retrieval"]["mode"] == "hybrid" and report["retrieval"]["fusion"] == "convex"
    assert report["retrieval"]["dense_weight_source"] == f"dev split ({len(DEV_QUERIES)} queries)"
    assert report["retrieval"]["dense_weight"] == evaluation.weight.dense_weight
    assert set(evaluation.weight.table["dense_weight"]) >= {0.0, 1.0}  # a sweep, scored on the dev queries
    # the eval queries are encoded for scoring, never to choose the weight: the only other texts encoded are the dev queries
    encoded = {q for _, texts in encode.calls for q in texts}
    assert encoded == set(eval_set.queries.values()) | set(DEV_QUERIES)
    # the same model as base, champion and candidate: no lift, and the gate says so
    assert report["lift_over_champion"]["recall@10"] == 0 and report["gate"]["passed"] is False
    assert set(evaluation.per_query["model"]) == {"bm25", "base", "champion", "champion_hybrid", "candidate",
                                                  "candidate_exact", "candidate_hybrid"}


def test_a_configured_weight_is_used_as_is_and_dense_mode_judges_the_dense_rows(tiny_model_path, eval_inputs, encode):
    eval_set, pairs = eval_inputs
    lexical = LexicalIndex.build(IDS, TEXTS)

    evaluation = evaluate(eval_set, pairs, IDS, Contenders(base=tiny_model_path, candidate=tiny_model_path), encode,
                          RetrievalConfig(mode="dense", dense_weight=0.0), GateConfig(), {}, precision="fp32", lexical=lexical,
                          dev_queries=DEV_QUERIES, dev_relevant=DEV_RELEVANT)

    report = evaluation.report
    assert report["judged"] == {"candidate": "candidate", "champion": "champion"}
    spec = {"mode": "dense", "fusion": None, "dense_weight": None, "dense_weight_source": "config", "rrf_k": 60, "depth": 100,
            "precision": "fp32", "derived": ""}
    assert report["retrieval"] == {**spec, "champion": {**spec, "as": "the candidate's mode"}}
    assert evaluation.spec.as_dict() == spec
    assert report["candidate_hybrid"] == report["bm25"]  # weight 0: the fused ranking is BM25's
    assert DEV_QUERIES[0] not in {q for _, texts in encode.calls for q in texts}  # nothing to choose: dev queries unused


def test_the_candidate_row_goes_through_the_served_index(tiny_model_path, eval_inputs, encode):
    eval_set, pairs = eval_inputs
    _, corpus_vectors = encode(tiny_model_path, ["x"])

    class FirstPassageOnly:
        """An index that serves only the first passage: what the candidate row must reflect."""

        def __init__(self):
            self.index = build_faiss_index(corpus_vectors[:1], "flat")

        def search_ids(self, vectors, k):
            scores, rows = self.index.search(vectors, 1)
            return scores, [[IDS[0]] for _ in rows]

    evaluation = evaluate(eval_set, pairs, IDS, Contenders(tiny_model_path, tiny_model_path, served_index=FirstPassageOnly()),
                          encode, RetrievalConfig(mode="dense"), GateConfig(), {}, precision="fp32")

    report = evaluation.report
    relevant_first = sum(IDS[0] in r for r in eval_set.relevant.values()) / len(eval_set.relevant)
    assert report["candidate"]["recall@100"] == pytest.approx(relevant_first, abs=1e-6)
    assert report["candidate_exact"]["recall@100"] == 1.0  # exact search over all 20 passages finds every answer
    assert report["approximate_search_loss"]["recall@100"] == pytest.approx(1.0 - relevant_first, abs=1e-6)
    assert "bm25" not in report and "candidate_hybrid" not in report


def test_hybrid_mode_without_a_bm25_index_is_an_error(tiny_model_path, eval_inputs, encode):
    eval_set, pairs = eval_inputs
    with pytest.raises(ValueError, match="retrieval.mode is hybrid but there is no BM25 index"):
        evaluate(eval_set, pairs, IDS, Contenders(tiny_model_path, tiny_model_path), encode,
                 dataclasses.replace(RetrievalConfig(), mode="hybrid"), GateConfig(), {}, precision="fp32")


def test_the_champion_is_judged_as_it_serves_now(tiny_model_path, eval_inputs, encode):
    eval_set, pairs = eval_inputs
    lexical = LexicalIndex.build(IDS, TEXTS)

    def judge(served: dict | None):
        contenders = Contenders(tiny_model_path, tiny_model_path, champion=tiny_model_path, champion_retrieval=served)
        return evaluate(eval_set, pairs, IDS, contenders, encode, RetrievalConfig(mode="hybrid", dense_weight=0.5),
                        GateConfig(), {}, precision="fp32", lexical=lexical).report

    dense_champion = judge({"mode": "dense", "fusion": None, "dense_weight": None})
    assert dense_champion["judged"] == {"candidate": "candidate_hybrid", "champion": "champion"}
    assert dense_champion["retrieval"]["champion"]["as"] == "served"

    lexical_heavy = judge({"mode": "hybrid", "fusion": "convex", "dense_weight": 0.0})  # served with its own weight
    assert lexical_heavy["judged"] == {"candidate": "candidate_hybrid", "champion": "champion_hybrid"}
    assert lexical_heavy["champion_hybrid"] == lexical_heavy["bm25"]  # fused at 0.0, not at the candidate's 0.5

    unknown = judge(None)  # no record of how it serves: judged like the candidate
    assert unknown["judged"] == {"candidate": "candidate_hybrid", "champion": "champion_hybrid"}
    assert unknown["retrieval"]["champion"] == {**{k: v for k, v in unknown["retrieval"].items() if k != "champion"},
                                                "as": "the candidate's mode"}
    assert unknown["retrieval"]["dense_weight"] == 0.5
    assert unknown["champion_hybrid"] == unknown["candidate_hybrid"]  # the same model, fused the same way
