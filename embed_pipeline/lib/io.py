"""Reading the input formats users bring, and writing outputs atomically.

Stage boundaries are files: every writer here writes to a temporary sibling and renames it into
place, so a crash mid-write never leaves a half-written file or folder where a reader looks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


class InputError(ValueError):
    """An input file cannot be read as the format it claims to be."""


def require_file(path: Path, what: str = "input") -> Path:
    """`path` is a readable regular file; else an `InputError` in one line (a folder, a missing file)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, expected a file")
    if not path.exists():
        raise InputError(f"{path}: {what} does not exist")
    return path


def read_table(path: Path) -> pd.DataFrame:
    """Parquet, CSV or JSON-lines, chosen by suffix (a Parquet dataset may be a folder)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".parquet":
        require_file(path)
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
            raise InputError(f"{path}: not a readable Parquet file: {' '.join(str(exc).split())[:200]}") from None
    if suffix in (".csv", ".tsv"):
        try:
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a readable {suffix[1:].upper()} file: {' '.join(str(exc).split())[:200]}") from None
    if suffix in (".jsonl", ".json"):
        rows, bad = read_jsonl(path)
        if bad:
            raise InputError(f"{path}: {len(bad)} malformed line(s), first: line {bad[0][0]}: {bad[0][1]}")
        return pd.DataFrame(rows)
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .parquet, .csv, .tsv or .jsonl)")


def read_jsonl(path: Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """Rows of a JSON-lines file plus (line number, reason) for each line that is not a JSON object.

    Blank lines are skipped and not counted as bad; undecodable bytes are reported per line.
    """
    numbered, bad = read_jsonl_numbered(path)
    return [row for _, row in numbered], bad


def decoded_lines(path: Path) -> Iterator[tuple[int, str | None, str]]:
    """(1-based line number, text without the line break, "") for each non-blank line, or
    (number, None, reason) for a line that is not valid UTF-8 (a BOM on line 1 is dropped).

    The one line reader behind every line-oriented input, so a bad byte anywhere costs one row,
    never the file, and every caller reports the same line numbers.
    """
    with open(require_file(path), "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield number, None, f"invalid UTF-8: {exc.reason}"
                continue
            if line.strip():
                yield number, line, ""


def read_jsonl_numbered(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """As `read_jsonl`, with each good row's 1-based line number (for quarantine reports)."""
    rows: list[tuple[int, dict]] = []
    bad: list[tuple[int, str]] = []
    for number, line, problem in decoded_lines(path):
        if line is None:
            bad.append((number, problem))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            bad.append((number, "not a JSON object"))
            continue
        rows.append((number, obj))
    return rows, bad


def read_qrels(path: Path, rejected: list[tuple[int, str]] | None = None) -> pd.DataFrame:
    """A BEIR qrels TSV (`query-id corpus-id score`, header optional) -> columns query_id,
    passage_id, score, line (1-based line number in the file).

    Rows with score <= 0 are judged non-relevant and left out. Lines that cannot be read (invalid
    UTF-8, fewer than two fields, a score that is not an integer) are left out too and, when a
    `rejected` list is given, appended to it as (line number, reason) so callers can quarantine
    them; blank lines are not rows.
    """
    rows: list[tuple[str, str, int, int]] = []
    bad: list[tuple[int, str]] = []
    first = True
    for number, line, problem in decoded_lines(path):
        if line is None:
            bad.append((number, problem))
            continue
        fields = [f.strip() for f in line.split("\t")]
        if first and fields[0].lower() in ("query-id", "query_id", "qid"):
            first = False
            continue
        first = False
        if len(fields) < 2 or not fields[0] or not fields[1]:
            bad.append((number, "malformed qrels line: needs query-id<TAB>corpus-id[<TAB>score]"))
            continue
        try:
            score = int(float(fields[2])) if len(fields) > 2 and fields[2] else 1
        except (ValueError, OverflowError):  # "x", "nan", "inf"
            bad.append((number, f"non-numeric score {fields[2]!r}"))
            continue
        if score > 0:
            rows.append((fields[0], fields[1], score, number))
    if rejected is not None:
        rejected.extend(bad)
    return pd.DataFrame(rows, columns=["query_id", "passage_id", "score", "line"])


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target` (file or folder).

    A folder replaces an existing folder in two renames (old aside, new in); readers that resolve
    the path see either the old or the new content, never a partial one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if tmp.is_dir() and target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, created if missing, held for the block: one
    process at a time across the CLI, the daemon and its runs (released when a holder dies)."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_parquet(frame: pd.DataFrame, target: Path) -> Path:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return target


def write_json(obj: object, target: Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return target


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))

