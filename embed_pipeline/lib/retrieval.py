"""Retrieval as it is served: dense (FAISS), lexical (BM25) or both fused, and the query API.

One `RetrievalSpec` says how a model's index answers a query (mode, fusion, dense weight, rrf_k,
depth, the precision of the corpus vectors). The eval decides it once per candidate, writes it
into the report, and a promotion copies it whole into the served pointer; `rank` is the one
function that turns a spec, query vectors and the indexes into a ranking, and both the eval report
and `Searcher` call it, so what the gate judged is what serves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.encoding import PRECISION_OF_LABEL
from embed_pipeline.lib.fusion import DEFAULT_RRF_K, METHODS, Ranked, choose_dense_weight, fuse_scored
from embed_pipeline.lib.indexing import LoadedIndex, build_faiss_index

MODES = ("dense", "hybrid")


@dataclass(frozen=True)
class RetrievalSpec:
    """How one model's index answers a query: what the gate judged and, after a promotion, what serves.

    `mode` dense: the top of the FAISS index. `mode` hybrid: the top `depth` of the FAISS index
    and the top `depth` of BM25 fused by `fusion` (lib/fusion.py) with `dense_weight` (and `rrf_k`
    for rrf); `dense_weight_source` says where the weight came from (config, or the dev split the
    training run held out). A dense spec has no fusion and no weight. `precision` is the label of
    what the corpus vectors were encoded in (bf16, fp16, fp32, tf32): served queries are encoded
    the same way. `derived` is empty for a recorded spec; for one rebuilt from a record written
    before specs were kept (an older served pointer or report) it says what was assumed.
    """

    mode: str
    fusion: str | None
    dense_weight: float | None
    dense_weight_source: str
    rrf_k: int
    depth: int
    precision: str
    derived: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"retrieval mode {self.mode!r}: expected one of {MODES}")
        if self.mode == "hybrid" and (self.fusion not in METHODS or self.dense_weight is None
                                      or not 0.0 <= self.dense_weight <= 1.0):
            raise ValueError(f"a hybrid retrieval spec needs a fusion in {METHODS} and a dense weight in [0, 1], "
                             f"got {self.fusion!r} and {self.dense_weight!r}")
        if self.rrf_k < 1 or self.depth < 1:
            raise ValueError(f"rrf_k and depth must be >= 1, got {self.rrf_k} and {self.depth}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def as_hybrid(self, fusion: str, dense_weight: float) -> RetrievalSpec:
        return dataclasses.replace(self, mode="hybrid", fusion=fusion, dense_weight=dense_weight)

    def as_dense(self) -> RetrievalSpec:
        return dataclasses.replace(self, mode="dense", fusion=None, dense_weight=None)

    @property
    def query_precision(self) -> str:
        """The `encode` precision setting that reproduces the corpus side's autocast."""
        return PRECISION_OF_LABEL.get(self.precision, "auto")

    @classmethod
    def from_record(cls, record: dict | None, depth: int, precision: str) -> RetrievalSpec:
        """The spec a served pointer or a report recorded, or one derived from an older record.

        Older records kept only `mode`, `fusion` and `dense_weight`; they were served with the
        fusion's default rrf_k (60), the configured depth and the configured encode precision,
        so those are assumed (`depth`, `precision` are the config's), and `derived` says so. No
        record at all is a dense spec.
        """
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "derived"]
        record = record or {}
        if all(name in record for name in fields):
            return cls(**{name: record[name] for name in fields}, derived=record.get("derived", ""))
        mode = record.get("mode") or "dense"
        hybrid = mode == "hybrid"
        return cls(mode=mode, fusion=(record.get("fusion") or "convex") if hybrid else None,
                   dense_weight=(1.0 if record.get("dense_weight") is None else float(record["dense_weight"])) if hybrid else None,
                   dense_weight_source=record.get("dense_weight_source") or "unrecorded",
                   rrf_k=DEFAULT_RRF_K, depth=depth, precision=precision,
                   derived=f"recorded before retrieval specs were kept: assumed rrf_k {DEFAULT_RRF_K} (what it was served "
                           f"with), depth {depth} and precision {precision} (the config's)")


def exact_index(vectors: np.ndarray, passage_ids: list[str], windows: dict | None = None) -> LoadedIndex:
    """Exact inner-product search over `vectors` (row i is `passage_ids[i]`), with the served index's API.
    With `windows` (rows are passage windows, a passage's id repeated) a passage ranks once, at its
    best window, as in the served index (`LoadedIndex.search_ids`)."""
    return LoadedIndex(build_faiss_index(vectors, "flat"), np.asarray(passage_ids, dtype=object),
                       {"type": "flat", "windows": windows})


def dense_candidates(dense_index, query_vectors: np.ndarray, k: int) -> Ranked:
    """Top-k (passage ids, float scores) per query from a dense index, scores cut to the ids found."""
    scores, ids = dense_index.search_ids(query_vectors, k)
    return ids, [[float(x) for x in s[:len(row)]] for s, row in zip(scores, ids, strict=True)]


def rank(spec: RetrievalSpec, query_vectors: np.ndarray, query_texts: list[str], dense_index, lexical, k: int) -> Ranked:
    """Top-k (passage ids, scores) per query, as `spec` ranks: the one ranking of the eval and the query API.

    `dense_index` has `search_ids(vectors, k) -> (scores, ids)` (`lib.indexing.LoadedIndex`: the
    served index, or `exact_index`); `lexical` is a `lib.lexical.LexicalIndex` (hybrid only).
    Dense: the index is asked for max(k, depth) candidates and the top k kept, so with depth >= 100
    the served top 10 and the judged top 100 come from one and the same search, even on an
    approximate index. Hybrid: `depth` candidates from each side, fused; the score is the fused
    score. Scores are floats, best first.
    """
    if spec.mode == "dense":
        ids, scores = dense_candidates(dense_index, query_vectors, max(k, spec.depth))
        return [row[:k] for row in ids], [row[:k] for row in scores]
    if lexical is None:
        raise ValueError("hybrid retrieval needs a BM25 index beside the dense one, and there is none")
    dense = dense_candidates(dense_index, query_vectors, spec.depth)
    return fuse_scored(dense, lexical.search(query_texts, spec.depth), spec.fusion, spec.dense_weight, k, spec.rrf_k)


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


def read_dev_queries(dev_path: str) -> tuple[list[str] | None, dict[str, set[str]] | None]:
    """The dev queries a training run held out and their positives, from the file its model handle
    names (`ModelHandle.dev_path`); (None, None) when the handle names none (an older version)."""
    if not dev_path:
        return None, None
    return dev_relevance(pd.read_parquet(dev_path))


def choose_weight(configured: float | None, fusion: str, dense: Ranked | None, lexical: Ranked | None,
                  dev_queries: list[str], relevant: dict[str, set[str]], rrf_k: int = DEFAULT_RRF_K) -> WeightChoice:
    """The configured dense weight, or the one `choose_dense_weight` picks on the dev split.

    Never on the eval set: a weight tuned on the queries that judge it would flatter the gate.
    With no dev queries the dense weight is 1.0 (the dense ranking alone), said so in `source`.
    `dense` and `lexical` are the dev queries' candidate lists at the spec's depth, fused here
    with the `rrf_k` that will serve.
    """
    if configured is not None:
        return WeightChoice(configured, "config", None)
    if not dev_queries or dense is None or lexical is None:
        return WeightChoice(1.0, "no dev queries: dense alone", None)
    weight, table = choose_dense_weight(dense, lexical, relevant, dev_queries, method=fusion, rrf_k=rrf_k)
    return WeightChoice(weight, f"dev split ({len(dev_queries)} queries)", table)


class Searcher:
    """Queries against a served pointer: its model, FAISS index and BM25 index, loaded once, ranked by
    the pointer's `RetrievalSpec` through `rank` (the eval's own ranking function).

    `depth` and `precision` (the config's) only stand in for what a pointer written before
    retrieval specs were kept does not record (`RetrievalSpec.from_record`).
    """

    def __init__(self, pointer: dict, query_prompt: str = "", threads: int = 0, precision: str = "auto", depth: int = 100):
        from embed_pipeline.lib.encoding import load_model
        from embed_pipeline.lib.indexing import load_index
        from embed_pipeline.lib.lexical import LexicalIndex

        self.pointer = pointer
        self.spec = RetrievalSpec.from_record(pointer.get("retrieval"), depth, precision)
        self.model = load_model(pointer["model_dir"], threads=threads)
        # Both indexes are memory-mapped: opening a million-passage index costs page-ins as
        # searches touch it, not a read of the whole file into every searching process.
        self.dense = load_index(Path(pointer["index_path"]), mmap=True)
        lexical = pointer.get("lexical_path")
        self.lexical = LexicalIndex.load(Path(lexical), mmap=True) if lexical and Path(lexical).exists() else None
        self.query_prompt = query_prompt
        self.corpus = None  # the corpus dataset hit texts are looked up in (`hit_texts`), opened on first use

    def search(self, queries: list[str], k: int = 10, mode: str | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (passage id, score) per query, best first.

        `mode` None (or the served one): exactly what serves. `dense` on a pointer served hybrid:
        its FAISS index alone; `lexical`: BM25 alone. `hybrid` on a pointer served dense is refused:
        no fusion weight was judged for it, and a dense ranking is never labelled hybrid.
        """
        from embed_pipeline.lib.encoding import encode

        spec = self.spec_for(mode)
        if spec is None:  # lexical
            ids, scores = self._lexical_index().search(queries, k)
            return [list(zip(i, map(float, s), strict=False)) for i, s in zip(ids, scores, strict=True)]
        if spec.mode == "hybrid":
            self._lexical_index()
        vectors = encode(self.model, queries, prompt=self.query_prompt, progress=False, precision=spec.query_precision)
        ids, scores = rank(spec, vectors, queries, self.dense, self.lexical, k)
        return [list(zip(i, s, strict=True)) for i, s in zip(ids, scores, strict=True)]

    def spec_for(self, mode: str | None) -> RetrievalSpec | None:
        """The spec a search in `mode` ranks by (None: BM25 alone); raises when `mode` cannot be served honestly."""
        if mode is None or mode == self.spec.mode:
            return self.spec
        if mode == "dense":
            return self.spec.as_dense()
        if mode == "lexical":
            return None
        if mode == "hybrid":
            raise ValueError(f"v{self.pointer['model_version']} serves dense (the gate judged it dense): no fusion weight "
                             "was judged for a hybrid search; use --mode dense or lexical, or promote a candidate judged hybrid")
        raise ValueError(f"unknown search mode {mode!r} (dense, hybrid, lexical)")

    def _lexical_index(self):
        if self.lexical is None:
            raise ValueError("this search needs a BM25 index beside the served FAISS index; the served pointer has none")
        return self.lexical


def served_searcher(config) -> Searcher:
    """A `Searcher` over the served pointer; raises `LookupError` before the first promotion (nothing serves yet)."""
    from embed_pipeline.lib.promotion import read_served

    pointer = read_served(config.artifacts_dir)
    if pointer is None:
        raise LookupError("no model is served yet: promote one first (`embed-pipeline run`, then the promotion sensor or `promote`)")
    return Searcher(pointer, config.query_prompt, config.index.encode_threads, config.index.encode_precision,
                    config.retrieval.depth)


def search_served(config, query: str, k: int = 10, mode: str | None = None) -> list[dict]:
    """Hits for `query` from the served pointer (model + indexes), best first: the Python query API.

    Every hit has `score` (cosine for dense, BM25 for lexical, the fused score for hybrid) and
    `mode`, the mode that ranked it. Raises `LookupError` before the first promotion, `ValueError`
    for a mode the served pointer cannot serve honestly.
    """
    searcher = served_searcher(config)
    hits = searcher.search([query], k, mode)[0]
    used = mode or searcher.spec.mode
    texts = hit_texts(searcher, config, [pid for pid, _ in hits])
    return [{"rank": rank_, "passage_id": pid, "score": score, "mode": used,
             "title": str(texts["title"].get(pid, "")), "text": str(texts["text"].get(pid, ""))[:300],
             "model_version": str(searcher.pointer["model_version"])}
            for rank_, (pid, score) in enumerate(hits, start=1)]


def hit_texts(searcher: Searcher, config, passage_ids: list[str]):
    """Title and text of the hits (a frame indexed by passage id), looked up by id in the corpus
    dataset the served index was built from: a few row groups read, never the corpus.

    An index built before datasets were recorded falls back to the config's corpus as it is now
    (its dataset is built once, then reused)."""
    from embed_pipeline.lib.corpus import MANIFEST, CorpusDataset, dataset_for

    dataset = getattr(searcher, "corpus", None)
    if dataset is None:
        folder = searcher.dense.meta.get("corpus_dataset")
        dataset = CorpusDataset(Path(folder)) if folder and (Path(folder) / MANIFEST).exists() else dataset_for(config)
        searcher.corpus = dataset  # kept with the searcher: its shard files and id indexes stay open between queries
    return dataset.lookup(passage_ids, ["title", "text"])
