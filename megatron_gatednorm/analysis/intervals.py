"""How far a measured difference is from noise: a paired bootstrap interval over held-out windows,
and the spread of a figure over seeds. numpy only.

Perplexity over ``n`` windows of ``t`` scored tokens each, from per-window NLL sums ``s_i``:
``ppl = exp(Σ s_i / (n t))``. For two models scored on the same windows (``a``: the reference,
``b``: e.g. its quantized copy) the delta is ``ppl(b) − ppl(a)``. The paired bootstrap draws ``n``
window indices with replacement ``R`` times, recomputes both perplexities on each draw (the same
windows for both: the pairing removes the windows' own difficulty from the spread) and reports the
``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the ``R`` deltas (percentile interval). A
delta whose interval excludes 0 is larger than the window-sampling noise; that says nothing of
the noise over training seeds, which :func:`seed_spread` and :func:`seed_interval` report.

Over ``n`` training seeds, a figure's values ``x_1..x_n`` (or the per-seed differences between two
variants trained on the same seeds: the pairing removes what the seed does to both) give the
Student-t interval ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)``; a difference whose interval
excludes 0 is larger than the seed noise.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Student-t 0.975 quantiles by degrees of freedom (above 10: 1.96 + 2.4 / df, within 0.005)."""


def perplexity(nll_sums: Sequence[float], tokens_per_window: int) -> float:
    """``exp`` of the mean per-token NLL."""
    s = np.asarray(nll_sums, dtype=np.float64)
    return float(np.exp(s.sum() / (s.size * tokens_per_window)))


def paired_bootstrap_delta(a: Sequence[float], b: Sequence[float], tokens_per_window: int,
                           resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Tuple[float, float]:
    """Percentile interval of ``ppl(b) − ppl(a)`` over window resamples (see the module doc).
    ``a``, ``b``: per-window NLL sums on the same windows, in the same order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape and a.ndim == 1 and a.size > 0, (a.shape, b.shape)
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    scale = a.size * tokens_per_window
    deltas = np.exp(b[idx].sum(axis=1) / scale) - np.exp(a[idx].sum(axis=1) / scale)
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def seed_spread(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max of a figure over seeds."""
    v = np.asarray(values, dtype=np.float64)
    assert v.size > 0
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                min=float(v.min()), max=float(v.max()), n=int(v.size))


def seed_interval(values: Sequence[float]) -> Tuple[float, float]:
    """The 95% Student-t interval of the mean of ``values`` (one per seed; at least 2), see the module doc."""
    v = np.asarray(values, dtype=np.float64)
    assert v.ndim == 1 and v.size >= 2, v.shape
    df = v.size - 1
    t = _T_975.get(df, 1.96 + 2.4 / df)
    half = t * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def exceeds_noise(interval: Tuple[float, float]) -> bool:
    """Whether a bootstrap interval excludes zero."""
    lo, hi = interval
    return lo > 0 or hi < 0


__all__ = ["LEVEL", "RESAMPLES", "exceeds_noise", "paired_bootstrap_delta", "perplexity", "seed_interval", "seed_spread"]
