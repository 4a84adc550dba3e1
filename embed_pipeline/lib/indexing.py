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

from embed_pipeline.lib.io import atomic_path, read_json, write_json

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "index.json"


def build_faiss_index(vectors: np.ndarray, index_type: str = "flat"):
    """An inner-product FAISS index over `vectors` (float32, rows L2-normalised).

    `flat` is exact search; `hnsw` (32 links per node, efSearch 128) trades a little recall for
    sub-linear search on large corpora.
    """
    import faiss

    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        raise ValueError(f"unknown index type {index_type!r} (flat, hnsw)")
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
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
    """Write the index folder atomically (build under a temporary name, then rename)."""
    import faiss

    with atomic_path(Path(target)) as tmp:
        tmp.mkdir(parents=True)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pd.DataFrame({"passage_id": passage_ids}).to_parquet(tmp / IDS_FILE, index=False)
        write_json({**meta, "size": int(index.ntotal), "dimension": int(index.d)}, tmp / META_FILE)
    return Path(target)


def load_index(folder: Path) -> LoadedIndex:
    import faiss

    folder = Path(folder)
    index = faiss.read_index(str(folder / INDEX_FILE))
    ids = pd.read_parquet(folder / IDS_FILE)["passage_id"].to_numpy()
    if len(ids) != index.ntotal:
        raise ValueError(f"{folder}: id map has {len(ids)} rows but the index holds {index.ntotal}")
    return LoadedIndex(index, ids, read_json(folder / META_FILE))
