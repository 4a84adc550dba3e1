"""Paired bootstrap on constructed per-query scores whose answer is known."""

import numpy as np
import pytest

from embed_pipeline.lib.bootstrap import paired_bootstrap


def test_constant_lift_has_a_zero_width_interval():
    champion = np.array([0.0, 1.0, 0.5, 1.0, 0.0] * 20)
    interval = paired_bootstrap(champion + 0.05, champion, resamples=1000, seed=1)
    assert interval.point == pytest.approx(0.05)
    assert interval.low == pytest.approx(0.05) and interval.high == pytest.approx(0.05)
    assert interval.queries == 100 and interval.resamples == 1000


def test_interval_matches_the_normal_approximation_of_the_paired_differences():
    # 400 queries: 60 gain a hit (+1), 20 lose one (-1), 320 unchanged. Mean lift 0.10;
    # the standard error of the mean difference is sd(d) / sqrt(n).
    diffs = np.array([1.0] * 60 + [-1.0] * 20 + [0.0] * 320)
    champion = np.where(diffs < 0, 1.0, 0.0)
    candidate = champion + diffs
    interval = paired_bootstrap(candidate, champion, resamples=4000, seed=0)
    se = diffs.std() / np.sqrt(len(diffs))
    assert interval.point == pytest.approx(0.10)
    assert interval.low == pytest.approx(0.10 - 1.96 * se, abs=0.01)
    assert interval.high == pytest.approx(0.10 + 1.96 * se, abs=0.01)
    assert interval.low > 0


def test_pairing_a_shared_hard_query_set_keeps_the_interval_tight():
    # Both models swing together across queries (hard vs easy); the candidate adds 0.02 to
    # every query. Unpaired, the spread of the scores would swamp 0.02; paired, it cannot.
    champion = np.linspace(0.0, 0.9, 300)
    interval = paired_bootstrap(champion + 0.02, champion, resamples=1000, seed=0)
    assert interval.low > 0.019


def test_noise_lift_straddles_zero_and_the_seed_makes_it_reproducible():
    diffs = np.array([1.0, -1.0] * 50 + [0.0] * 200)
    champion = np.where(diffs < 0, 1.0, 0.0)
    first = paired_bootstrap(champion + diffs, champion, resamples=2000, seed=5)
    again = paired_bootstrap(champion + diffs, champion, resamples=2000, seed=5)
    assert first == again
    assert first.point == 0.0 and first.low < 0 < first.high


def test_rejects_unpaired_or_empty_input():
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(0), np.zeros(0))
