"""Text normalisation shared by every stage, so "the same query" means one thing everywhere."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")


def clean_text(value: object) -> str:
    """Unicode NFC and collapsed whitespace; None/NaN become ''. Case is kept (models see it)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", str(value))).strip()


def query_key(value: object) -> str:
    """The matching key of a query: cleaned and case-folded. Two queries are equal iff their keys are."""
    return clean_text(value).casefold()


def text_hash(text: str) -> str:
    """A stable content hash (16 hex chars of SHA-256) used for caches and dataset fingerprints."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
