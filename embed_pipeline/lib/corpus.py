"""The passage corpus: read in a stream, validated, and kept as a columnar dataset sharded by id.

The source a user brings (a BEIR `corpus.jsonl`, a Parquet file, or a folder of either) is read
once, in blocks of `BLOCK_ROWS` rows, and written as Parquet, one file per shard:

    <artifacts_dir>/corpus/<key>/corpus.json             the manifest: counts, shard hashes, source stamp
                                 quarantine.parquet      rejected rows: file, line, reason, passage_id
                                 passages/<shard>.parquet  passage_id, title, text, content_hash, line, file

`<key>` is a hash of the source's path, its size/mtime stamp and the shard count, so a corpus
that did not change is never read again and every stage (the input check, the `corpus` asset,
the change sensor, embeddings, indexes, negatives, eval, `search`) reads this dataset, only the
shards and columns it needs, never the source file. Memory while building is a function of the
block size (and of one shard's id column, for duplicate detection), not of the corpus.

Why pyarrow and a line reader of our own, not pyarrow's JSON reader, DuckDB or Polars: a row
that cannot be read must cost that row, with its 1-based line number and a reason, and a block
reader that fails a whole block on one bad line (all three do) would have to fall back to a
line reader anyway. pyarrow is already a dependency; its Parquet writer/reader gives per-shard
files, column projection and row-group reads for lookups by id.

`content_hash` is `text_hash` of what the model encodes (`passage_text`): the embedding store's
key, so a stage asks the store for a shard's vectors by hash without reading its texts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embed_pipeline.lib.io import InputError, atomic_path, decoded_lines, read_json, write_json
from embed_pipeline.lib.text import clean_text, text_hash

CORPUS_COLUMNS = ["passage_id", "title", "text"]
DATASET_COLUMNS = ["passage_id", "title", "text", "content_hash", "line", "file"]
QUARANTINE_COLUMNS = ["line", "reason", "passage_id"]
DATASET_QUARANTINE_COLUMNS = ["file", "line", "reason", "passage_id"]
BLOCK_ROWS = 65_536  # rows parsed and written at a time: the unit memory is bounded by
ROW_GROUP_ROWS = 1_024  # rows per Parquet row group at most: what a lookup by id reads (~1 MB of text)
FORMAT_VERSION = 1
MANIFEST = "corpus.json"
PASSAGES = "passages"
QUARANTINE_FILE = "quarantine.parquet"
SOURCE_SUFFIXES = (".jsonl", ".json", ".parquet")
ID_INDEX_SUFFIX = ".ids.npy"  # beside each shard file: (64-bit id hash, row) sorted by hash, for lookups by id
_ID_INDEX_DTYPE = np.dtype([("h", "<u8"), ("row", "<u4")])


def passage_text(title: str, text: str) -> str:
    """What the model encodes for a passage: "title\\ntext" (BEIR practice), or the text alone."""
    return f"{title}\n{text}" if title else text


def passage_texts(passages: pd.DataFrame) -> list[str]:
    """`passage_text` of each row of a frame with `title` and `text`."""
    return [passage_text(t, x) for t, x in zip(passages["title"], passages["text"], strict=True)]


def shard_key(shard: int, num_shards: int) -> str:
    """The partition key of one shard, e.g. `shard-03-of-08`.

    The bucket count is part of the key: changing `index.shards` yields a new set of keys rather
    than silently reusing shard files that hold a different set of passages.
    """
    return f"shard-{shard:03d}-of-{num_shards:03d}" if num_shards > 99 else f"shard-{shard:02d}-of-{num_shards:02d}"


def shard_keys(num_shards: int) -> list[str]:
    return [shard_key(i, num_shards) for i in range(num_shards)]


def shard_of(passage_id: str, num_shards: int) -> int:
    """The bucket of a passage: SHA-256 of its id modulo `num_shards`.

    Stable across runs, machines and Python versions (unlike `hash()`), and independent of the
    passage's text and of which file it came from, so an edit moves no passage between shards
    and a re-embedding touches only the shards whose passages changed.
    """
    return int(hashlib.sha256(passage_id.encode("utf-8")).hexdigest()[:8], 16) % num_shards


# ---------------------------------------------------------------------------------------------
# Reading the source in blocks
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """Up to `BLOCK_ROWS` source rows of one file: the ones that passed the row checks (`rows`:
    (passage_id, title, text, line) tuples) and the ones that did not (`rejected`: file, line,
    reason, passage_id). Plain lists, not a frame: a block goes straight into Arrow columns."""

    file: str
    rows: list[tuple[str, str, str, int]]
    rejected: list[dict]

    @property
    def passages(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=["passage_id", "title", "text", "line"])
        frame["file"] = self.file
        return frame


def source_files(source: Path) -> list[Path]:
    """The files a corpus source names: itself, or a folder's .jsonl/.json/.parquet files (sorted, recursive)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            raise InputError(f"{source}: a corpus folder must hold .jsonl or .parquet files; found none")
        return files
    if not source.exists():
        raise InputError(f"{source}: no such corpus file")
    if source.suffix.lower() not in SOURCE_SUFFIXES:
        raise InputError(f"{source}: a corpus must be .jsonl (BEIR), .parquet, or a folder of them")
    return [source]


def source_stamp(source: Path) -> str:
    """A cheap change marker for a corpus source: size and mtime of each file (no read).

    The change sensor compares it first and rebuilds the dataset only when it differs: an
    unchanged tick over a million passages costs a `stat` per file, not a read.
    """
    parts = []
    for path in source_files(source):
        info = path.stat()
        parts.append(f"{path.name}:{info.st_size}:{info.st_mtime_ns}")
    return parts[0].split(":", 1)[1] if len(parts) == 1 else text_hash("|".join(parts))



def _string_field(value, what: str) -> tuple[str, str]:
    """(cleaned text, "") or ("", reason) for a JSON/Parquet value meant to be text."""
    if isinstance(value, (list, dict, tuple)):
        kind = "object" if isinstance(value, dict) else "array"
        return "", f"{what} is a JSON {kind}, not a string"
    if isinstance(value, np.ndarray):
        return "", f"{what} is a list, not a string"
    return clean_text(value), ""


def _id_field(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, dict, tuple, np.ndarray)):
        return ""
    return str(value).strip()


def _check_row(row: dict, id_key: str) -> tuple[tuple[str, str, str] | None, str, str]:
    """((id, title, text), "", id) for a good row, or (None, reason, id) for a rejected one."""
    pid = _id_field(row.get(id_key))
    text, problem = _string_field(row.get("text"), "text")
    title, title_problem = _string_field(row.get("title"), "title")
    if not pid:
        return None, "missing id", ""
    if problem or title_problem:
        return None, problem or title_problem, pid
    if not text:
        return None, "empty text", pid
    return (pid, title, text), "", pid


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    for number, line, problem in decoded_lines(path):
        if line is None:
            yield number, None, problem
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON: {exc.msg}"
            continue
        if not isinstance(obj, dict):
            yield number, None, "not a JSON object"
            continue
        yield number, obj, ""


def _rows_parquet(path: Path, block_rows: int) -> Iterator[tuple[int, dict | None, str]]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    wanted = [c for c in ("_id", "passage_id", "title", "text") if c in names]
    _require_columns(path, names)
    number = 0
    for batch in handle.iter_batches(batch_size=block_rows, columns=wanted):
        for row in batch.to_pylist():
            number += 1
            yield number, row, ""


def _require_columns(path: Path, names) -> None:
    if not ({"_id", "passage_id"} & set(names)) or "text" not in names:
        raise InputError(f"{path}: corpus needs columns `_id` (or `passage_id`) and `text`; found {sorted(names)}")


def scan_corpus(source: Path, block_rows: int = BLOCK_ROWS) -> Iterator[Block]:
    """The source's rows in blocks, each row checked: a passage, or a rejected row with its reason.

    Reasons (one per row): invalid UTF-8 / invalid JSON / not a JSON object (the line could not be
    read), missing id, text or title given as a JSON array or object (never accepted as its
    Python repr), empty text. Duplicate ids are found later, per shard (`build_corpus_dataset`),
    since equal ids always land in one shard. Raises `InputError` for a source that is not a
    corpus at all (wrong type, no id or text column in its first block).
    """
    for path in source_files(source):
        name = str(path)
        rows = _rows_parquet(path, block_rows) if path.suffix.lower() == ".parquet" else _rows_jsonl(path)
        good: list[tuple[str, str, str, int]] = []
        rejected: list[dict] = []
        first_block = path.suffix.lower() != ".parquet"  # Parquet's columns are checked from its schema
        seen_columns: set[str] = set()
        for number, row, problem in rows:
            if row is None:
                rejected.append({"file": name, "line": number, "reason": problem, "passage_id": ""})
            else:
                if first_block:
                    seen_columns |= row.keys()
                id_key = "_id" if "_id" in row else "passage_id"
                fields, reason, pid = _check_row(row, id_key)
                if fields is None:
                    rejected.append({"file": name, "line": number, "reason": reason, "passage_id": pid})
                else:
                    good.append((*fields, number))
            if len(good) + len(rejected) >= block_rows:
                if first_block and not good and seen_columns:
                    _require_columns(path, seen_columns)
                first_block = False
                yield Block(name, good, rejected)
                good, rejected = [], []
        if first_block and not good and seen_columns:
            _require_columns(path, seen_columns)
        if good or rejected:
            yield Block(name, good, rejected)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------

def _shard_hash(ids: np.ndarray, hashes: np.ndarray) -> str:
    """16 hex of SHA-256 over a shard's (passage_id, content_hash) pairs in id order: equal hashes,
    nothing to re-embed (the content hash covers title and text)."""
    digest = hashlib.sha256()
    order = np.argsort(ids, kind="stable")
    for pid, h in zip(ids[order], hashes[order], strict=True):
        digest.update(f"{pid}\t{h}\n".encode("utf-8"))
    return digest.hexdigest()[:16]


def _id_hashes(ids) -> np.ndarray:
    """64 bits of BLAKE2b per passage id (a lookup key; equal hashes of two ids are resolved by
    comparing the ids themselves)."""
    return np.frombuffer(b"".join(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest() for i in ids),
                         dtype="<u8", count=len(ids))


def _id_index(ids) -> np.ndarray:
    """A shard's id index: (id hash, row in the shard file), sorted by hash (12 bytes a passage)."""
    index = np.empty(len(ids), dtype=_ID_INDEX_DTYPE)
    index["h"] = _id_hashes(ids)
    index["row"] = np.arange(len(ids), dtype=np.uint32)
    index.sort(order="h", kind="stable")
    return index


def _schema():
    import pyarrow as pa

    return pa.schema([("passage_id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                      ("content_hash", pa.string()), ("line", pa.int64()), ("file", pa.dictionary(pa.int32(), pa.string()))])


def build_corpus_dataset(source: Path, target: Path, num_shards: int, block_rows: int = BLOCK_ROWS,
                         on_progress: Callable[[str], None] | None = None) -> CorpusDataset:
    """Read `source` in blocks and write the dataset folder `target` atomically (see the module doc).

    Pass 1 streams blocks: rows are checked, given their content hash and shard, and appended to
    their shard's Parquet file (one row group per block and shard). Pass 2 goes shard by shard,
    reading only `passage_id` and `content_hash`: ids seen twice are quarantined as
    "duplicate id" (the first occurrence in file order is kept), the shard rewritten without
    them, and the shard hash computed. Nothing is lost: `rows_in == passages + quarantined`.
    Raises `InputError` when no passage is readable.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, target = Path(source), Path(target)
    keys = shard_keys(num_shards)
    schema = _schema()
    rejected: list[dict] = []
    rows_in = 0
    with atomic_path(target) as tmp:
        (tmp / PASSAGES).mkdir(parents=True)
        writers = {key: pq.ParquetWriter(tmp / PASSAGES / f"{key}.parquet", schema) for key in keys}
        try:
            for block in scan_corpus(source, block_rows):
                rows_in += len(block.rows) + len(block.rejected)
                rejected += block.rejected
                if not block.rows:
                    continue
                ids, titles, texts, lines = zip(*block.rows)
                hashes = [text_hash(passage_text(t, x)) for t, x in zip(titles, texts, strict=True)]
                buckets = np.fromiter((shard_of(pid, num_shards) for pid in ids), dtype=np.int64, count=len(ids))
                files = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int32)), pa.array([block.file]))
                table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(titles, pa.string()),
                                              pa.array(texts, pa.string()), pa.array(hashes, pa.string()),
                                              pa.array(lines, pa.int64()), files], schema=schema)
                for shard in np.unique(buckets):
                    writers[keys[shard]].write_table(table.take(np.flatnonzero(buckets == shard)), row_group_size=ROW_GROUP_ROWS)
                if on_progress is not None:
                    on_progress(f"corpus: {rows_in:,} rows read")
        finally:
            for writer in writers.values():
                writer.close()
        shards = {}
        for key in keys:
            path = tmp / PASSAGES / f"{key}.parquet"
            dups = _drop_duplicates(path, schema)
            rejected += dups
            cols = pq.read_table(path, columns=["passage_id", "content_hash"])
            ids = cols.column("passage_id").to_numpy(zero_copy_only=False).astype(object)
            hashes = cols.column("content_hash").to_numpy(zero_copy_only=False).astype(object)
            shards[key] = {"rows": len(ids), "hash": _shard_hash(ids, hashes)}
            np.save(tmp / PASSAGES / f"{key}{ID_INDEX_SUFFIX}", _id_index(ids))
        quarantine = pd.DataFrame(rejected, columns=DATASET_QUARANTINE_COLUMNS)
        quarantine = quarantine.astype({"file": str, "line": "int64", "reason": str, "passage_id": str})
        file_order = {name: i for i, name in enumerate(str(p) for p in source_files(source))}
        quarantine = (quarantine.assign(_f=quarantine["file"].map(file_order)).sort_values(["_f", "line"], kind="stable")
                      .drop(columns="_f").reset_index(drop=True))
        quarantine.to_parquet(tmp / QUARANTINE_FILE, index=False)
        passages = sum(s["rows"] for s in shards.values())
        if passages == 0:
            first = quarantine.iloc[0].to_dict() if len(quarantine) else {}
            raise InputError(f"{source}: the corpus has no readable passages ({len(quarantine)} rows quarantined"
                             + (f"; first: line {first['line']}: {first['reason']}" if first else "") + ")")
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": str(source),
            "source_stamp": source_stamp(source),
            "num_shards": num_shards,
            "rows_in": rows_in,
            "passages": passages,
            "quarantined": len(quarantine),
            "quarantine_reasons": dict(Counter(quarantine["reason"]).most_common()),
            "shards": shards,
            "version": text_hash(json.dumps({k: s["hash"] for k, s in shards.items()}, sort_keys=True)),
        }
        assert rows_in == passages + len(quarantine), (rows_in, passages, len(quarantine))
        write_json(manifest, tmp / MANIFEST)
    return CorpusDataset(target)


def _drop_duplicates(path: Path, schema) -> list[dict]:
    """Rewrite one shard file without its repeated ids (the first occurrence stays); the quarantine rows."""
    import pyarrow.parquet as pq

    ids = pq.read_table(path, columns=["passage_id"]).column("passage_id").to_pandas()
    repeated = ids.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return []
    table = pq.read_table(path)
    dropped = table.filter(repeated).select(["file", "line", "passage_id"]).to_pylist()
    pq.write_table(table.filter(~repeated), path.with_suffix(".dedup"), row_group_size=ROW_GROUP_ROWS)
    path.with_suffix(".dedup").replace(path)
    return [{"file": str(r["file"]), "line": r["line"], "reason": "duplicate id", "passage_id": r["passage_id"]}
            for r in dropped]


def dataset_key(source: Path, num_shards: int) -> str:
    """The dataset folder name for a source as it is now: its path, its stamp, the shard count, the format."""
    source = Path(source).resolve()
    return text_hash(json.dumps({"source": str(source), "stamp": source_stamp(source), "shards": num_shards,
                                 "format": FORMAT_VERSION}, sort_keys=True))


def corpus_dataset(source: Path, datasets_dir: Path, num_shards: int, on_progress: Callable[[str], None] | None = None,
                   block_rows: int = BLOCK_ROWS) -> CorpusDataset:
    """The dataset of `source` as it is now, under `datasets_dir/<dataset_key>`: built once, then reused.

    Every process asking for an unchanged source gets the same folder without reading the source;
    two processes building it at once each build a whole folder and the first rename wins (the
    two are identical; the other is discarded).
    """
    import os
    import shutil
    import uuid

    folder = Path(datasets_dir) / dataset_key(source, num_shards)
    if (folder / MANIFEST).exists():
        return CorpusDataset(folder)
    if on_progress is not None:
        on_progress(f"corpus: reading {source} into {folder} ({num_shards} shards)")
    # Built under a name of its own, then renamed in only if no other process got there first:
    # a reader of the first one never sees its folder swapped under it.
    build = folder.parent / f".{folder.name}.build-{uuid.uuid4().hex[:8]}"
    try:
        build_corpus_dataset(source, build, num_shards, block_rows, on_progress)
        try:
            os.rename(build, folder)
        except OSError:
            if not (folder / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return CorpusDataset(folder)


class CorpusDataset:
    """A built corpus dataset: read by shard and column, in batches, or by id.

    Only what is asked is read: `column("content_hash")` reads one column of every shard,
    `batches(["passage_id", "text"], shards=[...])` streams those shards in row groups, and
    `lookup(ids)` reads, per shard holding one of the ids, its id column and then only the row
    groups that hold them.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / MANIFEST)
        self._handles: dict[str, object] = {}  # shard key -> (ParquetFile, row-group starts, id index), for lookups

    @property
    def keys(self) -> list[str]:
        return list(self.manifest["shards"])

    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    def __len__(self) -> int:
        return int(self.manifest["passages"])

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def shard_hashes(self) -> dict[str, str]:
        return {k: s["hash"] for k, s in self.manifest["shards"].items()}

    def shard_rows(self, key: str) -> int:
        return int(self.manifest["shards"][key]["rows"])

    def shard_path(self, key: str) -> Path:
        return self.folder / PASSAGES / f"{key}.parquet"

    @property
    def quarantine_path(self) -> Path:
        return self.folder / QUARANTINE_FILE

    def quarantine(self) -> pd.DataFrame:
        return pd.read_parquet(self.quarantine_path)

    def batches(self, columns: list[str], shards: list[str] | None = None,
                batch_rows: int = BLOCK_ROWS) -> Iterator[pd.DataFrame]:
        """Frames of at most `batch_rows` rows with `columns`, shard after shard (all shards by default)."""
        import pyarrow.parquet as pq

        for key in shards if shards is not None else self.keys:
            handle = pq.ParquetFile(self.shard_path(key))
            for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
                yield _to_frame(batch)

    def column(self, name: str, shards: list[str] | None = None) -> np.ndarray:
        """One column of the chosen shards (all by default), concatenated in shard order."""
        import pyarrow.parquet as pq

        parts = [pq.read_table(self.shard_path(k), columns=[name]).column(name).to_numpy(zero_copy_only=False)
                 for k in (shards if shards is not None else self.keys)]
        return np.concatenate(parts) if parts else np.array([], dtype=object)

    def frame(self, columns: list[str] | None = None, shards: list[str] | None = None) -> pd.DataFrame:
        """The chosen shards' rows as one frame (default: passage_id, title, text). For steps that need
        them all in memory anyway (the training data, a synthetic sample); streaming steps use `batches`."""
        columns = columns or CORPUS_COLUMNS
        frames = list(self.batches(columns, shards))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def lookup(self, ids: list[str], columns: list[str] | None = None) -> pd.DataFrame:
        """Rows of the given passage ids (index `passage_id`; unknown ids are absent).

        Per shard holding one of the ids: a binary search in the shard's id index (memory-mapped,
        `ID_INDEX_SUFFIX`) finds the rows, then only the row groups holding them are read. A few
        milliseconds for a page of search hits, whatever the corpus size.
        """
        import pyarrow as pa

        columns = [c for c in (columns or ["title", "text"]) if c != "passage_id"]
        by_shard: dict[str, list[str]] = {}
        for pid in dict.fromkeys(ids):
            by_shard.setdefault(shard_key(shard_of(pid, self.num_shards), self.num_shards), []).append(pid)
        tables = []
        for key, wanted in by_shard.items():
            handle, starts, index = self._lookup_handles(key)
            rows = self._rows_of(key, wanted, index)
            if not len(rows):
                continue
            groups = sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in rows})
            table = handle.read_row_groups(groups, columns=["passage_id", *columns])
            wanted_set = set(wanted)
            tables.append(table.filter(pa.array([pid in wanted_set for pid in table.column("passage_id").to_pylist()])))
        if not tables:
            return pd.DataFrame(columns=columns, index=pd.Index([], name="passage_id"))
        return _to_frame(pa.concat_tables(tables)).drop_duplicates("passage_id").set_index("passage_id")

    def _lookup_handles(self, key: str):
        """(open ParquetFile, first row of each row group, id index or None) of a shard, opened once
        per dataset object: a `Searcher` answering many queries pays the file opens once."""
        import pyarrow.parquet as pq

        if key not in self._handles:
            handle = pq.ParquetFile(self.shard_path(key))
            starts = np.cumsum([0] + [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)])
            path = self.folder / PASSAGES / f"{key}{ID_INDEX_SUFFIX}"
            self._handles[key] = (handle, starts, np.load(path, mmap_mode="r") if path.exists() else None)
        return self._handles[key]

    def _rows_of(self, key: str, wanted: list[str], index) -> np.ndarray:
        """Candidate rows of `wanted` ids in a shard file (hash matches: the caller compares ids)."""
        if index is None:  # a dataset written before id indexes: every row is a candidate
            return np.arange(self.shard_rows(key))
        hashes = index["h"]
        rows = []
        for h in _id_hashes(wanted):
            pos = int(np.searchsorted(hashes, h))
            while pos < len(hashes) and hashes[pos] == h:
                rows.append(int(index["row"][pos]))
                pos += 1
        return np.asarray(sorted(rows), dtype=np.int64)


def _to_frame(batch) -> pd.DataFrame:
    frame = batch.to_pandas()
    if "file" in frame.columns:
        frame["file"] = frame["file"].astype(str)
    return frame


# ---------------------------------------------------------------------------------------------
# In memory, for small inputs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Corpus:
    """Accepted passages (`passage_id`, `title`, `text`) and rejected rows with a reason each.

    `quarantine` has `line` (the 1-based line of the file, as an editor shows it; for Parquet, the
    1-based row), `reason` and `passage_id` (empty when the row had none or could not be read).
    """

    passages: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int


def load_corpus(path: Path) -> Corpus:
    """The whole corpus in memory, by the same block reader and rules as the dataset build.

    For small corpora and tools (benchmarks, tests); the pipeline's stages read the dataset
    (`corpus_dataset`) instead, which never holds the corpus in memory.
    """
    blocks = list(scan_corpus(Path(path)))
    frames = [b.passages for b in blocks if len(b.passages)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["passage_id", "title", "text", "line", "file"])
    rejected = [r for b in blocks for r in b.rejected]
    repeated = frame["passage_id"].duplicated(keep="first")
    rejected += [{"file": f, "line": n, "reason": "duplicate id", "passage_id": p}
                 for f, n, p in zip(frame.loc[repeated, "file"], frame.loc[repeated, "line"], frame.loc[repeated, "passage_id"],
                                    strict=True)]
    passages = frame[~repeated][CORPUS_COLUMNS].reset_index(drop=True)
    quarantine = pd.DataFrame(rejected, columns=DATASET_QUARANTINE_COLUMNS)
    file_order = {name: i for i, name in enumerate(str(p) for p in source_files(Path(path)))}
    quarantine = (quarantine.assign(_f=quarantine["file"].map(file_order)).sort_values(["_f", "line"], kind="stable")
                  .drop(columns="_f")[QUARANTINE_COLUMNS].astype({"line": "int64", "reason": str, "passage_id": str})
                  .reset_index(drop=True))
    rows_in = len(frame) + sum(len(b.rejected) for b in blocks)
    if passages.empty:
        raise InputError(f"{path}: the corpus has no readable passages")
    return Corpus(passages=passages, quarantine=quarantine, rows_in=rows_in)


DATASETS_FOLDER = "corpus"  # <artifacts_dir>/corpus/<dataset key>/


def dataset_for(config, on_progress: Callable[[str], None] | None = None) -> CorpusDataset:
    """The corpus dataset of a `PipelineConfig` (its `corpus` source, its `index.shards`), built on first use."""
    return corpus_dataset(config.corpus, Path(config.artifacts_dir) / DATASETS_FOLDER, config.index.shards, on_progress)
