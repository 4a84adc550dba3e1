"""The passage corpus: read, validate, and turn into the text a model encodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embed_pipeline.lib.io import InputError, read_jsonl
from embed_pipeline.lib.text import clean_text

CORPUS_COLUMNS = ["passage_id", "title", "text"]


@dataclass(frozen=True)
class Corpus:
    """Accepted passages (`passage_id`, `title`, `text`) and rejected rows with a reason each."""

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
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows, bad = read_jsonl(path)
        raw = pd.DataFrame(rows)
        rejected += [{"row": str(n), "reason": reason} for n, reason in bad]
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
    frame["row"] = [str(i) for i in range(len(frame))]
    reasons = pd.Series("", index=frame.index)
    reasons[frame["text"] == ""] = "empty text"
    reasons[frame["passage_id"] == ""] = "missing id"
    duplicated = frame["passage_id"].duplicated(keep="first") & (reasons == "")
    reasons[duplicated] = "duplicate id"
    bad_rows = frame[reasons != ""].assign(reason=reasons[reasons != ""])
    rejected += bad_rows[["row", "reason", "passage_id"]].to_dict("records")
    passages = frame[reasons == ""][CORPUS_COLUMNS].reset_index(drop=True)
    quarantine = pd.DataFrame(rejected, columns=["row", "reason", "passage_id"]).astype(str)
    assert rows_in == len(passages) + len(quarantine)
    return Corpus(passages=passages, quarantine=quarantine, rows_in=rows_in)


def passage_texts(passages: pd.DataFrame) -> list[str]:
    """What the model encodes for each passage: "title\\ntext" (BEIR practice), or the text alone."""
    return [f"{t}\n{x}" if t else x for t, x in zip(passages["title"], passages["text"], strict=True)]
