"""FAISS indexes over normalised embeddings (inner product = cosine), written atomically.

An index on disk is one folder: `index.faiss`, `ids.parquet` (row -> passage id, the id map) and
`index.json` (type, size, dimension, the model it was built with). The folder is written under a
temporary name and renamed into place, so a crash mid-build never leaves a half index behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.config import IndexConfig
from embed_pipeline.lib.io import atomic_path, read_json, write_json

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "index.json"


def choose_index_type(passages: int, config: IndexConfig) -> str:
    """The index type for a corpus of `passages`: the configured one, or by size when `auto`.

    Exact search is affordable up to a few hundred thousand passages (one matrix product per
    query batch) and loses no recall; HNSW answers in sub-linear time at ~1.1-1.7x the flat
    index's memory; IVF-PQ compresses each vector to `pq_m` bytes for corpora too large for RAM.
    """
    if config.type != "auto":
        return config.type
    if passages <= config.flat_max_passages:
        return "flat"
    return "hnsw" if passages <= config.hnsw_max_passages else "ivfpq"


def index_bytes(passages: int, dimension: int, index_type: str, config: IndexConfig | None = None) -> int:
    """Approximate in-memory (and on-disk) size of an index, for capacity planning.

    flat: 4 bytes per float; hnsw: the flat vectors plus ~2*M int32 neighbour links per node on
    layer 0; ivfpq: `pq_m` code bytes plus an 8-byte id per passage (centroids are negligible).
    """
    config = config or IndexConfig()
    if index_type == "flat":
        return passages * dimension * 4
    if index_type == "hnsw":
        return passages * (dimension * 4 + 2 * config.hnsw_m * 4)
    if index_type == "ivfpq":
        return passages * (_pq_subquantizers(dimension, config.pq_m) + 8)
    raise ValueError(f"unknown index type {index_type!r}")


def _pq_subquantizers(dimension: int, wanted: int) -> int:
    """The largest divisor of `dimension` not above `wanted` (FAISS needs dimension % m == 0)."""
    return max(m for m in range(1, min(wanted, dimension) + 1) if dimension % m == 0)


def build_faiss_index(vectors: np.ndarray, index_type: str = "flat", config: IndexConfig | None = None):
    """An inner-product FAISS index over `vectors` (float32, rows L2-normalised).

    `flat` is exact search; `hnsw` (`hnsw_m` links per node, efSearch `hnsw_ef_search`) trades a
    little recall for sub-linear search; `ivfpq` clusters into `ivf_nlist` lists (0: 4*sqrt(n))
    searched `ivf_nprobe` at a time, each vector compressed to `pq_m` bytes (8-bit codes, fewer
    bits when there are under 256 vectors to train the codebooks on).
    """
    import faiss

    config = config or IndexConfig()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = config.hnsw_ef_search
    elif index_type == "ivfpq":
        if n < 2:
            raise ValueError("an ivfpq index needs at least 2 vectors to train on; use flat")
        nlist = config.ivf_nlist or int(4 * np.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))
        nbits = min(8, int(np.log2(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_subquantizers(dim, config.pq_m), nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(config.ivf_nprobe, nlist)
    else:
        raise ValueError(f"unknown index type {index_type!r} (flat, hnsw, ivfpq)")
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, row numbers) per query; rows are -1 where the index has fewer than k items."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


@dataclass(frozen=True)
class LoadedIndex:
    index: object
    passage_ids: np.ndarray
    meta: dict

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        scores, rows = search(self.index, queries, k)
        return scores, [[self.passage_ids[r] for r in row if r >= 0] for row in rows]


def save_index(index, passage_ids: list[str], meta: dict, target: Path) -> Path:
    """Write the index folder atomically: build under a temporary name, verify, then rename.

    The temporary folder is read back with `load_index` (which checks the id map against the
    index) before the rename, so an inconsistent build raises and `target` keeps what it held.
    A process killed mid-build leaves only a hidden `.<name>.tmp-*` folder, never a half index.
    """
    import faiss

    with atomic_path(Path(target)) as tmp:
        tmp.mkdir(parents=True)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pd.DataFrame({"passage_id": passage_ids}).to_parquet(tmp / IDS_FILE, index=False)
        write_json({**meta, "size": int(index.ntotal), "dimension": int(index.d)}, tmp / META_FILE)
        load_index(tmp)
    return Path(target)


def load_index(folder: Path) -> LoadedIndex:
    import faiss

    folder = Path(folder)
    index = faiss.read_index(str(folder / INDEX_FILE))
    ids = pd.read_parquet(folder / IDS_FILE)["passage_id"].to_numpy()
    if len(ids) != index.ntotal:
        raise ValueError(f"{folder}: id map has {len(ids)} rows but the index holds {index.ntotal}")
    return LoadedIndex(index, ids, read_json(folder / META_FILE))


@dataclass(frozen=True)
class PublishedIndex:
    path: Path
    type: str
    size: int
    dimension: int


def publish_index(passage_ids: list[str], vectors: np.ndarray, config: IndexConfig, meta: dict, target: Path) -> PublishedIndex:
    """Build the index type `config` calls for over `vectors` and save it atomically at `target`."""
    index_type = choose_index_type(len(passage_ids), config)
    index = build_faiss_index(vectors, index_type, config)
    save_index(index, passage_ids, {**meta, "type": index_type}, target)
    return PublishedIndex(Path(target), index_type, int(index.ntotal), int(index.d))


@dataclass(frozen=True)
class BuiltIndexes:
    """The dense index (and the BM25 index beside it) built from one corpus snapshot."""

    dense: PublishedIndex
    lexical_path: Path | None


def build_index_from_shards(shard_files: list[Path], config: IndexConfig, meta: dict, target: Path,
                            passages: pd.DataFrame | None = None, language: str = "english") -> BuiltIndexes:
    """Merge per-shard embeddings into one FAISS index at `target/dense`, and, when `passages` are
    given, a BM25 index of the same passages at `target/lexical` (for hybrid retrieval).

    The one path for both index assets (the candidate's `corpus_index` and the served model's
    `served_index`); each folder is written atomically.
    """
    from embed_pipeline.lib.shards import merge_shard_embeddings

    ids, vectors = merge_shard_embeddings(shard_files)
    dense = publish_index(ids, vectors, config, meta, Path(target) / "dense")
    lexical_path = None
    if passages is not None:
        from embed_pipeline.lib.corpus import passage_texts
        from embed_pipeline.lib.lexical import LexicalIndex

        keep = passages[passages["passage_id"].isin(set(ids))]
        lexical_path = LexicalIndex.build(list(keep["passage_id"]), passage_texts(keep), language).save(Path(target) / "lexical")
    return BuiltIndexes(dense, lexical_path)
