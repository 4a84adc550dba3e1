"""Text normalisation shared by every stage, so "the same query" means one thing everywhere."""

from __future__ import annotations

import hashlib
import unicodedata



def clean_text(value: object) -> str:
    """Unicode NFC and collapsed whitespace; None/NaN become ''. Case is kept (models see it)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    # str.split() splits on exactly the characters `\s` matches (str.isspace), at several times the
    # speed of a regex substitution: it is called twice per passage of a million-passage corpus.
    return " ".join(unicodedata.normalize("NFC", str(value)).split())


def query_key(value: object) -> str:
    """The matching key of a query: cleaned and case-folded. Two queries are equal iff their keys are."""
    return clean_text(value).casefold()


def text_hash(text: str) -> str:
    """A stable content hash (16 hex chars of SHA-256) used for caches and dataset fingerprints."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
