"""Per-shard embedding files: one `.npz` per corpus shard, written through the embedding cache.

A shard file holds exactly its shard's current passages (`passage_ids`, float32 `vectors`), so the
index is a concatenation of shard files and a shard re-embedding touches nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.encoding import encode_cached

SHARD_SUFFIX = ".npz"


@dataclass(frozen=True)
class ShardEmbeddings:
    """One shard's embeddings on disk and what producing them cost.

    `encoded` passages went through the model in this call, `reused` came from the cache,
    `removed` were in the previous file of this shard but are no longer in the corpus.
    """

    path: Path
    passages: int
    encoded: int
    reused: int
    removed: int


def write_shard_embeddings(
    model,
    fingerprint: str,
    passage_ids: list[str],
    texts: list[str],
    cache_root: Path,
    target: Path,
    batch_size: int = 64,
    prompt: str = "",
) -> ShardEmbeddings:
    """Embed one shard through the cache and write `target` (.npz: `passage_ids`, `vectors`) atomically.

    The file always holds exactly the shard's current passages, so a passage deleted from the
    corpus leaves the shard (and so the merged index) on the next write.
    """
    from embed_pipeline.lib.io import atomic_path

    target = Path(target)
    previous = set(read_shard_embeddings(target)[0]) if target.exists() else set()
    vectors, stats = encode_cached(model, texts, cache_root, fingerprint, batch_size, prompt, progress=False)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, passage_ids=np.array(passage_ids, dtype=str), vectors=vectors)
    return ShardEmbeddings(target, len(passage_ids), stats.encoded, stats.reused, len(previous - set(passage_ids)))


def read_shard_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path) as data:
        return data["passage_ids"].tolist(), data["vectors"].astype(np.float32)


def merge_shard_embeddings(paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """Concatenate shard files (in the order given) into one id list and one vector matrix."""
    ids: list[str] = []
    blocks = []
    for path in paths:
        shard_ids, vectors = read_shard_embeddings(path)
        ids += shard_ids
        blocks.append(vectors)
    if len(set(ids)) != len(ids):
        raise ValueError("a passage id appears in two shards: shard files from different shard counts were mixed")
    return ids, (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))


def embed_shards(
    model,
    fingerprint: str,
    shards: dict[str, pd.DataFrame],
    out_dir: Path,
    cache_root: Path,
    batch_size: int = 64,
    prompt: str = "",
) -> dict[str, ShardEmbeddings]:
    """Embed each shard (key -> passages) into `out_dir/<key>.npz` with one loaded model.

    Passages whose text the cache already holds for this model are not re-encoded, so a shard
    with 1 edited passage out of 1,000 costs one forward pass, not a thousand.
    """
    from embed_pipeline.lib.corpus import passage_texts

    return {
        key: write_shard_embeddings(model, fingerprint, list(frame["passage_id"]), passage_texts(frame), cache_root,
                                    Path(out_dir) / f"{key}{SHARD_SUFFIX}", batch_size, prompt)
        for key, frame in shards.items()
    }


def shard_paths(out_dir: Path, keys: list[str]) -> list[Path]:
    """The shard files of `keys` under `out_dir`; raises naming the missing ones."""
    paths = [Path(out_dir) / f"{key}{SHARD_SUFFIX}" for key in keys]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: no embeddings yet for shard(s) {missing}; re-embed them first")
    return paths
