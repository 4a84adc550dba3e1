"""Retrieval as it is served: dense (FAISS), lexical (BM25) or both fused, and the query API.

`search(...)` is what a person calls after a promotion to try the champion by hand; the eval
report ranks the eval queries through the same functions, so what the gate judged is what serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.fusion import Ranked, choose_dense_weight, fuse
from embed_pipeline.lib.indexing import build_faiss_index, search


def dense_ranked(query_vectors: np.ndarray, corpus_vectors: np.ndarray, corpus_ids: list[str], k: int) -> Ranked:
    """Exact top-k (ids, scores) per query by inner product (vectors are normalised: cosine)."""
    scores, rows = search(build_faiss_index(corpus_vectors, "flat"), query_vectors, k)
    return [[corpus_ids[r] for r in row if r >= 0] for row in rows], scores


def ranked_ids(ranked: Ranked, query_ids: list[str]) -> dict[str, list[str]]:
    return dict(zip(query_ids, ranked[0], strict=True))


@dataclass(frozen=True)
class WeightChoice:
    dense_weight: float
    source: str  # "config" or "dev split (N queries)"
    table: pd.DataFrame | None


def dev_relevance(dev_rows: pd.DataFrame) -> tuple[list[str], dict[str, set[str]]]:
    """Dev queries (texts, in order) and their positives, from the training rows held out as dev."""
    relevant = dev_rows.groupby("query")["passage_id"].agg(set).to_dict()
    return list(relevant), relevant


def training_dev_queries(triples: pd.DataFrame, training) -> tuple[list[str], dict[str, set[str]]]:
    """The dev queries `fine_tune` held out of `triples` under `training` (a TrainingConfig), and their
    positives: the same seeded split, so the hybrid's weight is chosen on queries never trained on."""
    from embed_pipeline.lib.training_data import split_dev

    return dev_relevance(split_dev(triples, training.dev_share, training.dev_max_queries, training.seed)[1])


def choose_weight(configured: float | None, fusion: str, dense: Ranked | None, lexical: Ranked | None,
                  dev_queries: list[str], relevant: dict[str, set[str]]) -> WeightChoice:
    """The configured dense weight, or the one `choose_dense_weight` picks on the dev split.

    Never on the eval set: a weight tuned on the queries that judge it would flatter the gate.
    With no dev queries the dense weight is 1.0 (the dense ranking alone), said so in `source`.
    """
    if configured is not None:
        return WeightChoice(configured, "config", None)
    if not dev_queries or dense is None or lexical is None:
        return WeightChoice(1.0, "no dev queries: dense alone", None)
    weight, table = choose_dense_weight(dense, lexical, relevant, dev_queries, method=fusion)
    return WeightChoice(weight, f"dev split ({len(dev_queries)} queries)", table)


class Searcher:
    """Queries against a served pointer: its model, FAISS index and BM25 index, loaded once."""

    def __init__(self, pointer: dict, query_prompt: str = "", threads: int = 0, precision: str = "auto"):
        from embed_pipeline.lib.encoding import load_model
        from embed_pipeline.lib.indexing import load_index
        from embed_pipeline.lib.lexical import LexicalIndex

        self.pointer = pointer
        self.model = load_model(pointer["model_dir"], threads=threads)
        self.dense = load_index(Path(pointer["index_path"]))
        lexical = pointer.get("lexical_path")
        self.lexical = LexicalIndex.load(Path(lexical)) if lexical and Path(lexical).exists() else None
        self.query_prompt = query_prompt
        self.precision = precision
        self.retrieval = pointer.get("retrieval") or {"mode": "dense", "fusion": "convex", "dense_weight": 1.0}

    def search(self, queries: list[str], k: int = 10, mode: str | None = None, depth: int = 100) -> list[list[tuple[str, float]]]:
        """Top-k (passage id, score) per query; `mode` dense|hybrid|lexical (default: what is served)."""
        from embed_pipeline.lib.encoding import encode

        mode = mode or self.retrieval["mode"]
        if mode in ("hybrid", "lexical") and self.lexical is None:
            raise ValueError(f"mode {mode!r} needs a BM25 index beside the served FAISS index; this pointer has none")
        if mode == "lexical":
            ids, scores = self.lexical.search(queries, k)
            return [list(zip(i, map(float, s), strict=False)) for i, s in zip(ids, scores, strict=True)]
        vectors = encode(self.model, queries, prompt=self.query_prompt, progress=False, precision=self.precision)
        scores, ids = self.dense.search_ids(vectors, depth if mode == "hybrid" else k)
        if mode == "dense":
            return [list(zip(i, map(float, s), strict=False)) for i, s in zip(ids, scores, strict=True)]
        fused = fuse((ids, scores), self.lexical.search(queries, depth), self.retrieval.get("fusion") or "convex",
                     float(self.retrieval.get("dense_weight") if self.retrieval.get("dense_weight") is not None else 1.0), k)
        return [[(pid, float(rank)) for rank, pid in enumerate(row, start=1)] for row in fused]


def search_served(config, query: str, k: int = 10, mode: str | None = None) -> list[dict]:
    """Hits for `query` from the served pointer (model + indexes), best first: the Python query API.

    Raises `LookupError` before the first promotion (nothing serves yet).
    """
    from embed_pipeline.lib.corpus import load_corpus
    from embed_pipeline.lib.promotion import read_served

    pointer = read_served(config.artifacts_dir)
    if pointer is None:
        raise LookupError("no model is served yet: promote one first (`embed-pipeline run`, then the promotion sensor or `promote`)")
    searcher = Searcher(pointer, config.query_prompt, config.index.encode_threads, config.index.encode_precision)
    hits = searcher.search([query], k, mode, config.retrieval.depth)[0]
    passages = load_corpus(config.corpus).passages.set_index("passage_id")
    used = mode or searcher.retrieval["mode"]
    return [{"rank": rank, "passage_id": pid, ("score" if used != "hybrid" else "fused_rank"): score,
             "title": str(passages["title"].get(pid, "")), "text": str(passages["text"].get(pid, ""))[:300],
             "model_version": str(pointer["model_version"]), "mode": used}
            for rank, (pid, score) in enumerate(hits, start=1)]
