"""The noise-aware checkpoint choice and early stopping (lib/dev_selection.py)."""

import numpy as np

from embed_pipeline.lib.dev_selection import CheckpointJudge, kept_step, selection_score, should_stop


def wobble(base: np.ndarray, seed: int) -> np.ndarray:
    """`base` with 3 queries a rank or two worse and 3 better (what a few more steps do): level with `base`."""
    out = base.copy()
    rows = np.random.default_rng(seed).choice(np.flatnonzero((base > 0.4) & (base < 0.9)), size=6, replace=False)
    out[rows[:3]] -= 0.37
    out[rows[3:]] += 0.37
    return out


def test_a_dip_within_noise_neither_stops_nor_keeps_the_earlier_checkpoint():
    rng = np.random.default_rng(0)
    base = rng.choice([0.0, 0.5, 0.63, 1.0], size=200, p=[0.1, 0.1, 0.1, 0.7])
    judge = CheckpointJudge(confidence=0.95)
    lucky = base.copy()
    lucky[np.flatnonzero(base == 0.5)[:2]] = 1.0  # step 120: two queries luckier than the rest (+0.005)
    verdicts = [judge.judge(100, base), judge.judge(120, lucky)]
    verdicts += [judge.judge(step, wobble(base, step)) for step in (140, 160, 180)]
    assert all(v.best_step == 120 for v in verdicts[1:])
    assert not any(v.worse for v in verdicts), [(v.step, v.mean, v.low, v.high) for v in verdicts]
    assert not should_stop(verdicts, patience=3)  # the old rule (no new maximum 3 times) stopped here
    assert kept_step(verdicts) == 180  # the latest within noise of the best, not the lucky 120
    assert [selection_score(v) for v in verdicts] == [100, 120, 140, 160, 180]


def test_a_real_fall_stops_and_keeps_the_best():
    rng = np.random.default_rng(1)
    best = rng.choice([0.5, 1.0], size=150, p=[0.2, 0.8])
    judge = CheckpointJudge(confidence=0.95)
    verdicts = [judge.judge(20, best * 0.9), judge.judge(40, best)]
    fallen = best.copy()
    fallen[:40] = 0.0  # 40 of 150 queries lose their positive from the top 10
    verdicts += [judge.judge(step, fallen) for step in (60, 80, 100)]
    assert verdicts[0].worse is False and all(v.worse for v in verdicts[2:])
    assert verdicts[2].high < 0
    assert not should_stop(verdicts[:4], patience=3)
    assert should_stop(verdicts, patience=3)
    assert not should_stop(verdicts, patience=0)
    assert kept_step(verdicts) == 40
    assert selection_score(verdicts[-1]) == -1


def test_the_judge_is_seeded_and_refuses_a_changed_dev_set():
    rng = np.random.default_rng(2)
    a, b = rng.random(80), rng.random(80)
    first, second = CheckpointJudge(), CheckpointJudge()
    assert [first.judge(1, a), first.judge(2, b)] == [second.judge(1, a), second.judge(2, b)]
    try:
        first.judge(3, a[:10])
    except ValueError as exc:
        assert "one dev set" in str(exc)
    else:
        raise AssertionError("a dev set of another size must be refused")
