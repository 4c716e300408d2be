"""The noise measures of megatron_gatednorm.analysis.intervals against direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megatron_gatednorm.analysis import intervals as iv


def test_perplexity_is_exp_of_mean_token_nll():
    assert iv.perplexity([2.0, 4.0], tokens_per_window=3) == pytest.approx(math.exp(1.0))


def test_identical_models_give_a_zero_interval():
    a = np.random.default_rng(1).gamma(5.0, 10.0, size=32)
    assert iv.paired_bootstrap_delta(a, a, 31) == (0.0, 0.0)
    assert not iv.exceeds_noise((0.0, 0.0))


def test_a_uniform_shift_is_found_exactly_and_pairing_removes_window_difficulty():
    """b = a + c per window: each resample's delta is exp(m + c/t) - exp(m), m the resample's mean
    NLL; the interval covers the full-sample delta and excludes 0, while an unpaired comparison
    of such different windows could not tell the shift from their spread."""
    rng = np.random.default_rng(2)
    t = 63
    a = rng.uniform(2.0, 6.0, size=64) * t  # windows of very different difficulty
    b = a + 0.05 * t  # +0.05 nats per token on every window
    lo, hi = iv.paired_bootstrap_delta(a, b, t)
    delta = iv.perplexity(b, t) - iv.perplexity(a, t)
    assert lo <= delta <= hi and lo > 0 and iv.exceeds_noise((lo, hi))
    # against a direct loop over the same resamples
    idx = np.random.default_rng(0).integers(0, a.size, size=(iv.RESAMPLES, a.size))
    direct = sorted(iv.perplexity(b[i], t) - iv.perplexity(a[i], t) for i in idx)
    assert np.quantile(direct, [0.025, 0.975]) == pytest.approx([lo, hi], rel=1e-9)


def test_noise_alone_gives_an_interval_around_zero():
    rng = np.random.default_rng(3)
    t = 63
    a = rng.uniform(3.0, 4.0, size=64) * t
    b = a + rng.normal(0.0, 0.02, size=64) * t  # per-window noise, no shift
    lo, hi = iv.paired_bootstrap_delta(a, b, t)
    assert lo < 0 < hi and not iv.exceeds_noise((lo, hi))


def test_seed_spread():
    s = iv.seed_spread([1.0, 2.0, 4.0])
    assert s == dict(mean=pytest.approx(7 / 3), std=pytest.approx(np.std([1, 2, 4], ddof=1)), min=1.0, max=4.0, n=3)
    assert iv.seed_spread([5.0])["std"] == 0.0


def test_seed_interval_is_the_student_t_interval():
    v = [1.0, 2.0, 4.0]
    half = 4.303 * np.std(v, ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert iv.seed_interval(v) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert iv.seed_interval([2.0, 2.0]) == (2.0, 2.0) and not iv.exceeds_noise((0.0, 0.0))
    # 20 degrees of freedom: t = 2.086 (tables); the formula above 10 is within 0.005
    w = np.random.default_rng(0).normal(size=21)
    lo, hi = iv.seed_interval(w)
    assert (hi - lo) / 2 == pytest.approx(2.086 * w.std(ddof=1) / math.sqrt(21), rel=3e-3)


def test_seed_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    for n in (2, 3, 5):
        hits = sum(lo <= 0.0 <= hi for lo, hi in (iv.seed_interval(rng.normal(size=n)) for _ in range(4000)))
        assert 0.935 < hits / 4000 < 0.965, (n, hits)
