"""Checkpoint choice and early stopping that act only on differences larger than the dev set's noise.

The dev split scores each checkpoint by its mean nDCG@10 over a few hundred queries. Two
checkpoints a few steps apart differ by fractions of one query's worth (on SciFact, 0.90 vs 0.91
over 80 claims), and "stop after three evaluations without a new maximum" then stops on noise: a
SciFact run stopped at step 180 of 255 and kept step 120, its learning rate still at ~60% of its
peak, because step 120 happened to be a lucky draw.

The rule here: both checkpoints are scored on the same dev queries, so their per-query nDCG@10
are paired, and the paired bootstrap (lib/bootstrap.py) of `this - best` says whether a
checkpoint is *worse* than the best one so far beyond noise: the whole interval, at
`training.dev_confidence`, lies below zero. Then:

- the kept checkpoint is the latest one that is not worse than the best so far (a later
  checkpoint within noise of the best has trained longer on the same evidence: prefer it);
- training stops early only after `patience` evaluations in a row that are each worse than the
  best beyond noise (the dev score has really fallen, not wobbled).

Why a bootstrap over a fixed minimum delta: a delta derived from the dev size alone (e.g.
1/sqrt(n)) ignores that paired differences between neighbouring checkpoints are far less noisy
than one model's mean; the bootstrap measures the noise of exactly these two checkpoints on
exactly these queries, and costs milliseconds. It is seeded, so a rerun makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embed_pipeline.lib.bootstrap import paired_bootstrap

RESAMPLES = 1000


@dataclass(frozen=True)
class Verdict:
    """One dev evaluation judged against the best checkpoint so far (nDCG@10 units)."""

    step: int
    mean: float  # this checkpoint's mean dev nDCG@10
    best_step: int  # the highest-mean checkpoint so far, this one included
    best_mean: float
    low: float  # paired-bootstrap interval of mean(this - best)
    high: float
    worse: bool  # the whole interval lies below zero: worse than the best beyond noise


class CheckpointJudge:
    """Judges each dev evaluation's per-query scores against the highest-mean checkpoint so far.

    The per-query scores must come in the same query order every time (one dev set). Holds only
    the best checkpoint's scores; a training run resumed from a checkpoint starts a new judge, so
    after a resume the reference is the best checkpoint scored since.
    """

    def __init__(self, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0):
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self.best: tuple[int, np.ndarray] | None = None
        self.verdicts: list[Verdict] = []

    def judge(self, step: int, scores) -> Verdict:
        scores = np.asarray(scores, dtype=np.float64)
        if self.best is not None and len(self.best[1]) != len(scores):
            raise ValueError(f"dev scores of {len(scores)} queries, the best checkpoint's of {len(self.best[1])}: one dev set, please")
        if self.best is None or scores.mean() > self.best[1].mean():
            self.best = (step, scores)
        best_step, best = self.best
        if best_step == step:
            low = high = 0.0
        else:
            interval = paired_bootstrap(scores, best, self.resamples, self.confidence, self.seed)
            low, high = interval.low, interval.high
        verdict = Verdict(step, float(scores.mean()), best_step, float(best.mean()), low, high, worse=high < 0)
        self.verdicts.append(verdict)
        return verdict


def kept_step(verdicts: list[Verdict]) -> int | None:
    """The checkpoint to keep: the latest one not worse than the best so far (None: no evaluation)."""
    return next((v.step for v in reversed(verdicts) if not v.worse), None)


def should_stop(verdicts: list[Verdict], patience: int) -> bool:
    """Stop early: the last `patience` evaluations were each worse than the best beyond noise (0: never)."""
    return patience > 0 and len(verdicts) >= patience and all(v.worse for v in verdicts[-patience:])


def selection_score(verdict: Verdict) -> int:
    """The number the trainer maximises to apply these rules with its own machinery: the step when
    the checkpoint is not worse than the best (steps only grow, so the latest such one wins and
    resets the trainer's early-stopping patience), -1 when it is worse (never a new best: the
    patience counter advances)."""
    return -1 if verdict.worse else verdict.step
