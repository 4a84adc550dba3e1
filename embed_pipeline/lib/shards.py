"""Per-shard embedding files: one `.npz` per corpus shard, written through the embedding cache.

A shard file holds exactly its shard's current passages (`passage_ids`, float32 `vectors`) and the
precision they were encoded in, so the index is a concatenation of shard files, a shard
re-embedding touches nothing else, and shards of two precisions are never merged into one index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.encoding import (
    DEFAULT_BATCH_SIZE,
    EmbeddingCache,
    EncodePool,
    encode_cached,
    encode_pool,
    _pool_precision,
)
from embed_pipeline.lib.progress import ProgressLine
from embed_pipeline.lib.text import text_hash

SHARD_SUFFIX = ".npz"


@dataclass(frozen=True)
class ShardEmbeddings:
    """One shard's embeddings on disk and what producing them cost.

    `encoded` passages went through the model in this call, `reused` came from the cache,
    `removed` were in the previous file of this shard but are no longer in the corpus;
    `precision` is what its vectors were computed in (bf16, fp16, fp32, tf32).
    """

    path: Path
    passages: int
    encoded: int
    reused: int
    removed: int
    precision: str


def write_shard_embeddings(
    model,
    fingerprint: str,
    passage_ids: list[str],
    texts: list[str],
    cache_root: Path,
    target: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str = "",
    precision: str = "auto",
    pool: EncodePool | None = None,
    on_progress: Callable[[str], None] | ProgressLine | None = None,
) -> ShardEmbeddings:
    """Embed one shard through the cache and write `target` (.npz: `passage_ids`, `vectors`) atomically.

    The file always holds exactly the shard's current passages, so a passage deleted from the
    corpus leaves the shard (and so the merged index) on the next write.
    """
    from embed_pipeline.lib.io import atomic_path

    target = Path(target)
    previous = set(read_shard_embeddings(target)[0]) if target.exists() else set()
    vectors, stats = encode_cached(model, texts, cache_root, fingerprint, batch_size, prompt, progress=False,
                                   precision=precision, pool=pool, on_progress=on_progress)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, passage_ids=np.array(passage_ids, dtype=str), vectors=vectors, precision=np.array(stats.precision))
    return ShardEmbeddings(target, len(passage_ids), stats.encoded, stats.reused, len(previous - set(passage_ids)),
                           stats.precision)


def read_shard_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path) as data:
        return data["passage_ids"].tolist(), data["vectors"].astype(np.float32)


def shard_precision(path: Path) -> str:
    """The precision a shard file's vectors were encoded in ("unrecorded" for files written before it was kept)."""
    with np.load(path) as data:
        return str(data["precision"]) if "precision" in data.files else "unrecorded"


def merge_shard_embeddings(paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """Concatenate shard files (in the order given) into one id list and one vector matrix.

    Raises when the files mix shard counts (a passage in two files) or precisions (bf16 and fp32
    vectors of one model differ slightly, so one index holds one kind): re-embed every shard.
    """
    ids: list[str] = []
    blocks = []
    precisions: dict[str, list[str]] = {}
    for path in paths:
        shard_ids, vectors = read_shard_embeddings(path)
        ids += shard_ids
        blocks.append(vectors)
        precisions.setdefault(shard_precision(path), []).append(Path(path).name)
    if len(set(ids)) != len(ids):
        raise ValueError("a passage id appears in two shards: shard files from different shard counts were mixed")
    if len(precisions) > 1:
        raise ValueError(f"shard files encoded in different precisions {precisions}: re-embed every shard "
                         "with one index.encode_precision")
    return ids, (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))


def embed_shards(
    model,
    fingerprint: str,
    shards: dict[str, pd.DataFrame],
    out_dir: Path,
    cache_root: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str = "",
    precision: str = "auto",
    processes: int = 1,
    threads: int = 0,
    on_progress: Callable[[str], None] | None = None,
    cluster=None,
) -> dict[str, ShardEmbeddings]:
    """Embed each shard (key -> passages) into `out_dir/<key>.npz` with one loaded model.

    Passages whose text the cache already holds for this model are not re-encoded, so a shard
    with 1 edited passage out of 1,000 costs one forward pass, not a thousand. `precision` as in
    `encoding.encode`; `processes` > 1 encodes through one `EncodePool` shared by all the shards,
    splitting `threads` (0 = the cores available) among its workers; with `cluster` (a
    `ray_encoding.RayEncoding`) one Ray actor pool encodes for all the shards instead.
    `on_progress` gets one line on what is to encode over all the shards, then lines with an ETA
    for all of them together.
    """
    from embed_pipeline.lib.corpus import passage_texts

    texts = {key: passage_texts(frame) for key, frame in shards.items()}
    with encode_pool(model, processes, threads, cluster) as pool:
        line = None
        if on_progress is not None:
            cache = EmbeddingCache(cache_root, fingerprint, prompt, _pool_precision(pool, precision, model))
            todo = sum(len(cache.missing([text_hash(t) for t in shard_texts])) for shard_texts in texts.values())
            total = sum(len(shard_texts) for shard_texts in texts.values())
            on_progress(f"embedding {len(shards)} shard(s) of {total} passages: {todo} to encode, the rest cached")
            line = ProgressLine(on_progress, "encoding", todo) if todo else None
        fresh = None
        if cluster is not None:
            # One cluster pipeline for every shard's uncached texts (each actor loads the model
            # once, not once per shard); the shard files are then written from the cache.
            fresh = _encode_uncached(model, fingerprint, [t for ts in texts.values() for t in ts], cache_root,
                                     batch_size, prompt, precision, pool, line)
        done = {
            key: write_shard_embeddings(model, fingerprint, list(frame["passage_id"]), texts[key], cache_root,
                                        Path(out_dir) / f"{key}{SHARD_SUFFIX}", batch_size, prompt, precision, pool, line)
            for key, frame in shards.items()
        }
    if fresh is None:
        return done
    # Count per shard what the one pipeline encoded for it, as the per-shard encodes would have.
    for key, shard in done.items():
        unique = {text_hash(t) for t in texts[key]}
        encoded = len(unique & fresh)
        done[key] = replace(shard, encoded=encoded, reused=len(unique) - encoded)
    return done


def _encode_uncached(model, fingerprint: str, texts: list[str], cache_root: Path, batch_size: int, prompt: str,
                     precision: str, pool, on_progress=None) -> set[str]:
    """Put every text of `texts` into the cache in one `encode_cached` call; returns the hashes it encoded."""
    keys = list({text_hash(t) for t in texts})
    missing = EmbeddingCache(cache_root, fingerprint, prompt, _pool_precision(pool, precision, model)).missing(keys)
    encode_cached(model, texts, cache_root, fingerprint, batch_size, prompt, progress=False, precision=precision, pool=pool,
                  on_progress=on_progress)
    return set(missing)


def shard_paths(out_dir: Path, keys: list[str]) -> list[Path]:
    """The shard files of `keys` under `out_dir`; raises naming the missing ones."""
    paths = [Path(out_dir) / f"{key}{SHARD_SUFFIX}" for key in keys]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: no embeddings yet for shard(s) {missing}; re-embed them first")
    return paths
