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

from embed_pipeline.lib.hardware import pick_device, set_cpu_threads
from embed_pipeline.lib.text import text_hash

log = logging.getLogger(__name__)


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
