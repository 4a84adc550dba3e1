"""Loading models and encoding text, with an on-disk cache so no text is encoded twice.

Encoding a corpus is the pipeline's most expensive step after training (minutes per model on a
CPU for a few thousand abstracts). The cache is keyed by (model fingerprint, encode settings,
text hash): mining, baseline evaluation, index builds and re-runs reuse every vector already
computed, and a corpus change re-encodes only the changed passages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.text import text_hash

log = logging.getLogger(__name__)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has Intel AMX bf16 tiles (Linux cpuinfo flags).

    There, bf16 autocast makes MiniLM-sized training 1.6x faster at 256 tokens with attention
    dropout 0 (1.3x with the model's 0.1; benchmarks/README.md). AVX512-BF16 without AMX is not
    counted: unmeasured here, and elsewhere bf16 is emulated and slower than fp32.
    """
    with contextlib.suppress(OSError):
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return "amx_bf16" in flags
    return False


def available_cpus() -> int:
    """CPU cores this process may really use: the affinity mask, capped by a cgroup v2 quota.

    torch's default thread count is the machine's physical cores, which in a container with a
    2-CPU quota on a 64-core host means 64 threads fighting over 2 cores (many times slower).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    return max(1, cpus)


def set_cpu_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads for CPU encoding (0 = `available_cpus()`); returns the count."""
    import torch

    count = threads or available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def load_model(name_or_path: str, device: str | None = None, max_seq_length: int | None = None, threads: int = 0):
    """A SentenceTransformer from a local folder or hub id, on CUDA when present (TF32 on).

    On CPU, torch threads are set to `threads` (0 = the cores this process may use).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or pick_device()
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        set_cpu_threads(threads)
    model = SentenceTransformer(str(name_or_path), device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def model_fingerprint(model) -> str:
    """SHA-256 (16 hex chars) over every parameter tensor and the max sequence length.

    Content-based, so the same weights loaded from a hub id, a local copy or an MLflow artifact
    share cache entries, and a retrained model never reuses a stale vector.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().float().numpy().tobytes())
    digest.update(str(model.max_seq_length).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EncodeStats:
    texts: int
    unique: int
    encoded: int
    reused: int


class EmbeddingCache:
    """Append-only vector store for one (model, prompt, precision) under `root`.

    Each `put` writes one new shard file (`shard-*.npz`, keys + float32 vectors) atomically, so
    concurrent or crashed writers never corrupt what is there. Shards are read back together.
    """

    def __init__(self, root: Path, fingerprint: str, prompt: str, precision: str):
        settings = {"model_fingerprint": fingerprint, "prompt": prompt, "precision": precision}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            meta.write_text(json.dumps(settings) + "\n")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        wanted = set(keys)
        found: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard) as data:
                for k, v in zip(data["keys"].tolist(), data["vectors"], strict=True):
                    if k in wanted:
                        found[k] = v
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        final = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".{final.name}.tmp.npz"
        np.savez(tmp, keys=np.array(keys), vectors=vectors.astype(np.float32))
        os.replace(tmp, final)


def encode(model, texts: list[str], batch_size: int = 64, prompt: str = "", progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings (inner product = cosine); bf16 autocast on CUDA.

    sentence-transformers sorts the texts by length before batching (and restores the order),
    so a batch pads to similar lengths rather than to the longest passage in the corpus.
    """
    import torch

    kwargs = {"prompt": prompt} if prompt else {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if _on_cuda(model) else contextlib.nullcontext()
    with autocast:
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress and len(texts) > batch_size,
            **kwargs,
        )
    return np.asarray(vectors, dtype=np.float32)


def _on_cuda(model) -> bool:
    return str(model.device).startswith("cuda")


def encode_cached(
    model,
    texts: list[str],
    cache_root: Path,
    fingerprint: str,
    batch_size: int = 64,
    prompt: str = "",
    progress: bool = True,
) -> tuple[np.ndarray, EncodeStats]:
    """Embeddings for `texts` in order, encoding only texts the cache lacks (each unique text once)."""
    cache = EmbeddingCache(cache_root, fingerprint, prompt, "bf16" if _on_cuda(model) else "fp32")
    keys = [text_hash(t) for t in texts]
    unique = dict(zip(keys, texts, strict=True))
    found = cache.get(list(unique))
    missing = [k for k in unique if k not in found]
    if missing:
        log.info("encoding %d of %d unique texts (%d cached)", len(missing), len(unique), len(found))
        vectors = encode(model, [unique[k] for k in missing], batch_size=batch_size, prompt=prompt, progress=progress)
        cache.put(missing, vectors)
        found.update(zip(missing, vectors, strict=True))
    dim = model.get_embedding_dimension()
    out = np.stack([found[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    return out.astype(np.float32), EncodeStats(len(texts), len(unique), len(missing), len(unique) - len(missing))


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


SHARD_SUFFIX = ".npz"


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


@dataclass(frozen=True)
class CorpusAndQueries:
    """One model's view of a corpus and a query list: vectors row-aligned with the inputs."""

    fingerprint: str
    corpus_vectors: np.ndarray
    query_vectors: np.ndarray
    corpus_stats: EncodeStats


def embed_corpus_and_queries(
    model_ref: str,
    passage_texts: list[str],
    queries: list[str],
    cache_root: Path,
    batch_size: int = 64,
    corpus_prompt: str = "",
    query_prompt: str = "",
    threads: int = 0,
) -> CorpusAndQueries:
    """Load `model_ref` once, fingerprint it once, and embed both sides through the cache.

    The one sequence mining, the synthetic round trip and evaluation all need: with the shared
    cache, the corpus is encoded once per model however many stages ask for it.
    """
    model = load_model(model_ref, threads=threads)
    fingerprint = model_fingerprint(model)
    corpus_vectors, corpus_stats = encode_cached(model, passage_texts, cache_root, fingerprint, batch_size, corpus_prompt)
    query_vectors, _ = encode_cached(model, queries, cache_root, fingerprint, batch_size, query_prompt, progress=False)
    return CorpusAndQueries(fingerprint, corpus_vectors, query_vectors, corpus_stats)
