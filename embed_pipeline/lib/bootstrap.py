"""Paired bootstrap over queries: is a lift real, or the luck of which queries were sampled?

Two models are scored on the same queries, so the question is about the per-query differences
d_i = candidate_i - champion_i. Resampling whole queries (with replacement, the same rows for both
models) keeps the pairing: a query that is hard for both models stays hard for both in every
resample, which makes the interval far tighter than comparing two independent means. With 300
queries and recall@10 near 0.8 one model's standard error is about 0.02, so a 1-point lift whose
interval straddles 0 is noise.

The interval is the percentile interval of the resampled mean differences (Efron & Tibshirani
ch. 13); it is seeded, so the same report gives the same interval on every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class LiftInterval:
    """Mean lift (candidate minus champion) and its bootstrap interval, in the metric's units.

    `low`/`high` bound the central `confidence` share of resampled mean lifts; `queries` is how
    many paired queries the estimate rests on.
    """

    point: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    queries: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    candidate: np.ndarray,
    champion: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> LiftInterval:
    """Bootstrap interval for mean(candidate - champion) over paired per-query scores.

    `candidate[i]` and `champion[i]` must be the same query's score. Resampling is done on query
    indices, in chunks so 10,000 resamples of a few thousand queries stay within a few MB.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal 1-d shapes, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("cannot bootstrap a lift over zero queries")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and 0 < confidence < 1 (got {resamples}, {confidence})")
    diffs = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // len(diffs))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        rows = rng.integers(0, len(diffs), size=(stop - start, len(diffs)))
        means[start:stop] = diffs[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return LiftInterval(
        point=round(float(diffs.mean()), 6),
        low=round(float(low), 6),
        high=round(float(high), 6),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        queries=len(diffs),
    )
