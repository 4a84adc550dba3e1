"""Loading models and encoding text at the hardware's speed, with an on-disk cache so no text is
encoded twice.

Encoding a corpus is the pipeline's most expensive step after training (minutes per model on a
CPU for a few thousand abstracts). Three things make it fast:
- precision: bf16 autocast where the hardware computes bf16 natively (CPUs with AMX or
  AVX512-BF16, Ampere+ GPUs; fp16 on older GPUs), vectors returned as normalised float32;
- batches of similar length (sentence-transformers sorts by length inside `encode`) and, on a GPU,
  a batch size that fills it;
- optionally several worker processes (`EncodePool`), each with its share of the CPU threads or
  its own GPU.
The cache is keyed by (model fingerprint, prompt, precision, text hash): mining, baseline
evaluation, index builds and re-runs reuse every vector already computed, a corpus change
re-encodes only the changed passages, and vectors of two precisions never share a key space.
"""

from __future__ import annotations

import contextlib
import math
import queue
import traceback
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_pipeline.lib.hardware import available_cpus, cpu_bf16_instructions, cuda_has_native_bf16, pick_device, set_cpu_threads
from embed_pipeline.lib.progress import ProgressLine
from embed_pipeline.lib.text import text_hash
from embed_pipeline.lib.vector_store import CACHE_META, VectorStore  # noqa: F401  (CACHE_META: retention reads it here)

EmbeddingCache = VectorStore  # the name every stage knows the cache by

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
# The `encode` precision setting that reproduces an encode's label (what autocast computed in), so
# queries are encoded as their corpus was. fp16 only arises from `auto` on a GPU without bf16.
PRECISION_OF_LABEL = {"bf16": "bf16", "fp32": "fp32", "tf32": "fp32", "fp16": "auto", "auto": "auto"}
DEFAULT_BATCH_SIZE = 64
PIECE_BATCHES = 1  # batches encoded between two progress updates (a batch takes seconds on a CPU)


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
    """`texts` asked for, `unique` among them, `encoded` by the model in this call, `reused` from the
    cache; `precision` is what the vectors were computed in (`encode_precision`'s label)."""

    texts: int
    unique: int
    encoded: int
    reused: int
    precision: str


def encode_precision(precision: str = "auto", device: str = "cpu") -> str:
    """What encoding on `device` computes in under the setting `precision` (auto | bf16 | fp32).

    Returns the label the cache and shard files record: "bf16" or "fp16" (torch autocast: matmuls
    and attention run in half precision, with float32 accumulation; the vectors returned are
    normalised in float32 all the same), "fp32", or "tf32"
    (fp32 on a GPU whose matmuls run TF32, as `load_model` sets). `auto`: bf16 on Ampere+ GPUs,
    fp16 on older GPUs (no bf16 in hardware), bf16 on CPUs with AMX or AVX512-BF16, fp32 on other
    CPUs. `bf16` forces bf16 autocast anywhere (slow where bf16 is emulated).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if str(device).startswith("cuda"):
        import torch

        if precision == "fp32":
            return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
        return "bf16" if precision == "bf16" or cuda_has_native_bf16(str(device)) else "fp16"
    if precision == "auto":
        return "bf16" if cpu_bf16_instructions() else "fp32"
    return precision


def fill_device_batch(free_bytes: int, max_seq_length: int, hidden_size: int) -> int:
    """A GPU encoding batch that uses about a quarter of `free_bytes`: a power of two in [64, 1024].

    Inference memory per sequence is roughly 16 half-precision activations of `hidden_size` per
    token (hidden states, q/k/v, the 4x feed-forward, fused attention); a quarter of free memory
    leaves room for the allocator and other tenants. Past ~1,000 sequences a GPU is saturated and
    a bigger batch only costs memory. Example: all-MiniLM-L6-v2 (384 wide, 256 tokens) needs
    ~3 MB per sequence, so any GPU with 4+ GB free gets 1024.
    """
    per_sequence = max(1, max_seq_length * hidden_size * 16 * 2)
    fits = free_bytes // 4 // per_sequence
    return int(min(1024, max(64, 2 ** int(math.log2(max(1, fits))))))


def device_batch_size(model, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """The batch to encode with: `batch_size`, except on CUDA when it is the default (64) or 0 (auto),
    where `fill_device_batch` sizes it to the GPU's free memory. On CPU, 0 means the default."""
    if batch_size > 0 and not (batch_size == DEFAULT_BATCH_SIZE and _on_cuda(model)):
        return batch_size
    if not _on_cuda(model):
        return DEFAULT_BATCH_SIZE
    import torch

    free, _ = torch.cuda.mem_get_info(model.device)
    return fill_device_batch(free, model.max_seq_length, model.get_embedding_dimension())


def _autocast(label: str, device_type: str):
    import torch

    if label in ("bf16", "fp16"):
        return torch.autocast(device_type, dtype=torch.bfloat16 if label == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _encode_here(model, texts: list[str], batch_size: int, prompt: str, label: str, progress: bool,
                 line: ProgressLine | None = None) -> np.ndarray:
    """Encode in this process under `label`'s autocast: normalised float32 rows in input order.

    sentence-transformers sorts the texts by length before batching (and restores the order),
    so a batch pads to similar lengths rather than to the longest passage in the corpus. With a
    progress `line`, the texts are sorted by length here and encoded `PIECE_BATCHES` batches at a
    time (the same batches, so the same padding), and the line advances after each piece; library
    bars stay off. Longest first: the early rate is the slowest, so the first ETAs err long.
    """
    kwargs = {"prompt": prompt} if prompt else {}
    if line is None:
        with _autocast(label, model.device.type):
            vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=progress and len(texts) > batch_size, **kwargs)
        return np.asarray(vectors, dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    piece = PIECE_BATCHES * batch_size
    parts = []
    for start in range(0, len(order), piece):
        with _autocast(label, model.device.type):
            part = model.encode([texts[i] for i in order[start:start + piece]], batch_size=batch_size,
                                normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False, **kwargs)
        parts.append(np.asarray(part, dtype=np.float32))
        line.advance(len(part))
    if not parts:
        return np.zeros((0, model.get_embedding_dimension()), np.float32)
    out = np.empty((len(texts), parts[0].shape[1]), np.float32)
    out[order] = np.concatenate(parts)
    return out


class EncodePool:
    """Worker processes that each hold a copy of one model and encode batches of texts in parallel.

    On CPU the torch threads are split among the workers (`threads` in all, 0 = the cores this
    process may use), so N workers never oversubscribe the cores; on CUDA each worker takes a GPU
    (cuda:0, cuda:1, ..., wrapping round). Workers are spawned (not forked: CUDA and OpenMP state do
    not survive a fork) and receive the model through shared memory, so starting a pool costs a few
    seconds of imports per worker: worth it for a corpus, not for a handful of queries. Use it as
    a context manager; a worker that dies or raises fails the encode with its error.
    """

    def __init__(self, model, processes: int, threads: int = 0):
        import torch
        import torch.multiprocessing as mp

        if processes < 2:
            raise ValueError("an EncodePool needs at least 2 processes; encode in this process instead")
        self.processes = processes
        on_cuda = _on_cuda(model)
        if on_cuda:
            devices = [f"cuda:{i % torch.cuda.device_count()}" for i in range(processes)]
            self.threads_per_process = 0
        else:
            devices = ["cpu"] * processes
            self.threads_per_process = max(1, (threads or available_cpus()) // processes)
        ctx = mp.get_context("spawn")
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        models = ctx.Queue()
        self._workers = []
        try:
            # The model goes through a queue, not the Process arguments: a spawned child reads its
            # arguments while importing, and the parent waits for that, so N workers would start
            # one after another; through the queue they import at the same time.
            for device in devices:
                worker = ctx.Process(target=_pool_worker, daemon=True,
                                     args=(models, device, self.threads_per_process, self._tasks, self._results))
                worker.start()
                self._workers.append(worker)
            home = model.device
            try:
                model.to("cpu")
                model.share_memory()
                for _ in devices:
                    models.put(model)
                for _ in devices:  # each worker says when its model is in place
                    self._next_result()
            finally:
                model.to(home)
        except BaseException:
            self.close()
            raise

    def encode(self, texts: list[str], batch_size: int, prompt: str, label: str,
               line: ProgressLine | None = None) -> np.ndarray:
        """Normalised float32 rows for `texts`, in order, computed by the workers under `label`
        (a progress `line` advances as each chunk comes back).

        Texts are sorted by length over the whole list (not per worker) and cut into chunks of a
        few batches that idle workers pull from one queue, so long and short passages spread
        evenly and each batch pads to similar lengths.
        """
        if not texts:
            return np.zeros((0, 0), np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunk = max(1, min(4 * batch_size, math.ceil(len(texts) / self.processes)))
        starts = range(0, len(order), chunk)
        for task_id, start in enumerate(starts):
            self._tasks.put((task_id, [texts[i] for i in order[start:start + chunk]], batch_size, prompt, label))
        parts: dict[int, np.ndarray] = {}
        while len(parts) < len(starts):
            task_id, result = self._next_result()
            if isinstance(result, str):
                raise RuntimeError(f"encoding worker failed:\n{result}")
            parts[task_id] = result
            if line is not None:
                line.advance(len(result))
        vectors = np.concatenate([parts[i] for i in range(len(starts))])
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def _next_result(self):
        while True:
            with contextlib.suppress(queue.Empty):
                return self._results.get(timeout=1.0)
            dead = [w for w in self._workers if not w.is_alive()]
            if dead:
                raise RuntimeError(", ".join(f"encoding worker pid {w.pid} died (exit code {w.exitcode})" for w in dead))

    def close(self) -> None:
        for _ in self._workers:
            self._tasks.put(None)
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        self._workers = []

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pool_worker(models, device: str, threads: int, tasks, results) -> None:
    import multiprocessing

    import sentence_transformers  # noqa: F401  (imported while the other workers import too)
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = models.get()
    model.to(device)
    results.put((-1, None))
    parent = multiprocessing.parent_process()
    while True:
        try:
            task = tasks.get(timeout=5)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the parent was killed without closing the pool: do not linger
            continue
        if task is None:
            return
        task_id, texts, batch_size, prompt, label = task
        try:
            results.put((task_id, _encode_here(model, texts, batch_size, prompt, label, progress=False)))
        except Exception:  # sent to the parent, which raises it
            results.put((task_id, f"{device}: {traceback.format_exc()}"))


@contextlib.contextmanager
def encode_pool(model, processes: int = 1, threads: int = 0, cluster=None):
    """An `EncodePool` of `processes` workers, or None for 1 (encode in this process); with
    `cluster` (a `ray_encoding.RayEncoding`), that cluster's actor pool instead."""
    if cluster is not None:
        with cluster.pool(model) as remote:
            yield remote
        return
    if processes <= 1:
        yield None
        return
    with EncodePool(model, processes, threads) as pool:
        yield pool


def encode(
    model,
    texts: list[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str = "",
    progress: bool = True,
    precision: str = "auto",
    pool: EncodePool | None = None,
    on_progress: ProgressLine | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings (inner product = cosine), one row per text, in order.

    `precision` (auto | bf16 | fp32) picks the autocast (`encode_precision`); the vectors are
    float32 whatever it is. `batch_size` is used as given, except the default (or 0) on CUDA,
    which grows to fill the GPU (`device_batch_size`). With a `pool` the work is spread over its
    worker processes, giving the same vectors as encoding here (to float rounding). `progress`
    shows sentence-transformers' bar; `on_progress` (a `ProgressLine`) replaces it with our lines.
    """
    label = _pool_precision(pool, precision, model)
    if not hasattr(pool, "precision_label"):  # a cluster's actors size their batches on their own devices
        batch_size = device_batch_size(model, batch_size)
    if pool is not None:
        vectors = pool.encode(texts, batch_size, prompt, label, on_progress)
        return vectors if len(texts) else np.zeros((0, model.get_embedding_dimension()), np.float32)
    return _encode_here(model, texts, batch_size, prompt, label, progress, on_progress)


def _pool_precision(pool, precision: str, model) -> str:
    """The label an encode computes in: a pool running elsewhere (a Ray cluster's actors, on
    other hardware) answers for itself; otherwise this process's model device decides."""
    if hasattr(pool, "precision_label"):
        return pool.precision_label(precision)
    return encode_precision(precision, str(model.device))


def _on_cuda(model) -> bool:
    return str(model.device).startswith("cuda")


def encode_cached(
    model,
    texts: list[str],
    cache_root: Path,
    fingerprint: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str = "",
    progress: bool = True,
    precision: str = "auto",
    pool: EncodePool | None = None,
    on_progress: Callable[[str], None] | ProgressLine | None = None,
) -> tuple[np.ndarray, EncodeStats]:
    """Embeddings for `texts` in order, encoding only texts the cache lacks (each unique text once).

    The cache space is chosen by (fingerprint, prompt, the precision actually used): vectors
    encoded in bf16 are never served to a caller asking for fp32, and the reverse.
    `on_progress`: a `say` callable (one line on what is encoded, then lines with an ETA), or a
    `ProgressLine` the caller sized for a larger job (shard after shard) that this call advances.
    """
    label = _pool_precision(pool, precision, model)
    cache = EmbeddingCache(cache_root, fingerprint, prompt, label)
    keys = [text_hash(t) for t in texts]
    unique = dict(zip(keys, texts, strict=True))
    unique_keys = list(unique)
    present, vectors_found = cache.lookup(unique_keys)
    missing = [k for k, hit in zip(unique_keys, present, strict=True) if not hit]
    if missing:
        log.info("encoding %d of %d unique texts in %s (%d cached)", len(missing), len(unique), label, len(unique) - len(missing))
        line = on_progress
        if on_progress is not None and not isinstance(on_progress, ProgressLine):
            on_progress(f"encoding {len(missing)} of {len(unique)} unique texts in {label} ({len(unique) - len(missing)} cached)")
            line = ProgressLine(on_progress, "encoding", len(missing))
        vectors = encode(model, [unique[k] for k in missing], batch_size, prompt, progress, precision, pool, line)
        cache.put(missing, vectors)
        if not vectors_found.shape[1]:
            vectors_found = np.zeros((len(unique_keys), vectors.shape[1]), np.float32)
        vectors_found[~present] = vectors
    dim = model.get_embedding_dimension()
    if not keys:
        return np.zeros((0, dim), np.float32), EncodeStats(0, 0, 0, 0, label)
    position = {k: i for i, k in enumerate(unique_keys)}
    out = vectors_found[[position[k] for k in keys]]
    return out.astype(np.float32, copy=False), EncodeStats(len(texts), len(unique), len(missing), len(unique) - len(missing), label)


@dataclass(frozen=True)
class CorpusAndQueries:
    """One model's view of a corpus and a query list: vectors row-aligned with the inputs."""

    fingerprint: str
    corpus_vectors: np.ndarray
    query_vectors: np.ndarray
    corpus_stats: EncodeStats
    corpus_ids: list[str] | None = None  # the passage of each corpus row (repeated for a passage's windows)
    windows: dict | None = None  # window spec and counts when long passages were split (lib/windows.py), else None


def embed_corpus_and_queries(
    model_ref: str,
    passage_texts: list[str],
    queries: list[str],
    cache_root: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    corpus_prompt: str = "",
    query_prompt: str = "",
    threads: int = 0,
    precision: str = "auto",
    processes: int = 1,
    on_progress: Callable[[str], None] | None = None,
    cluster=None,
) -> CorpusAndQueries:
    """Load `model_ref` once, fingerprint it once, and embed both sides through the cache.

    The one sequence mining, the synthetic round trip and evaluation all need: with the shared
    cache, the corpus is encoded once per model however many stages ask for it. With
    `processes` > 1 the corpus side is encoded by an `EncodePool`, with `cluster` (a
    `ray_encoding.RayEncoding`) by that Ray cluster (queries are few: encoded here).
    `on_progress` receives progress lines with an ETA (see `encode_cached`).
    """
    model = load_model(model_ref, threads=threads)
    fingerprint = model_fingerprint(model)
    with encode_pool(model, processes, threads, cluster) as pool:
        corpus_vectors, corpus_stats = encode_cached(model, passage_texts, cache_root, fingerprint, batch_size,
                                                     corpus_prompt, precision=precision, pool=pool, on_progress=on_progress)
    # Queries are few and encoded here. When a cluster encoded the corpus (on other hardware, maybe
    # in another autocast), they take the corpus side's autocast, as served queries will
    # (`RetrievalSpec.query_precision`): the judged ranking is the served one.
    query_precision = PRECISION_OF_LABEL.get(corpus_stats.precision, precision) if cluster is not None else precision
    query_vectors, _ = encode_cached(model, queries, cache_root, fingerprint, batch_size, query_prompt,
                                     progress=False, precision=query_precision, on_progress=on_progress)
    return CorpusAndQueries(fingerprint, corpus_vectors, query_vectors, corpus_stats)
