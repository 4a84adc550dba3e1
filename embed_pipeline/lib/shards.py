"""Per-shard embedding files: one Arrow file per corpus shard, filled from the vector store.

A shard file (`<shard key>.arrow`, uncompressed Arrow IPC) holds exactly its shard's current
passages, `passage_id` and `vector` (fixed-size float32 list), with the precision they were
encoded in and the model fingerprint in its schema metadata. So the index is a concatenation of
shard files (read in batches, memory-mapped), a shard re-embedding touches nothing else, and
shards of two precisions are never merged into one index.

Embedding a shard is two streams over the corpus dataset (`lib/corpus.py`): the first reads the
shard's `content_hash` column, asks the vector store which hashes it lacks and encodes only
those texts (reading text columns only when something is missing); the second reads
`passage_id` + `content_hash` in batches and writes each batch's vectors from the store. Memory
is one batch, whatever the shard's size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_pipeline.lib.encoding import (
    DEFAULT_BATCH_SIZE,
    EmbeddingCache,
    _pool_precision,
    encode,
    encode_cached,
    encode_pool,
)
from embed_pipeline.lib.corpus import passage_text
from embed_pipeline.lib.text import text_hash
from embed_pipeline.lib.windows import WindowSpec, split_windows
from embed_pipeline.lib.io import atomic_path
from embed_pipeline.lib.progress import ProgressLine
from embed_pipeline.lib.vector_store import KEY_BYTES, encode_keys

SHARD_SUFFIX = ".arrow"
WRITE_BATCH = 16_384  # rows per record batch of a shard file (and per store lookup)
LOCAL_CHUNK = 16_384  # texts encoded per call on this machine (one progress step, one store segment)
CLUSTER_CHUNK = 262_144  # texts per Ray pipeline (each costs a dataset plan; the actors stay up between)


@dataclass(frozen=True)
class ShardEmbeddings:
    """One shard's embeddings on disk and what producing them cost.

    `encoded` passages went through the model in this call, `reused` came from the store,
    `removed` were in the previous file of this shard but are no longer in the corpus;
    `precision` is what its vectors were computed in (bf16, fp16, fp32, tf32).
    """

    path: Path
    passages: int
    encoded: int
    reused: int
    removed: int
    precision: str
    long_passages: int = 0  # passages split into windows (lib/windows.py); 0 with windows off
    rows: int = 0  # vectors written: one per window with windows on, else one per passage


def _write_shard_file(target: Path, batches: Iterator[tuple[list[str], np.ndarray]], precision: str, fingerprint: str,
                      dim: int) -> int:
    """Write (ids, vectors) batches as one Arrow file, atomically; returns the rows written."""
    import pyarrow as pa

    schema = pa.schema([("passage_id", pa.string()), ("vector", pa.list_(pa.float32(), dim))],
                       metadata={"precision": precision, "model_fingerprint": fingerprint})
    rows = 0
    with atomic_path(Path(target)) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for ids, vectors in batches:
            vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1)), dim)
            writer.write_batch(pa.record_batch([pa.array(ids, pa.string()), vec], schema=schema))
            rows += len(ids)
    return rows


def _open(path: Path, mapped: bool = True):
    """An Arrow file reader: memory-mapped (reading a batch's row count or id column touches only
    those pages), or with `mapped=False` one that reads each record batch when asked (a stream
    over a million vectors through a map would keep every page it read resident)."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path), "r") if mapped else pa.OSFile(str(path), "rb"))


def shard_precision(path: Path) -> str:
    """The precision a shard file's vectors were encoded in."""
    meta = _open(path).schema.metadata or {}
    return meta.get(b"precision", b"unrecorded").decode()


def shard_rows(path: Path) -> int:
    reader = _open(path)
    return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))


def shard_ids(path: Path) -> list[str]:
    reader = _open(path)
    return [pid for i in range(reader.num_record_batches) for pid in reader.get_batch(i).column(0).to_pylist()]


def iter_shard_embeddings(paths: list[Path]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 vectors) record batch after record batch over the shard files, in order
    (each batch read when reached; memory is one batch)."""
    for path in paths:
        reader = _open(path, mapped=False)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            vec = batch.column(1)
            dim = vec.type.list_size
            flat = vec.flatten().to_numpy(zero_copy_only=False)
            yield batch.column(0).to_pylist(), flat.reshape(len(batch), dim) if len(batch) else np.zeros((0, dim), np.float32)


def check_mergeable(paths: list[Path]) -> str:
    """The one precision of `paths`; raises when they mix shard counts or precisions.

    Shard counts: every file is named `shard-NN-of-MM`, and files of two MM hold overlapping
    passages. Precisions: bf16 and fp32 vectors of one model differ slightly, so one index holds one kind.
    """
    counts = {m.group(1) for p in paths if (m := re.search(r"-of-(\d+)", Path(p).name))}
    if len(counts) > 1:
        raise ValueError(f"a passage id appears in two shards: shard files from different shard counts were mixed ({sorted(counts)})")
    precisions: dict[str, list[str]] = {}
    for path in paths:
        precisions.setdefault(shard_precision(path), []).append(Path(path).name)
    if len(precisions) > 1:
        raise ValueError(f"shard files encoded in different precisions {precisions}: re-embed every shard "
                         "with one index.encode_precision")
    return next(iter(precisions), "unrecorded")


def read_shard_embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    """One shard file whole (small shards, tests)."""
    return merge_shard_embeddings([path])


def merge_shard_embeddings(paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """Concatenate shard files into one id list and one matrix (in memory: for small corpora and
    tests; index builds stream with `iter_shard_embeddings`)."""
    check_mergeable(paths)
    ids: list[str] = []
    blocks = []
    for batch_ids, vectors in iter_shard_embeddings(paths):
        ids += batch_ids
        blocks.append(np.array(vectors))
    if len(set(ids)) != len(ids):
        raise ValueError("a passage id appears in two shards: shard files from different shard counts were mixed")
    return ids, (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))


def write_shard_embeddings(model, fingerprint: str, passage_ids: list[str], texts: list[str], cache_root: Path, target: Path,
                           batch_size: int = DEFAULT_BATCH_SIZE, prompt: str = "", precision: str = "auto",
                           pool=None, on_progress=None) -> ShardEmbeddings:
    """Embed one shard given in memory (ids and texts) through the store and write `target` atomically."""
    target = Path(target)
    previous = set(shard_ids(target)) if target.exists() else set()
    vectors, stats = encode_cached(model, texts, cache_root, fingerprint, batch_size, prompt, progress=False,
                                   precision=precision, pool=pool, on_progress=on_progress)
    _write_shard_file(target, iter([(list(passage_ids), vectors)]) if passage_ids else iter(()), stats.precision, fingerprint,
                      model.get_embedding_dimension())
    return ShardEmbeddings(target, len(passage_ids), stats.encoded, stats.reused, len(previous - set(passage_ids)),
                           stats.precision)


def embed_shards(
    model,
    fingerprint: str,
    dataset,
    keys: list[str],
    out_dir: Path,
    cache_root: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prompt: str = "",
    precision: str = "auto",
    processes: int = 1,
    threads: int = 0,
    on_progress: Callable[[str], None] | None = None,
    cluster=None,
    windows: WindowSpec | None = None,
) -> dict[str, ShardEmbeddings]:
    """Embed the shards `keys` of a `CorpusDataset` into `out_dir/<key>.arrow` with one loaded model.

    With `windows` (a `lib.windows.WindowSpec`), a passage longer than the window is written as
    one row per window (its id repeated, keyed in the store by the window's text hash), see
    `_windowed_shard`.

    Passages whose content hash the store already holds for this model are not re-encoded, so a
    shard with 1 edited passage out of 1,000 costs one forward pass, not a thousand. `precision` as
    in `encoding.encode`; `processes` > 1 encodes through one `EncodePool` shared by all the shards,
    splitting `threads` (0 = the cores available) among its workers; with `cluster` (a
    `ray_encoding.RayEncoding`) one Ray actor pool encodes for all the shards instead.
    `on_progress` gets one line on what is to encode over all the shards, then lines with an ETA.
    """
    out_dir = Path(out_dir)
    if windows is not None:
        return _embed_shards_windowed(model, fingerprint, dataset, keys, out_dir, cache_root, batch_size, prompt, precision,
                                      processes, threads, on_progress, cluster, windows)
    with encode_pool(model, processes, threads, cluster) as pool:
        label = _pool_precision(pool, precision, model)
        store = EmbeddingCache(cache_root, fingerprint, prompt, label)
        needs = fill_store(model, dataset, keys, store, batch_size, prompt, precision, pool, on_progress,
                           CLUSTER_CHUNK if cluster is not None else LOCAL_CHUNK)
        dim = model.get_embedding_dimension()
        done = {}
        for key in keys:
            target = out_dir / f"{key}{SHARD_SUFFIX}"
            previous = set(shard_ids(target)) if target.exists() else set()
            current: set[str] = set()

            def batches(key=key, current=current):
                for frame in dataset.batches(["passage_id", "content_hash"], [key], batch_rows=WRITE_BATCH):
                    found, vectors = store.lookup(encode_keys(frame["content_hash"].to_numpy(dtype=object, na_value="")))
                    if not found.all():
                        raise RuntimeError(f"{key}: {int((~found).sum())} vectors missing from the store after encoding")
                    ids = list(frame["passage_id"])
                    current.update(ids)
                    yield ids, vectors

            rows = _write_shard_file(target, batches(), label, fingerprint, dim)
            need = needs[key]
            done[key] = ShardEmbeddings(target, rows, need.missing, need.unique - need.missing, len(previous - current), label,
                                        rows=rows)
    return done


@dataclass
class WindowTally:
    """What a windowed pass saw: passages, those longer than the window, windows, distinct window
    texts, and how many of those the store lacked (encoded by this pass)."""

    passages: int = 0
    long_passages: int = 0
    windows: int = 0
    unique: int = 0
    missing: int = 0

    def as_dict(self, spec: WindowSpec) -> dict:
        """The `windows` block as the index meta and the report hold it (`rows`: one per window)."""
        return {**spec.as_dict(), "passages": self.passages, "long_passages": self.long_passages, "rows": self.windows}


def _window_batches(tokenizer, dataset, keys: list[str], spec: WindowSpec, chunk: int):
    """(passage ids per window, window texts, 16-byte store keys, `Windows`) per batch of `chunk`
    passages of the shards `keys`. A passage that fits is one window whose text is `passage_text`
    itself, so its key is the dataset's `content_hash`: windows on or off share those vectors."""
    for frame in dataset.batches(["passage_id", "title", "text"], keys, batch_rows=chunk):
        split = split_windows(tokenizer, list(frame["title"]), list(frame["text"]), spec)
        ids = frame["passage_id"].to_numpy(dtype=object)[split.owner]
        yield ids, split.texts, encode_keys([text_hash(t) for t in split.texts]), split


def _windowed_shard(model, dataset, key: str, spec: WindowSpec, store, batch_size: int, prompt: str, precision: str, pool,
                    line, tally: WindowTally, chunk: int = WRITE_BATCH):
    """(passage ids, vectors) of one shard's windows, batch by batch: the windows the store lacks
    are encoded and put first (each distinct text once), then every window's vector is read back.
    `line` (a `ProgressLine`) is told of each batch's windows to encode and advances as they are."""
    for ids, texts, store_keys, split in _window_batches(model.tokenizer, dataset, [key], spec, chunk):
        tally.passages += split.passages
        tally.long_passages += split.long_passages
        tally.windows += split.count
        distinct, first = np.unique(store_keys, return_index=True)
        tally.unique += len(distinct)
        absent = ~store.contains(distinct)
        if absent.any():
            take = first[absent]
            if line is not None:
                line.expect(len(take))
            store.put(distinct[absent], encode(model, [texts[i] for i in take], batch_size, prompt, False, precision, pool, line))
            tally.missing += int(absent.sum())
        found, vectors = store.lookup(store_keys)
        if not found.all():
            raise RuntimeError(f"{key}: {int((~found).sum())} window vectors missing from the store after encoding")
        yield list(ids), vectors


def _fill_store_windowed_on_cluster(model, dataset, keys: list[str], spec: WindowSpec, store, batch_size: int, prompt: str,
                                    label: str, pool, on_progress) -> dict[str, ShardNeeds]:
    """With a Ray cluster: one pass here finds the window keys the store lacks (tokenizing, not
    encoding), then the nodes read their row groups, split them the same way and encode those.
    Returns per shard its distinct window texts and how many the store lacked."""
    lacking, needs = [], {}
    for key in keys:
        distinct = np.unique(np.concatenate([k for _, _, k, _ in _window_batches(model.tokenizer, dataset, [key], spec, LOCAL_CHUNK)]
                                            or [np.array([], dtype=f"S{KEY_BYTES}")]))
        absent = distinct[~store.contains(distinct)] if len(distinct) else distinct
        needs[key] = ShardNeeds(len(distinct), len(absent))
        lacking.append(absent)
    wanted = np.unique(np.concatenate(lacking)) if lacking else np.array([], dtype=f"S{KEY_BYTES}")
    if len(wanted):
        line = ProgressLine(on_progress, "encoding", len(wanted)) if on_progress is not None else None
        pool.fill_store_from_dataset([dataset.shard_path(k) for k in keys if needs[k].missing], wanted, store, batch_size,
                                     prompt, label, line, windows=spec)
    return needs


def _embed_shards_windowed(model, fingerprint, dataset, keys, out_dir, cache_root, batch_size, prompt, precision, processes,
                           threads, on_progress, cluster, spec: WindowSpec) -> dict[str, ShardEmbeddings]:
    """`embed_shards` with passages split into windows: one stream per shard that tokenizes a batch,
    encodes the windows the store lacks and writes every window's row."""
    with encode_pool(model, processes, threads, cluster) as pool:
        label = _pool_precision(pool, precision, model)
        store = EmbeddingCache(cache_root, fingerprint, prompt, label)
        total = sum(dataset.shard_rows(k) for k in keys)
        if on_progress is not None:
            on_progress(f"embedding {len(keys)} shard(s) of {total} passages in windows of {spec.tokens} tokens "
                        f"(stride {spec.stride}); windows the store holds are not encoded again")
        line = ProgressLine(on_progress, "encoding", 0, unit="windows") if on_progress is not None else None
        needs = (_fill_store_windowed_on_cluster(model, dataset, keys, spec, store, batch_size, prompt, label, pool, on_progress)
                 if hasattr(pool, "fill_store_from_dataset") else None)
        dim = model.get_embedding_dimension()
        done = {}
        for key in keys:
            target = out_dir / f"{key}{SHARD_SUFFIX}"
            previous = set(shard_ids(target)) if target.exists() else set()
            tally = WindowTally()
            current: set[str] = set()

            def batches(key=key, tally=tally, current=current):
                for ids, vectors in _windowed_shard(model, dataset, key, spec, store, batch_size, prompt, precision, pool, line,
                                                    tally):
                    current.update(ids)
                    yield ids, vectors

            rows = _write_shard_file(target, batches(), label, fingerprint, dim)
            missing = needs[key].missing if needs is not None else tally.missing  # the cluster encoded them, or this pass did
            done[key] = ShardEmbeddings(target, tally.passages, missing, tally.unique - missing,
                                        len(previous - current), label, tally.long_passages, rows)
    return done


@dataclass(frozen=True)
class ShardNeeds:
    """What one shard asked of the store: its distinct content hashes, and how many of them it lacked."""

    unique: int
    missing: int


def fill_store(model, dataset, keys: list[str], store, batch_size: int, prompt: str, precision: str, pool,
               on_progress: Callable[[str], None] | None, chunk: int = LOCAL_CHUNK) -> dict[str, ShardNeeds]:
    """Encode into `store` every passage of the shards `keys` whose content hash it lacks.

    Pass 1 reads each shard's `content_hash` column only, as 16-byte keys, and asks the store which
    it lacks. Pass 2 reads text columns only of shards with something missing, `chunk` rows at a
    time, and encodes `chunk` distinct texts at a time (one store segment each). In memory: the
    missing keys (16 bytes each, a sorted array) and one chunk, never the corpus's texts.
    """
    needs: dict[str, ShardNeeds] = {}
    lacking = []
    for key in keys:
        hashes = encode_keys(dataset.column("content_hash", [key]))
        distinct = np.unique(hashes)
        absent = distinct[~store.contains(distinct)] if len(distinct) else distinct
        needs[key] = ShardNeeds(len(distinct), len(absent))
        lacking.append(absent)
    wanted = np.unique(np.concatenate(lacking)) if lacking else np.array([], dtype=f"S{KEY_BYTES}")
    if on_progress is not None:
        total = sum(dataset.shard_rows(k) for k in keys)
        on_progress(f"embedding {len(keys)} shard(s) of {total} passages: {len(wanted)} to encode, the rest cached")
    if not len(wanted):
        return needs
    line = ProgressLine(on_progress, "encoding", len(wanted)) if on_progress is not None else None
    if hasattr(pool, "fill_store_from_dataset"):  # a Ray cluster: the nodes read the shards and write the store
        pool.fill_store_from_dataset([dataset.shard_path(k) for k in keys if needs[k].missing], wanted, store,
                                     batch_size, prompt, _pool_precision(pool, precision, model), line)
        return needs
    done = np.zeros(len(wanted), dtype=bool)
    pending_keys: list[np.ndarray] = []
    pending_texts: list[str] = []

    def flush():
        if pending_texts:
            store.put(np.concatenate(pending_keys), encode(model, pending_texts, batch_size, prompt, False, precision, pool, line))
            pending_keys.clear()
            pending_texts.clear()

    for key in (k for k in keys if needs[k].missing):
        for frame in dataset.batches(["title", "text", "content_hash"], [key], batch_rows=chunk):
            batch_keys = encode_keys(frame["content_hash"].to_numpy(dtype=object, na_value=""))
            pos = np.minimum(np.searchsorted(wanted, batch_keys), len(wanted) - 1)
            take = np.flatnonzero((wanted[pos] == batch_keys) & ~done[pos])
            if not len(take):
                continue
            _, first = np.unique(pos[take], return_index=True)  # a text twice in one batch: encoded once
            take = take[first]
            done[pos[take]] = True
            titles, texts = frame["title"].to_numpy(dtype=object), frame["text"].to_numpy(dtype=object)
            pending_keys.append(batch_keys[take])
            pending_texts += [passage_text(titles[i], texts[i]) for i in take]
            if len(pending_texts) >= chunk:
                flush()
    flush()
    return needs


def encode_dataset(model, fingerprint: str, dataset, cache_root: Path, batch_size: int = DEFAULT_BATCH_SIZE,
                   prompt: str = "", precision: str = "auto", pool=None, on_progress: Callable[[str], None] | None = None,
                   cluster: bool = False, windows: WindowSpec | None = None):
    """Every passage of a `CorpusDataset` as vectors, through the store: (row ids, vectors, `EncodeStats`,
    `WindowTally` or None).

    Rows are in the dataset's order (shard after shard, as `dataset.column("passage_id")`). Only
    passages the store lacks are encoded (their texts read in a stream); the rest is one bulk
    lookup by content hash, so a stage that needs a corpus's vectors it already has reads no text.
    With `windows`, a long passage is one row per window (its id repeated, windows in order) and
    the texts are read and split on every call (the store still encodes each window once).
    """
    from embed_pipeline.lib.encoding import EncodeStats

    label = _pool_precision(pool, precision, model)
    store = EmbeddingCache(cache_root, fingerprint, prompt, label)
    if windows is not None:
        needs = (_fill_store_windowed_on_cluster(model, dataset, dataset.keys, windows, store, batch_size, prompt, label, pool,
                                                 on_progress) if hasattr(pool, "fill_store_from_dataset") else None)
        tally = WindowTally()
        line = ProgressLine(on_progress, "encoding", 0, unit="windows") if on_progress is not None else None
        row_ids: list[str] = []
        blocks = []
        for key in dataset.keys:
            for batch_ids, vectors in _windowed_shard(model, dataset, key, windows, store, batch_size, prompt, precision, pool,
                                                      line, tally):
                row_ids += batch_ids
                blocks.append(np.array(vectors))
        dim = model.get_embedding_dimension()
        encoded = min(sum(n.missing for n in needs.values()), tally.unique) if needs is not None else tally.missing
        stats = EncodeStats(tally.windows, tally.unique, encoded, tally.unique - encoded, label)
        return row_ids, (np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)), stats, tally
    needs = fill_store(model, dataset, dataset.keys, store, batch_size, prompt, precision, pool, on_progress,
                       CLUSTER_CHUNK if cluster else LOCAL_CHUNK)
    all_hashes = encode_keys(dataset.column("content_hash"))
    found, vectors = store.lookup(all_hashes)
    if not found.all():
        raise RuntimeError(f"{int((~found).sum())} corpus vectors missing from the store after encoding")
    unique = len(np.unique(all_hashes))
    encoded = sum(n.missing for n in needs.values())  # a text in two shards counts in each, as before
    stats = EncodeStats(len(all_hashes), unique, min(encoded, unique), unique - min(encoded, unique), label)
    return dataset.column("passage_id"), vectors, stats, None


def shard_paths(out_dir: Path, keys: list[str]) -> list[Path]:
    """The shard files of `keys` under `out_dir`; raises naming the missing ones."""
    paths = [Path(out_dir) / f"{key}{SHARD_SUFFIX}" for key in keys]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir}: no embeddings yet for shard(s) {missing}; re-embed them first")
    return paths


def embed_dataset_and_queries(model_ref: str, dataset, queries: list[str], cache_root: Path,
                              batch_size: int = DEFAULT_BATCH_SIZE, corpus_prompt: str = "", query_prompt: str = "",
                              threads: int = 0, precision: str = "auto", processes: int = 1,
                              on_progress: Callable[[str], None] | None = None, cluster=None,
                              windows: Callable | None = None):
    """`encoding.embed_corpus_and_queries` for a `CorpusDataset`: load `model_ref` once, fingerprint it
    once, fill the store with what it lacks of the corpus, then read the corpus vectors by content
    hash (no text read for a corpus already encoded) and encode the queries here.

    Corpus vectors are row-aligned with `dataset.column("passage_id")`, except with `windows` (a
    function of the loaded model returning its `WindowSpec` or None, e.g. `lib.windows.windows_for`
    with the config bound): then long passages are one row per window, `corpus_ids` names each
    row's passage and `windows` counts them.
    """
    from embed_pipeline.lib.encoding import PRECISION_OF_LABEL, CorpusAndQueries, load_model, model_fingerprint

    model = load_model(model_ref, threads=threads)
    fingerprint = model_fingerprint(model)
    with encode_pool(model, processes, threads, cluster) as pool:
        spec = windows(model) if windows is not None else None
        row_ids, corpus_vectors, corpus_stats, tally = encode_dataset(model, fingerprint, dataset, cache_root, batch_size,
                                                                      corpus_prompt, precision, pool, on_progress,
                                                                      cluster is not None, spec)
    # As in embed_corpus_and_queries: with a cluster, queries take the corpus side's autocast.
    query_precision = PRECISION_OF_LABEL.get(corpus_stats.precision, precision) if cluster is not None else precision
    query_vectors, _ = encode_cached(model, queries, cache_root, fingerprint, batch_size, query_prompt,
                                     progress=False, precision=query_precision, on_progress=on_progress)
    return CorpusAndQueries(fingerprint, corpus_vectors, query_vectors, corpus_stats,
                            corpus_ids=list(row_ids), windows=tally.as_dict(spec) if tally is not None else None)
