"""Corpus encoding on a Ray cluster: the passages the vector store lacks, as a Ray Data pipeline.

With `compute.engine: ray`, `encode_pool` (lib/encoding.py) yields a `RayEncoder` in place of a
local `EncodePool`, asked first which precision label its actors compute in (the store key).

A corpus (`shards.fill_store`) goes through `fill_store_from_dataset`: the nodes read the
dataset's shard files themselves: the work items are (shard file, row group) pairs, each encode
actor reads its row groups from the shared `artifacts_dir`, keeps the rows whose content hash the
store lacks (the list of hashes travels once, through the object store), encodes them and writes
them as one segment of the same vector store (`vector_store.write_segment`): no text and no
vector passes through this process, which only counts rows. Segments are atomic, so a block Ray reruns after losing a node writes a second,
identical segment, never a torn one; afterwards this process merges the small segments.
Other texts (a list given in memory: queries, the synthetic round trip's pool) go through
`encode`, whose vectors come back here, as before.

The pipeline: the texts are sorted by length (longest first) over the whole list and cut into
blocks of a few batches, so every batch an actor runs pads to similar lengths;
`map_batches` runs them on an actor pool (`compute.encode_actors`, or an autoscaling range up to
`encode_actors_max`, each holding `encode_cpus_per_actor` CPUs and `encode_gpus_per_actor`
GPUs). Each actor loads the model once, from the copy this process put into Ray's object store
(the weights the fingerprint was computed on, whatever path the driver loaded them from; no
shared model folder or hub access needed on the nodes). Results stream back as they finish;
each row is placed by its position, and a row missing at the end is an error, so a partial result
never reaches the cache or a shard file. When a node dies mid-encode, Ray Data restarts its
actors elsewhere and reruns the blocks whose results were lost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embed_pipeline.lib.config import ComputeConfig
from embed_pipeline.lib.corpus import passage_text
from embed_pipeline.lib.encoding import _encode_here, device_batch_size, encode_precision
from embed_pipeline.lib.ray_runtime import RayCluster, alive_actors, connect_and_check, require_ray
from embed_pipeline.lib.vector_store import encode_keys, write_segment

log = logging.getLogger(__name__)

# How often (seconds) a long encode reports rows done, throughput and actors alive.
PROGRESS_EVERY_SECONDS = 30.0
# How long the pool may take to start its first `encode_actors` actors (imports, model load, and on
# an autoscaling cluster the nodes' start-up) before the encode fails saying the cluster lacks the
# resources. Waiting for them also spreads the first blocks over every actor instead of the first
# one that happens to be ready.
ACTOR_START_TIMEOUT_SECONDS = 900


@dataclass
class RayEncodeRun:
    """One `RayEncoder.encode` call: rows sent to the cluster, the nodes whose actors encoded them
    (node id -> rows), rows that arrived twice (a block Ray reran after losing a node), seconds in
    all, and per actor (node:pid) its start-up seconds (torch import, model load from the object
    store, moving it to its device), the seconds it spent encoding and the rows it encoded."""

    rows: int
    label: str
    nodes: dict[str, int]
    repeated_rows: int
    seconds: float
    actor_start_s: dict[str, float] = field(default_factory=dict)
    actor_encode_s: dict[str, float] = field(default_factory=dict)
    actor_rows: dict[str, int] = field(default_factory=dict)


@dataclass
class RayEncoding:
    """What an asset hands to `embed_shards` / `embed_corpus_and_queries` to encode on a cluster.

    `artifacts_dir` is what every node must share (checked before any work); `on_progress` gets
    one line at a time (rows done / total, rows/s, actors alive). After the encode, `cluster` and
    `runs` say where it ran, for the step's metadata (`metadata()`).
    """

    compute: ComputeConfig
    artifacts_dir: Path
    on_progress: Callable[[str], None] | None = None
    cluster: RayCluster | None = None
    runs: list[RayEncodeRun] = field(default_factory=list)

    @contextlib.contextmanager
    def pool(self, model) -> Iterator[RayEncoder]:
        """Connect and check the shared storage (once per step), and yield an encoder for `model`."""
        if self.cluster is None:
            self.cluster = connect_and_check(self.compute, self.artifacts_dir)
        encoder = RayEncoder(model, self.compute, self.on_progress)
        try:
            yield encoder
        finally:
            self.runs += encoder.runs
            encoder.close()

    def metadata(self) -> dict:
        """Plain values for a Dagster step: the dashboard/job link, rows encoded on the cluster,
        the nodes that encoded them. Empty before the first `pool`."""
        if self.cluster is None:
            return {}
        nodes: dict[str, int] = {}
        for run in self.runs:
            for node, rows in run.nodes.items():
                nodes[node] = nodes.get(node, 0) + rows
        return {
            "ray_address": self.cluster.address,
            "ray_job_id": self.cluster.job_id,
            "ray_dashboard": self.cluster.job_url or "",
            "ray_rows_encoded": sum(r.rows for r in self.runs),
            "ray_nodes_used": len(nodes),
            "ray_rows_per_node": ", ".join(f"{n[:12]}: {rows}" for n, rows in sorted(nodes.items())),
            "ray_actor_start_seconds_max": round(max((s for r in self.runs for s in r.actor_start_s.values()), default=0.0), 1),
        }


class RayEncoder:
    """The `EncodePool` interface (`encode(texts, batch_size, prompt, label)`) on a Ray actor pool,
    plus `precision_label`: what the actors compute in, asked of the cluster, not this process."""

    def __init__(self, model, compute: ComputeConfig, on_progress: Callable[[str], None] | None = None):
        ray = require_ray()
        self.compute = compute
        self.on_progress = on_progress
        self.runs: list[RayEncodeRun] = []
        self._labels: dict[str, str] = {}  # precision setting -> label the actors compute in
        self._precisions: dict[str, str] = {}  # and back
        self._dimension = model.get_embedding_dimension()
        home = model.device
        try:
            model.to("cpu")
            self._model_ref = ray.put(model)
        finally:
            model.to(home)

    def _resources(self) -> dict:
        return {"num_cpus": self.compute.encode_cpus_per_actor, "num_gpus": self.compute.encode_gpus_per_actor}

    def precision_label(self, precision: str) -> str:
        """The label (bf16, fp16, fp32, tf32) an actor with the configured resources computes in
        under `precision`: a probe task with the actors' resources answers (a GPU actor on a
        CPU-only driver computes in bf16 or fp16, not the driver's fp32)."""
        if precision not in self._labels:
            ray = require_ray()
            probe = ray.remote(**self._resources())(_actor_precision)
            self._labels[precision] = ray.get(probe.remote(precision, self.compute.encode_gpus_per_actor > 0))
            self._precisions[self._labels[precision]] = precision
        return self._labels[precision]

    def encode(self, texts: list[str], batch_size: int, prompt: str, label: str, line=None) -> np.ndarray:
        """Normalised float32 rows for `texts`, in order, computed by the actor pool under `label`.

        `batch_size` is what the caller would batch with locally; each actor sizes its own batch
        from it on its device (`device_batch_size`: a GPU actor fills its GPU). `line` (the
        caller's `ProgressLine`, sized for a larger job) is advanced by the rows received.
        """
        ray = require_ray()
        if not texts:
            return np.zeros((0, self._dimension), np.float32)
        started = time.monotonic()
        dataset = self._dataset(ray, texts, batch_size, prompt, label)
        out = np.zeros((len(texts), self._dimension), np.float32)
        seen = np.zeros(len(texts), bool)
        nodes: dict[str, int] = {}
        starts: dict[str, float] = {}
        encoding: dict[str, float] = {}
        actor_rows: dict[str, int] = {}
        repeated = 0
        done, last_report = 0, started
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows, vectors = batch["row"], batch["vector"]
            again = seen[rows]
            if again.any():
                # A block rerun after a node loss can deliver rows already received: they must match.
                worst = float(np.min(np.sum(out[rows[again]] * vectors[again], axis=1)))
                if worst < 0.9999:
                    raise RuntimeError(f"a row encoded twice on the cluster differs between the runs (cosine {worst:.6f})")
                repeated += int(again.sum())
            out[rows] = vectors
            fresh = int((~again).sum())
            seen[rows] = True
            if line is not None and fresh:
                line.advance(fresh)
            _tally(batch, nodes, starts, encoding, actor_rows)
            done = int(seen.sum())
            if self.on_progress and time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
                last_report = time.monotonic()
                self.on_progress(self._progress_line(done, len(texts), started))
        if not seen.all():
            raise RuntimeError(f"the Ray encode returned {int(seen.sum())} of {len(texts)} rows; nothing was written")
        run = RayEncodeRun(len(texts), label, nodes, repeated, time.monotonic() - started, starts, encoding,
                           actor_rows)
        self.runs.append(run)
        if self.on_progress:
            self.on_progress(f"ray encode: {len(texts)} rows in {run.seconds:.1f} s on {len(nodes)} node(s)"
                             + (f", {repeated} rows recomputed after a lost node" if repeated else ""))
        return out

    def fill_store_from_dataset(self, shard_files: list[Path], missing, store, batch_size: int, prompt: str,
                                label: str, line=None, windows=None) -> int:
        """Encode the passages of `shard_files` whose content hash is in `missing` (strings or 16-byte keys) into `store` on the
        cluster (see the module doc); returns the rows written. Raises when any hash is still
        missing afterwards, so shard files are only ever written from a complete store. With
        `windows` (a `lib.windows.WindowSpec`) the actors split their passages into windows with
        their model's tokenizer and `missing` holds window text hashes."""
        ray = require_ray()
        if not len(missing):
            return 0
        started = time.monotonic()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_SECONDS
        import pandas as pd
        import pyarrow.parquet as pq

        wanted = np.unique(encode_keys(missing))
        wanted_box = [ray.put(wanted)]
        if self.compute.encode_actors_max:
            strategy = ray.data.ActorPoolStrategy(min_size=self.compute.encode_actors, max_size=self.compute.encode_actors_max)
        else:
            strategy = ray.data.ActorPoolStrategy(size=self.compute.encode_actors)
        # The work items are row groups of the dataset's shard files (at most 8,192 passages each):
        # paths, not texts. Each actor reads its row group from the shared folder itself, so no extra
        # read tasks compete with the actors for the cluster's CPUs.
        # An item is a slice of a row group, 4 x encode_batch_size rows: a few calls per block and
        # several blocks per actor, so the pool balances and a lost node costs only its items in flight.
        span = max(1, 4 * self.compute.encode_batch_size)
        items = []
        for path in shard_files:
            meta = pq.ParquetFile(path).metadata
            for group in range(meta.num_row_groups):
                rows_in_group = meta.row_group(group).num_rows
                items += [(str(path), group, start, min(span, rows_in_group - start)) for start in range(0, rows_in_group, span)]
        per_block = max(1, math.ceil(len(items) / (4 * (self.compute.encode_actors_max or self.compute.encode_actors))))
        blocks = [pd.DataFrame(items[i:i + per_block], columns=["path", "group", "start", "rows"])
                  for i in range(0, len(items), per_block)]
        rows = ray.data.from_pandas(blocks).map_batches(
            StoreWriterActor,
            fn_constructor_kwargs={"model_box": [self._model_ref], "batch_size": batch_size, "prompt": prompt,
                                   "precision": self._precisions[label], "label": label,
                                   "threads": max(1, int(self.compute.encode_cpus_per_actor)),
                                   "segments_dir": str(store.segments_dir), "wanted_box": wanted_box,
                                   "windows": windows.as_dict() if windows is not None else None},
            batch_size=1, batch_format="pandas", compute=strategy, **self._resources())
        nodes: dict[str, int] = {}
        starts: dict[str, float] = {}
        encoding: dict[str, float] = {}
        actor_rows: dict[str, int] = {}
        written, last_report = 0, started
        for batch in rows.iter_batches(batch_size=None, batch_format="numpy"):
            count = len(batch["node"])
            written += count
            if line is not None:
                line.advance(count)
            _tally(batch, nodes, starts, encoding, actor_rows)
            if self.on_progress and time.monotonic() - last_report >= PROGRESS_EVERY_SECONDS:
                last_report = time.monotonic()
                self.on_progress(self._progress_line(min(written, len(wanted)), len(wanted), started))
        store.refresh()
        still = int((~store.contains(wanted)).sum())
        if still:
            raise RuntimeError(f"the Ray encode left {still} of {len(wanted)} passages unencoded; no shard file was written")
        store.compact()
        repeated = max(0, written - len(wanted))
        run = RayEncodeRun(len(wanted), label, nodes, repeated, time.monotonic() - started, starts, encoding, actor_rows)
        self.runs.append(run)
        if self.on_progress:
            self.on_progress(f"ray encode: {len(wanted)} rows in {run.seconds:.1f} s on {len(nodes)} node(s), read from "
                             "the corpus dataset and written to the store by the actors"
                             + (f", {repeated} rows recomputed after a lost node" if repeated else ""))
        return written

    def _dataset(self, ray, texts: list[str], batch_size: int, prompt: str, label: str):
        import pandas as pd

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_SECONDS
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        actors_max = self.compute.encode_actors_max or self.compute.encode_actors
        rows_per_call = self.compute.encode_batch_size
        # A few calls per block and several blocks per actor: the pool balances, and a lost node
        # costs only its blocks in flight.
        block = max(1, min(4 * rows_per_call, math.ceil(len(texts) / (4 * actors_max))))
        blocks = [pd.DataFrame({"row": order[i:i + block], "text": [texts[j] for j in order[i:i + block]]})
                  for i in range(0, len(order), block)]
        if self.compute.encode_actors_max:
            strategy = ray.data.ActorPoolStrategy(min_size=self.compute.encode_actors, max_size=self.compute.encode_actors_max)
        else:
            strategy = ray.data.ActorPoolStrategy(size=self.compute.encode_actors)
        return ray.data.from_pandas(blocks).map_batches(
            EncodeActor,
            fn_constructor_kwargs={"model_box": [self._model_ref], "batch_size": batch_size, "prompt": prompt,
                                   "precision": self._precisions[label], "label": label,
                                   "threads": max(1, int(self.compute.encode_cpus_per_actor))},
            batch_size=rows_per_call,
            batch_format="numpy",
            compute=strategy,
            **self._resources(),
        )

    def _progress_line(self, done: int, total: int, started: float) -> str:
        rate = done / max(1e-9, time.monotonic() - started)
        try:
            actors = alive_actors(EncodeActor.__name__)
        except Exception as exc:  # the state API timing out must not stop an hour-long encode: said, then left out
            log.warning("ray encode: cannot count the actors alive (%s: %s)", type(exc).__name__, exc)
            actors = None
        eta = (total - done) / rate if rate else float("inf")
        return (f"ray encode: {done}/{total} rows ({100 * done / total:.0f}%), {rate:.1f} rows/s, eta {eta:.0f} s"
                + (f", {actors} actor(s) alive" if actors is not None else ""))

    def close(self) -> None:
        self._model_ref = None


def _tally(batch, nodes: dict, starts: dict, encoding: dict, actor_rows: dict) -> None:
    """Add one result batch's bookkeeping: rows per node, and per actor its start-up seconds, its
    encoding seconds and its rows (every actor kind returns `node`, `actor`, `start_s`, `encode_s`)."""
    for node, count in zip(*np.unique(batch["node"], return_counts=True), strict=True):
        nodes[str(node)] = nodes.get(str(node), 0) + int(count)
    for actor, start_s, encode_s in zip(batch["actor"], batch["start_s"], batch["encode_s"], strict=True):
        starts[str(actor)] = float(start_s)
        encoding[str(actor)] = encoding.get(str(actor), 0.0) + float(encode_s)
        actor_rows[str(actor)] = actor_rows.get(str(actor), 0) + 1


def _actor_precision(precision: str, on_gpu: bool) -> str:
    """On a worker with an actor's resources: the label `encode_precision` gives there."""
    device = _prepare_device(on_gpu)
    return encode_precision(precision, device)


def _prepare_device(on_gpu: bool) -> str:
    """The actor's device, with the same TF32 setting `load_model` applies on CUDA (so "tf32"
    means the same on a node as here)."""
    if not on_gpu:
        return "cpu"
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cuda"


class EncodeActor:
    """One Ray Data actor: the model loaded once, then batches of (row, text) -> (row, vector, node,
    actor, its start-up seconds, this row's share of the batch's encoding seconds)."""

    def __init__(self, model_box: list, batch_size: int, prompt: str, precision: str, label: str, threads: int):
        started = time.perf_counter()
        import ray
        import torch

        from embed_pipeline.lib.hardware import set_cpu_threads

        device = _prepare_device(bool(ray.get_gpu_ids()))
        if device == "cpu":
            set_cpu_threads(threads)
        else:
            torch.cuda.set_device(0)  # Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPU(s)
        self.node = ray.get_runtime_context().get_node_id()
        here = encode_precision(precision, device)
        if here != label:
            raise RuntimeError(f"node {self.node[:12]} computes in {here} on {device} under precision {precision!r}, "
                               f"but the probe said {label} (the cache key): the nodes differ in hardware; "
                               "set index.encode_precision to bf16 or fp32")
        self.model = ray.get(model_box[0]).to(device)
        self.model.eval()
        self.label = label
        self.prompt = prompt
        self.batch_size = device_batch_size(self.model, batch_size)
        self.actor = f"{self.node[:12]}:{os.getpid()}"
        self.start_s = time.perf_counter() - started

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        vectors = _encode_here(self.model, [str(t) for t in batch["text"]], self.batch_size, self.prompt, self.label,
                               progress=False)
        rows = len(vectors)
        return {"row": batch["row"], "vector": vectors, "node": np.full(rows, self.node), "actor": np.full(rows, self.actor),
                "start_s": np.full(rows, self.start_s), "encode_s": np.full(rows, (time.perf_counter() - started) / rows)}


class StoreWriterActor(EncodeActor):
    """An `EncodeActor` fed slices of the corpus dataset's row groups (path, group, start, rows): it reads each from the
    shared folder, keeps the passages whose content hash the store lacks (`wanted_box[0]`: sorted
    16-byte keys), encodes them, writes them as one segment of the vector store and returns only
    the bookkeeping: node, actor, start-up and encoding seconds per passage written."""

    def __init__(self, segments_dir: str, wanted_box: list, windows: dict | None = None, **kwargs):
        import ray

        from embed_pipeline.lib.windows import WindowSpec

        super().__init__(**kwargs)
        self.segments_dir = Path(segments_dir)
        self.wanted = wanted_box[0] if isinstance(wanted_box[0], np.ndarray) else ray.get(wanted_box[0])
        self.windows = WindowSpec(**windows) if windows else None

    def _candidates(self, table) -> tuple[np.ndarray, list[str] | None]:
        """(16-byte keys, texts or None) of a slice: passages keyed by content hash (texts read
        only for what is wanted), or, with windows, every window keyed by its text's hash."""
        if self.windows is None:
            return encode_keys(table.column("content_hash").to_pylist()), None
        from embed_pipeline.lib.text import text_hash
        from embed_pipeline.lib.windows import split_windows

        split = split_windows(self.model.tokenizer, table.column("title").to_pylist(), table.column("text").to_pylist(),
                              self.windows)
        return encode_keys([text_hash(t) for t in split.texts]), split.texts

    def __call__(self, batch):
        import pyarrow.parquet as pq

        started = time.perf_counter()
        keys_out, vectors_out = [], []
        for path, group, start, count in zip(batch["path"], batch["group"], batch["start"], batch["rows"], strict=True):
            table = (pq.ParquetFile(str(path)).read_row_group(int(group), columns=["content_hash", "title", "text"])
                     .slice(int(start), int(count)))
            keys, window_texts = self._candidates(table)
            pos = np.minimum(np.searchsorted(self.wanted, keys), len(self.wanted) - 1)
            keep = np.flatnonzero(self.wanted[pos] == keys)
            if not len(keep):
                continue
            if window_texts is not None:
                passages = [window_texts[i] for i in keep]
            else:
                titles, texts = table.column("title").to_pylist(), table.column("text").to_pylist()
                passages = [passage_text(titles[i], texts[i]) for i in keep]
            keys_out.append(keys[keep])
            vectors_out.append(_encode_here(self.model, passages, self.batch_size, self.prompt, self.label, progress=False))
        if keys_out:
            write_segment(self.segments_dir, np.concatenate(keys_out), np.concatenate(vectors_out))
        rows = sum(len(k) for k in keys_out)
        return {"node": np.full(rows, self.node), "actor": np.full(rows, self.actor), "start_s": np.full(rows, self.start_s),
                "encode_s": np.full(rows, (time.perf_counter() - started) / max(rows, 1))}
