"""The embedding cache as a vector store: vectors keyed by content hash, in a few large segment files.

One store space holds the vectors of one (model fingerprint, prompt, precision): the same text
under the same settings always has the same vector, so a key is the text's content hash
(`text.text_hash`, 16 hex characters) and a vector, once computed, is never computed again by any
stage, run or node.

Layout of a space: `<root>/<space>/meta.json` (the settings, read by retention) and
`<root>/<space>/segments/seg-<time>-<uuid>.arrow`, each an uncompressed Arrow IPC file with two
columns, `key` (fixed 16 bytes) and `vector` (fixed-size list of float32), its rows sorted by key.
Why this format and not one of the embedded stores:
- one file per put of up to `SEGMENT_ROWS` vectors, not one per vector: 10M vectors are ~40
  files, not 10M (the old layout) on a shared file system;
- on-disk size is the raw vectors plus 16 bytes a key (1.01x for 384 dimensions); no
  compression, because float vectors do not compress and a mapped file needs none;
- files are memory-mapped: a lookup reads the key column (binary search, keys are sorted) and
  then only the pages of the rows asked for, so `get` costs what is asked, never the store;
- a segment is written to a temporary name and renamed into place: a writer killed mid-put
  leaves no torn segment, and readers list only whole ones. Two writers putting the same key
  write the same vector, so a key in two segments is harmless (any copy is right).
pyarrow is already a dependency; LanceDB or LMDB would add a store with its own versioning,
compaction and locking for what is here an append-only, content-addressed map.

Many small puts (query batches) make many small segments; when a space holds more than
`MAX_SEGMENTS` files, the small ones are merged into one (the merged file is renamed in before the
small ones are deleted, so a concurrent reader sees every key at every moment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_META = "meta.json"  # the settings a space was made for (read by retention)
SEGMENTS = "segments"
SEGMENT_SUFFIX = ".arrow"
SEGMENT_ROWS = 262_144  # vectors per segment file at most (~400 MB at 384 dims)
MAX_SEGMENTS = 64  # above this many files, small segments are merged
MERGE_ROWS = 65_536  # rows of one merged segment: what a merge holds in memory (~100 MB at 384 dims, a few copies)
KEY_BYTES = 16


def space_key(fingerprint: str, prompt: str, precision: str) -> str:
    """The folder name of one (model, prompt, precision) space: 16 hex of SHA-256 over the settings."""
    settings = {"model_fingerprint": fingerprint, "prompt": prompt, "precision": precision}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def encode_keys(keys) -> np.ndarray:
    """Keys as fixed 16-byte values (dtype S16): a 16-character key as its own bytes, any other
    string as 16 hex characters of its SHA-256 (so callers may key by anything); an S16 array as it is."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.dtype(f"S{KEY_BYTES}"):
        return keys
    out = np.empty(len(keys), dtype=f"S{KEY_BYTES}")
    for i, key in enumerate(keys):
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        out[i] = raw if len(raw) == KEY_BYTES else hashlib.sha256(raw).hexdigest()[:KEY_BYTES].encode()
    return out


@dataclass
class _Segment:
    path: Path
    keys: np.ndarray  # S16, sorted (a copy in memory: 16 bytes a row)
    vectors: np.ndarray  # float32 (rows, dim), a view of the mapped file
    mapping: mmap.mmap | None = None

    def release(self) -> None:
        """Drop the mapped pages this process touched (they stay in the OS page cache): a lookup
        reads its rows through the map, and without this every vector ever looked up would count
        in the process's resident memory until the store is closed."""
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)


def _open_segment(path: Path) -> _Segment:
    import pyarrow as pa

    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if os.path.getsize(path) else None
    if mapping is None:
        raise FileNotFoundError(f"{path}: empty segment file")
    table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapping))).read_all()
    # One record batch per segment (`write_segment`), so chunk 0 is the whole column: a view of the
    # map. (`combine_chunks` would copy it into Arrow's memory pool: the whole store in RAM.)
    keys_col = _single_chunk(table.column("key"))
    vec_col = _single_chunk(table.column("vector"))
    n = len(keys_col)
    keys = np.frombuffer(keys_col.buffers()[1], dtype=f"S{KEY_BYTES}", count=n, offset=keys_col.offset * KEY_BYTES).copy()
    dim = vec_col.type.list_size
    values = vec_col.values
    flat = np.frombuffer(values.buffers()[1], dtype=np.float32, count=values.offset + n * dim)[values.offset:]
    segment = _Segment(path, keys, flat.reshape(n, dim) if n else np.zeros((0, dim), np.float32), mapping)
    segment.release()  # opening read the file's pages through the map: none of them need stay resident
    return segment


def _single_chunk(column):
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def write_segment(folder: Path, keys: np.ndarray, vectors: np.ndarray) -> Path:
    """Write one segment (rows sorted by key) under a temporary name and rename it into place."""
    import pyarrow as pa

    order = np.argsort(keys, kind="stable")
    keys, vectors = keys[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
    dim = vectors.shape[1]
    key_arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(KEY_BYTES), len(keys), [None, pa.py_buffer(keys.tobytes())])
    vec_arr = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"key": key_arr, "vector": vec_arr})
    name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"
    final = folder / name
    tmp = folder / f".{name}.tmp"
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=len(keys) or None)
    os.replace(tmp, final)
    return final


class VectorStore:
    """Vectors of one (model fingerprint, prompt, precision) under `root`, looked up in bulk by key.

    `get`/`missing` take many keys at once (a shard, a batch): per segment, one vectorised binary
    search over its sorted key column, then a gather of the rows found. `put` writes the given
    rows as new segment(s). A store object sees the segments present when it was opened plus the
    ones it wrote; `refresh()` looks again (other writers).
    """

    def __init__(self, root: Path, fingerprint: str, prompt: str, precision: str):
        self.dir = Path(root) / space_key(fingerprint, prompt, precision)
        self.segments_dir = self.dir / SEGMENTS
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / CACHE_META
        if not meta.exists():
            tmp = self.dir / f".{CACHE_META}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps({"model_fingerprint": fingerprint, "prompt": prompt, "precision": precision}) + "\n")
            os.replace(tmp, meta)
        self._migrate_legacy()
        self._segments: dict[Path, _Segment] = {}
        self.refresh()

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Look at the segment files on disk again (new ones from other writers, merged-away ones gone)."""
        present = set(self.segments_dir.glob(f"seg-*{SEGMENT_SUFFIX}"))
        for path in [p for p in self._segments if p not in present]:
            del self._segments[path]
        for path in sorted(present - set(self._segments)):
            try:
                self._segments[path] = _open_segment(path)
            except FileNotFoundError:  # merged away between the listing and the open
                continue

    def __len__(self) -> int:
        """Rows over all segments (a key written twice counts twice)."""
        return sum(len(s.keys) for s in self._segments.values())

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def _locate(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each wanted key: the index of a segment holding it (-1: none) and its row there."""
        seg_of = np.full(len(wanted), -1, dtype=np.int64)
        row_of = np.zeros(len(wanted), dtype=np.int64)
        for number, segment in enumerate(self._segments.values()):
            todo = np.flatnonzero(seg_of < 0)
            if not len(todo) or not len(segment.keys):
                continue
            pos = np.searchsorted(segment.keys, wanted[todo])
            pos_clipped = np.minimum(pos, len(segment.keys) - 1)
            hit = segment.keys[pos_clipped] == wanted[todo]
            seg_of[todo[hit]] = number
            row_of[todo[hit]] = pos_clipped[hit]
        return seg_of, row_of

    def lookup(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, vectors) for `keys` in order: `vectors[i]` is key i's vector where `found[i]`
        (rows of keys not found are zero). The bulk form of `get`, with no dict in between."""
        wanted = encode_keys(keys)
        seg_of, row_of = self._locate(wanted)
        segments = list(self._segments.values())
        dim = next((s.vectors.shape[1] for s in segments if len(s.keys)), 0)
        out = np.zeros((len(wanted), dim), dtype=np.float32)
        for number, segment in enumerate(segments):
            rows = np.flatnonzero(seg_of == number)
            if len(rows):
                out[rows] = segment.vectors[row_of[rows]]
                segment.release()
        return seg_of >= 0, out

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (absent keys are left out)."""
        unique = list(dict.fromkeys(keys))
        found, vectors = self.lookup(unique)
        return {key: vectors[i] for i, key in enumerate(unique) if found[i]}

    def contains(self, keys) -> np.ndarray:
        """A boolean mask: which of `keys` (strings or an S16 array) have a vector (key columns only)."""
        seg_of, _ = self._locate(encode_keys(keys))
        return seg_of >= 0

    def missing(self, keys: list[str]) -> list[str]:
        """The distinct keys among `keys` that have no vector (reads key columns only)."""
        unique = list(dict.fromkeys(keys))
        seg_of, _ = self._locate(encode_keys(unique))
        return [key for key, s in zip(unique, seg_of, strict=True) if s < 0]

    # -- writing -------------------------------------------------------------------------------
    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        """Add vectors (as new segments of up to `SEGMENT_ROWS` rows, each written atomically)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors):
            raise ValueError(f"put: {len(keys)} keys but {len(vectors)} vectors")
        if not len(keys):
            return
        encoded = encode_keys(keys)
        # One row per key within a put (the first wins; equal keys carry equal vectors).
        _, first = np.unique(encoded, return_index=True)
        encoded, vectors = encoded[first], vectors[first]
        for start in range(0, len(encoded), SEGMENT_ROWS):
            path = write_segment(self.segments_dir, encoded[start:start + SEGMENT_ROWS], vectors[start:start + SEGMENT_ROWS])
            self._segments[path] = _open_segment(path)
        if len(self._segments) > MAX_SEGMENTS:
            self.compact()

    def compact(self) -> None:
        """Merge the segments smaller than half `MERGE_ROWS` into files of up to `MERGE_ROWS` rows.

        Small segments are merged a group at a time, so memory is one group (not the store, not
        `SEGMENT_ROWS`). Each merged file is renamed in before its small ones are unlinked, so a
        reader listing at any moment finds every key (perhaps twice, which is harmless). A segment
        another process merged away first is skipped.
        """
        self.refresh()
        small = sorted((s for s in self._segments.values() if len(s.keys) < MERGE_ROWS // 2), key=lambda s: s.path.name)
        groups, group, rows = [], [], 0
        for segment in small:
            if group and rows + len(segment.keys) > MERGE_ROWS:
                groups.append(group)
                group, rows = [], 0
            group.append(segment)
            rows += len(segment.keys)
        if group:
            groups.append(group)
        for group in (g for g in groups if len(g) > 1):
            keys = np.concatenate([s.keys for s in group])
            vectors = np.concatenate([s.vectors for s in group])
            _, first = np.unique(keys, return_index=True)
            path = write_segment(self.segments_dir, keys[first], vectors[first])
            self._segments[path] = _open_segment(path)
            for segment in group:
                segment.path.unlink(missing_ok=True)
                self._segments.pop(segment.path, None)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments_dir.glob(f"seg-*{SEGMENT_SUFFIX}"))

    # -- older layouts -------------------------------------------------------------------------
    def _migrate_legacy(self) -> None:
        """Bring a space written by an older version into this layout, once, saying what happened.

        `shard-*.npz` files (many keys per file) are moved into a segment each. One-`.npy`-per-vector
        folders (`<2 hex>/<digest>.npy`) cannot be migrated: their file names are digests of the
        keys, not the keys, so those vectors are dropped (with one warning naming how many) and
        encoded again on first use.
        """
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    keys, vectors = data["keys"].tolist(), data["vectors"]
            except FileNotFoundError:
                continue
            if len(keys):
                write_segment(self.segments_dir, encode_keys(keys), vectors)
            shard.unlink(missing_ok=True)
        legacy = [d for d in self.dir.iterdir() if d.is_dir() and len(d.name) == 2 and d.name != SEGMENTS[:2]
                  and all(c in "0123456789abcdef" for c in d.name)]
        if legacy:
            count = sum(1 for d in legacy for _ in d.glob("*.npy"))
            log.warning("embedding cache %s: %d vectors in the old one-file-per-vector layout cannot be migrated "
                        "(their file names do not hold the keys); they are removed and will be encoded again once",
                        self.dir, count)
            for folder in legacy:
                shutil.rmtree(folder, ignore_errors=True)
