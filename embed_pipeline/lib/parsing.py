"""One set of rules for the values users' files hold: booleans, timestamps and ids.

Every reader (search logs, labelled sets) parses through these, so "what counts as a click" or
"what is a timestamp" has one answer, written down here and in the README. A value that fits no
rule is never guessed at: the row goes to a quarantine file with the reason, and a column in
which no value at all parses is an input error (a log whose `clicked` column is all "clicked!"
would otherwise yield zero pairs without a word).

Rules:
- Boolean: true is `true`, `t`, `yes`, `y`, `1` (also 1.0), false is `false`, `f`, `no`, `n`,
  `0` (also 0.0), case and surrounding blanks ignored; a missing value (null, NaN, empty string)
  is false ("no click recorded"). Anything else (2, 0.5, "clicked") is unparseable.
- Timestamp: a Parquet/Arrow timestamp column as it is, ISO 8601 text (`2026-01-31`,
  `2026-01-31T10:00:00`, with `Z` or an offset; no zone means UTC), or numbers as Unix epoch
  seconds (milliseconds when above 1e11). Day-first or month-first text such as `31/01/2026` is
  unparseable: `01/02/2026` is ambiguous, and guessing would reorder sessions silently.
- Id: text with surrounding blanks removed; a whole number stored as float (Parquet turns an
  integer column with a null into floats) reads as the integer (`12.0` -> `12`). Missing or blank
  is unparseable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})
MISSING_WORDS = frozenset({"", "nan", "none", "null", "<na>", "nat"})
EPOCH_MS_ABOVE = 1e11  # epoch seconds reach 1e11 in the year 5138; larger numbers are milliseconds


def parse_bools(values: pd.Series) -> pd.Series:
    """Booleans by the rules above: a nullable boolean Series, <NA> where a value is unparseable."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("boolean")
    words = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.lower()
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[words.isin(TRUE_WORDS)] = True
    out[words.isin(FALSE_WORDS | MISSING_WORDS)] = False
    return out


def parse_timestamps(values: pd.Series) -> pd.Series:
    """UTC timestamps by the rules above; NaT where a value is missing or unparseable."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = pd.to_datetime(values)
        return stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return _epoch(pd.to_numeric(values, errors="coerce"))
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    is_number = values.map(lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
    if is_number.any():
        out[is_number] = _epoch(pd.to_numeric(values[is_number], errors="coerce")).astype(out.dtype)
    is_stamp = values.map(lambda v: isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat"))
    text = values[~is_number & ~is_stamp].astype(object).where(lambda s: s.notna(), "").astype(str).str.strip()
    if len(text):
        out[text.index] = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce").astype(out.dtype)
    if is_stamp.any():
        out[is_stamp] = pd.to_datetime(values[is_stamp].map(str), format="ISO8601", utc=True, errors="coerce").astype(out.dtype)
    return out


def _epoch(numbers: pd.Series) -> pd.Series:
    finite = numbers.where(np.isfinite(numbers.astype("float64")) & (numbers.abs() < 1e16))
    seconds = finite.where(finite.abs() < EPOCH_MS_ABOVE, finite / 1000.0)
    return pd.to_datetime(seconds, unit="s", utc=True, errors="coerce").astype("datetime64[us, UTC]")


def parse_ids(values: pd.Series) -> pd.Series:
    """Ids by the rules above: stripped text, "" where missing or blank (callers quarantine those)."""
    def one(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value).strip()

    return values.map(one).astype(object)
