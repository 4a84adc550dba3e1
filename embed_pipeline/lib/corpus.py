"""The passage corpus: read, validate, and turn into the text a model encodes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.lib.io import InputError, read_jsonl_numbered
from embed_pipeline.lib.text import clean_text

CORPUS_COLUMNS = ["passage_id", "title", "text"]
QUARANTINE_COLUMNS = ["line", "reason", "passage_id"]


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
    """Read a BEIR `corpus.jsonl` (`_id`, `title`, `text`) or a Parquet file with those columns.

    Rows without an id or text, duplicate ids and malformed lines are quarantined, never dropped
    silently: `rows_in == len(passages) + len(quarantine)`.
    """
    path = Path(path)
    rejected: list[dict] = []
    if path.suffix.lower() == ".parquet":
        raw = pd.read_parquet(path)
        lines = list(range(1, len(raw) + 1))
    elif path.suffix.lower() in (".jsonl", ".json"):
        numbered, bad = read_jsonl_numbered(path)
        raw = pd.DataFrame([row for _, row in numbered])
        lines = [n for n, _ in numbered]
        rejected += [{"line": n, "reason": reason, "passage_id": ""} for n, reason in bad]
    else:
        raise InputError(f"{path}: a corpus must be .jsonl (BEIR) or .parquet")
    id_col = "_id" if "_id" in raw.columns else "passage_id"
    if len(raw) and (id_col not in raw.columns or "text" not in raw.columns):
        raise InputError(f"{path}: corpus needs columns `_id` (or `passage_id`) and `text`; found {list(raw.columns)}")
    rows_in = len(raw) + len(rejected)
    if raw.empty:
        raise InputError(f"{path}: the corpus has no readable passages")
    frame = pd.DataFrame(
        {
            "passage_id": raw[id_col].map(lambda v: "" if v is None or pd.isna(v) else str(v).strip()),
            "title": raw["title"].map(clean_text) if "title" in raw.columns else "",
            "text": raw["text"].map(clean_text),
        }
    )
    frame["line"] = lines
    reasons = pd.Series("", index=frame.index)
    reasons[frame["text"] == ""] = "empty text"
    reasons[frame["passage_id"] == ""] = "missing id"
    duplicated = frame["passage_id"].duplicated(keep="first") & (reasons == "")
    reasons[duplicated] = "duplicate id"
    bad_rows = frame[reasons != ""].assign(reason=reasons[reasons != ""])
    rejected += bad_rows[QUARANTINE_COLUMNS].to_dict("records")
    passages = frame[reasons == ""][CORPUS_COLUMNS].reset_index(drop=True)
    quarantine = (pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS).sort_values("line", kind="stable")
                  .astype({"line": "int64", "reason": str, "passage_id": str}).reset_index(drop=True))
    assert rows_in == len(passages) + len(quarantine)
    return Corpus(passages=passages, quarantine=quarantine, rows_in=rows_in)


def passage_texts(passages: pd.DataFrame) -> list[str]:
    """What the model encodes for each passage: "title\\ntext" (BEIR practice), or the text alone."""
    return [f"{t}\n{x}" if t else x for t, x in zip(passages["title"], passages["text"], strict=True)]


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


def split_shards(passages: pd.DataFrame, num_shards: int) -> dict[str, pd.DataFrame]:
    """Every shard key -> its passages (sorted by id; an empty frame for an empty bucket)."""
    buckets = passages["passage_id"].map(lambda pid: shard_of(pid, num_shards))
    return {
        shard_key(i, num_shards): passages[buckets == i].sort_values("passage_id").reset_index(drop=True)
        for i in range(num_shards)
    }


def shard_hashes(passages: pd.DataFrame, num_shards: int) -> dict[str, str]:
    """Shard key -> content hash over its (id, title, text) rows: equal hashes mean nothing to re-embed."""
    out = {}
    for key, frame in split_shards(passages, num_shards).items():
        digest = hashlib.sha256()
        for row in frame[CORPUS_COLUMNS].itertuples(index=False):
            digest.update(json.dumps(list(row)).encode("utf-8"))
        out[key] = digest.hexdigest()[:16]
    return out


def file_stamp(path: Path) -> str:
    """A cheap change marker for a corpus file: size and modification time (no read).

    The corpus change sensor compares it first and hashes shards only when it differs: an
    unchanged tick over a million passages then costs one `stat`, not a full read.
    """
    info = Path(path).stat()
    return f"{info.st_size}:{info.st_mtime_ns}"
