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
    query batch) and loses no recall; IVF-Flat keeps the full vectors and scans `ivf_nprobe` of
    its lists per query (milliseconds at millions of passages), and builds in bounded time (k-means
    on a sample, then one assignment pass) where HNSW's graph construction took ~40 s per 20,000
    vectors on this project's 2-core machine (over 30 minutes at a million); IVF-PQ compresses each
    vector to `pq_m` bytes for corpora too large for RAM.
    """
    if config.type != "auto":
        return config.type
    if passages <= config.flat_max_passages:
        return "flat"
    return "ivfflat" if passages <= config.ivf_flat_max_passages else "ivfpq"


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
    if index_type == "ivfflat":
        return passages * (dimension * 4 + 8)
    if index_type == "ivfpq":
        return passages * (_pq_subquantizers(dimension, config.pq_m) + 8)
    raise ValueError(f"unknown index type {index_type!r}")


def _pq_subquantizers(dimension: int, wanted: int) -> int:
    """The largest divisor of `dimension` not above `wanted` (FAISS needs dimension % m == 0)."""
    return max(m for m in range(1, min(wanted, dimension) + 1) if dimension % m == 0)


def _ivf_lists(n: int, config: IndexConfig, index_type: str = "ivfpq") -> int:
    """IVF lists: the configured count, else sqrt(n) for IVF-Flat (each list ~sqrt(n) full vectors:
    k-means on a sample stays cheap) and 4 sqrt(n) for IVF-PQ (finer lists offset the coarse codes);
    never more than n / 39 (k-means needs ~39 points a centroid)."""
    nlist = config.ivf_nlist or int((1 if index_type == "ivfflat" else 4) * np.sqrt(n))
    return max(1, min(nlist, n // 39 or 1))


def empty_faiss_index(dim: int, n: int, index_type: str = "flat", config: IndexConfig | None = None):
    """An inner-product FAISS index for `n` vectors of `dim`, before training and adding.

    `flat` is exact search; `hnsw` (`hnsw_m` links per node, efSearch `hnsw_ef_search`) trades a
    little recall for sub-linear search; `ivfpq` clusters into `ivf_nlist` lists (0: 4*sqrt(n))
    searched `ivf_nprobe` at a time, each vector compressed to `pq_m` bytes (8-bit codes, fewer
    bits when there are under 256 vectors to train the codebooks on).
    """
    import faiss

    config = config or IndexConfig()
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = config.hnsw_ef_search
        return index
    if index_type == "ivfflat":
        nlist = _ivf_lists(n, config, "ivfflat")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(config.ivf_nprobe, nlist)
        return index
    if index_type == "ivfpq":
        if n < 2:
            raise ValueError("an ivfpq index needs at least 2 vectors to train on; use flat")
        nlist = _ivf_lists(n, config)
        nbits = min(8, int(np.log2(n)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_subquantizers(dim, config.pq_m), nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(config.ivf_nprobe, nlist)
        return index
    raise ValueError(f"unknown index type {index_type!r} (flat, ivfflat, hnsw, ivfpq)")


def training_sample_size(n: int, index_type: str, config: IndexConfig | None = None) -> int:
    """How many vectors an index is trained on: none for flat and HNSW; for IVF-PQ 64 per list
    (k-means needs ~39 per centroid, FAISS warns below) and at least 2^14 for the PQ codebooks,
    never more than `n`. A sample, not the corpus: training cost stays flat as the corpus grows."""
    if index_type not in ("ivfflat", "ivfpq"):
        return 0
    config = config or IndexConfig()
    return int(min(n, max(64 * _ivf_lists(n, config, index_type), 16_384)))


def build_faiss_index(vectors: np.ndarray, index_type: str = "flat", config: IndexConfig | None = None):
    """An inner-product FAISS index over `vectors` (float32, rows L2-normalised), in memory."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = empty_faiss_index(dim, n, index_type, config)
    if not index.is_trained:
        index.train(vectors)
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

    def search_ids(self, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], list[list[str]]]:
        """Top-k (scores, passage ids) per query. An index of passage windows (`meta["windows"]`,
        lib/windows.py) holds a passage once per window: each passage is kept once, at its best
        window's score, and the search goes deeper until k distinct passages are found (or the
        index is exhausted), so the top k is the same as over one max-pooled vector per passage."""
        if not self.meta.get("windows"):
            scores, rows = search(self.index, queries, k)
            return list(scores), [[self.passage_ids[r] for r in row if r >= 0] for row in rows]
        from embed_pipeline.lib.windows import best_per_passage

        out_scores: list = [None] * len(queries)
        out_ids: list = [None] * len(queries)
        todo = np.arange(len(queries))
        fetch = min(int(self.index.ntotal), 2 * k + 8)
        while len(todo):
            scores, rows = search(self.index, queries[todo], fetch)
            again = []
            for q, row_scores, row in zip(todo, scores, rows, strict=True):
                valid = row >= 0
                ids, kept = best_per_passage([self.passage_ids[r] for r in row[valid]], row_scores[valid], k)
                if len(ids) < k and valid.all() and fetch < self.index.ntotal:
                    again.append(q)
                    continue
                out_ids[q], out_scores[q] = ids, np.asarray(kept, dtype=np.float32)
            todo = np.asarray(again, dtype=np.int64)
            fetch = min(int(self.index.ntotal), fetch * 2)
        return out_scores, out_ids


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


def load_index(folder: Path, mmap: bool = False) -> LoadedIndex:
    """Read an index folder; `mmap` maps the index file instead of reading it (FAISS's IO_FLAG_MMAP,
    where the index type supports it: the OS pages vectors in as searches touch them, so opening a
    large index costs milliseconds, not a read of the whole file)."""
    import faiss

    folder = Path(folder)
    index = None
    if mmap:
        try:
            index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # an index type FAISS cannot map: read it
            index = None
    if index is None:
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


def _sample_rows(paths: list[Path], n: int, size: int, seed: int = 0) -> np.ndarray:
    """`size` vectors drawn uniformly (seeded) from the `n` rows of the shard files, read in batches."""
    from embed_pipeline.lib.shards import iter_shard_embeddings

    chosen = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    parts, start = [], 0
    for _, vectors in iter_shard_embeddings(paths):
        end = start + len(vectors)
        lo, hi = np.searchsorted(chosen, [start, end])
        if hi > lo:
            parts.append(np.array(vectors[chosen[lo:hi] - start]))
        start = end
    return np.concatenate(parts)


def publish_index_from_shards(paths: list[Path], config: IndexConfig, meta: dict, target: Path,
                              on_progress=None) -> tuple[PublishedIndex, list[str]]:
    """Build the dense index over shard files in bounded memory and save it atomically at `target`.

    Nothing but the index itself grows with the corpus: vectors are added record batch by record
    batch from the memory-mapped shard files, and IVF-PQ is trained on a seeded sample
    (`training_sample_size`). The saved folder is checked (id map against the index) before it is
    renamed into place. Returns the published index and the passage ids in index row order.
    """
    import faiss

    from embed_pipeline.lib.shards import check_mergeable, iter_shard_embeddings, shard_rows

    precision = check_mergeable(paths)
    n = sum(shard_rows(p) for p in paths)
    if n == 0:
        raise ValueError("cannot build an index over an empty corpus: every shard file is empty")
    dim = next(v.shape[1] for _, v in iter_shard_embeddings(paths) if len(v))
    index_type = choose_index_type(n, config)
    index = empty_faiss_index(dim, n, index_type, config)
    if not index.is_trained:
        index.train(_sample_rows(paths, n, training_sample_size(n, index_type, config)))
    ids: list[str] = []
    for batch_ids, vectors in iter_shard_embeddings(paths):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        ids += batch_ids
        if on_progress is not None and len(ids) % 262_144 < len(batch_ids):
            on_progress(f"index: {len(ids):,} of {n:,} vectors added ({index_type})")
    meta = {**meta, "windows": _window_counts(ids, meta.get("windows"))}
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        size, dimension = int(index.ntotal), int(index.d)
        del index  # the check below maps the written file; two copies in memory would double the peak
        pd.DataFrame({"passage_id": ids}).to_parquet(tmp / IDS_FILE, index=False)
        write_json({**meta, "type": index_type, "encode_precision": meta.get("encode_precision", precision),
                    "size": size, "dimension": dimension}, tmp / META_FILE)
        load_index(tmp, mmap=True)
    return PublishedIndex(target, index_type, size, dimension), ids


def _window_counts(ids: list[str], windows: dict | None) -> dict | None:
    """The `windows` meta block with its counts (passages, long passages, rows), after checking the
    id map: without windows every id is unique; with them a passage's windows are adjacent rows.
    Anything else means shard files of different shard counts (or window settings) were mixed."""
    mixed = "a passage id appears in two shards: shard files from different shard counts were mixed"
    if not windows:
        if not pd.Index(ids).is_unique:
            raise ValueError(mixed)
        return None
    codes = pd.Series(ids, dtype=object)
    runs = int((codes != codes.shift()).sum())
    counts = codes.value_counts(sort=False)
    if runs != len(counts):
        raise ValueError(mixed)
    return {"enabled": True, **windows, "passages": len(counts), "long_passages": int((counts > 1).sum()), "rows": len(ids)}


def build_index_from_shards(shard_files: list[Path], config: IndexConfig, meta: dict, target: Path,
                            dataset=None, language: str = "english", on_progress=None) -> BuiltIndexes:
    """Merge per-shard embeddings into one FAISS index at `target/dense`, and, when the corpus
    `dataset` (a `corpus.CorpusDataset`) is given, a BM25 index of the same passages at
    `target/lexical` (for hybrid retrieval), both built in a stream.

    The one path for both index assets (the candidate's `corpus_index` and the served model's
    `served_index`); each folder is written atomically. The dataset's folder is recorded in the
    index meta, so `search` looks its hits' texts up there by id.
    """
    if dataset is not None:
        meta = {**meta, "corpus_dataset": str(dataset.folder), "corpus_version": dataset.version}
    dense, ids = publish_index_from_shards(shard_files, config, meta, Path(target) / "dense", on_progress)
    lexical_path = None
    if dataset is not None:
        lexical_path = build_lexical_from_dataset(dataset, Path(target) / "lexical", language, ids)
    return BuiltIndexes(dense, lexical_path)


def build_lexical_from_dataset(dataset, target: Path, language: str = "english", passage_ids: list[str] | None = None) -> Path:
    """BM25 over a corpus dataset's passages (those of `passage_ids` when given: the dense index's),
    built from record batches (`LexicalIndex.build_stream`) and saved atomically at `target`."""
    from embed_pipeline.lib.corpus import passage_text
    from embed_pipeline.lib.lexical import LexicalIndex

    indexed = pd.Index(pd.unique(pd.Series(passage_ids, dtype=object))) if passage_ids is not None else None

    def batches():
        for frame in dataset.batches(["passage_id", "title", "text"]):
            if indexed is not None:
                frame = frame[indexed.get_indexer(frame["passage_id"]) >= 0]
            yield list(frame["passage_id"]), [passage_text(t, x) for t, x in zip(frame["title"], frame["text"], strict=True)]

    return LexicalIndex.build_stream(batches(), language).save(Path(target))
