"""Positive-aware mining on hand-made vectors: the scores are chosen, so every rule's effect is known."""

import numpy as np
import pandas as pd
import pytest

from embed_pipeline.lib.config import MiningConfig
from embed_pipeline.lib.negatives import mine_hard_negatives
from embed_pipeline.lib.plots import score_histogram_png

IDS = ["madrid", "madrid-2", "barcelona", "spain-wine", "paris", "berlin", "tapas"]


def unit(*components):
    v = np.array(components, dtype=np.float32)
    return v / np.linalg.norm(v)


def corpus_vectors(query: np.ndarray) -> np.ndarray:
    """Vectors whose cosine with `query` is exactly the wanted score (2-D rotation away from it)."""
    wanted = {"madrid": 0.90, "madrid-2": 0.88, "barcelona": 0.87, "spain-wine": 0.70, "paris": 0.60, "berlin": 0.40, "tapas": 0.20}
    other = np.array([0, 1, 0], dtype=np.float32)
    return np.stack([wanted[p] * query + np.sqrt(1 - wanted[p] ** 2) * other for p in IDS]).astype(np.float32)


QUERY = unit(1, 0, 0)
PAIRS = pd.DataFrame({"query": ["capital of spain", "capital of spain"], "passage_id": ["madrid", "madrid-2"]})


def mine(**settings):
    config = MiningConfig(**{"num_negatives": 3, "range_max": 7, **settings})
    return mine_hard_negatives(PAIRS, ["capital of spain"], QUERY[None, :], IDS, corpus_vectors(QUERY), config)


def test_margin_drops_near_positive_candidates_and_every_positive_is_excluded():
    mined = mine(relative_margin=0.05)
    row = mined.triples.iloc[0]
    # ceiling = 0.95 * 0.90 = 0.855: barcelona (0.87) is a likely unlabelled positive; madrid-2 is a labelled one.
    assert row["negatives"] == ["spain-wine", "paris", "berlin"]
    assert row["negative_scores"] == pytest.approx([0.70, 0.60, 0.40], abs=1e-5)
    assert row["positive_score"] == pytest.approx(0.90, abs=1e-5)
    assert "madrid" not in mined.triples.iloc[1]["negatives"]
    assert mined.removed_as_positive == 4  # each row sees both positives
    assert mined.removed_by_margin == 2  # barcelona for both rows (0.87 > 0.855 and > 0.836)
    assert mined.removed_scores == pytest.approx([0.87, 0.87], abs=1e-5)
    assert mined.candidates_seen == 14


def test_no_margin_keeps_the_near_duplicate_and_range_min_skips_top_ranks():
    assert mine(relative_margin=0.0).triples.iloc[0]["negatives"][0] == "barcelona"
    skipped = mine(relative_margin=0.0, range_min=4).triples.iloc[0]
    assert skipped["negatives"] == ["paris", "berlin", "tapas"]


def test_skip_above_candidates_join_beyond_the_search_window():
    config = MiningConfig(num_negatives=3, range_max=3, relative_margin=0.05)
    vectors = corpus_vectors(QUERY)
    plain = mine_hard_negatives(PAIRS, ["capital of spain"], QUERY[None, :], IDS, vectors, config)
    assert plain.triples.iloc[0]["negatives"] == []  # top 3 are two positives and a margin removal
    joined = mine_hard_negatives(PAIRS, ["capital of spain"], QUERY[None, :], IDS, vectors, config,
                                 extra_candidates={"capital of spain": ["tapas", "paris", "unknown-id"]})
    assert joined.triples.iloc[0]["negatives"] == ["paris", "tapas"]


def test_audit_lists_the_negatives_closest_to_the_margin_first():
    mined = mine(relative_margin=0.05, audit_rows=2)
    assert list(mined.audit["negative_id"]) == ["spain-wine", "spain-wine"]
    assert mined.audit["gap_to_margin"].is_monotonic_increasing
    assert (mined.audit["gap_to_margin"] > 0).all()


def test_histogram_is_a_png_and_bad_settings_are_rejected():
    mined = mine()
    png = score_histogram_png(mined.positive_scores, mined.negative_scores, mined.removed_scores)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with pytest.raises(ValueError):
        MiningConfig(range_min=10, range_max=5)
    with pytest.raises(ValueError):
        MiningConfig(relative_margin=1.5)
