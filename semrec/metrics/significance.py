"""Paired significance of a metric difference between two methods over the same test users.

The unit is a (seed, user) pair: for every seed both methods were evaluated on the same
users (same split, same user sample), so the per-user differences ``d = m(row) - m(ref)``
are paired. The statistic is the mean over seeds of each seed's mean difference.

* :func:`paired_bootstrap`: resamples users with replacement within each seed; gives a 95%
  percentile interval and a two-sided p-value (the share of resampled statistics on the
  other side of zero, doubled, with the +1 correction so it is never exactly 0);
* :func:`paired_t_test`: the paired t-test over all (seed, user) differences (scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedResult:
    """Mean paired difference, its 95% bootstrap interval and two p-values."""

    difference: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_t_test: float
    n_pairs: int

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the bootstrap p-value is below ``alpha``."""
        return self.p_bootstrap < alpha


def _check(differences: Sequence[np.ndarray]) -> list[np.ndarray]:
    groups = [np.asarray(d, dtype=np.float64) for d in differences]
    if not groups or any(g.ndim != 1 or g.size == 0 for g in groups):
        raise ValueError("paired test: need one non-empty 1-D array of differences per seed")
    return groups


def paired_bootstrap(
    differences: Sequence[np.ndarray], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float, float]:
    """(statistic, 95% low, 95% high, two-sided p) for per-seed arrays of paired differences."""
    groups = _check(differences)
    rng = np.random.default_rng(seed)
    observed = float(np.mean([g.mean() for g in groups]))
    boot = np.zeros(resamples)
    for g in groups:
        picks = rng.integers(0, g.size, size=(resamples, g.size))
        boot += g[picks].mean(axis=1)
    boot /= len(groups)
    low, high = np.percentile(boot, [2.5, 97.5])
    below = (np.sum(boot <= 0) + 1) / (resamples + 1)
    above = (np.sum(boot >= 0) + 1) / (resamples + 1)
    return observed, float(low), float(high), float(min(1.0, 2 * min(below, above)))


def paired_t_test(differences: Sequence[np.ndarray]) -> float:
    """Two-sided p-value of the paired t-test over every (seed, user) difference."""
    pooled = np.concatenate(_check(differences))
    if np.allclose(pooled, pooled[0]):
        return 1.0 if pooled[0] == 0 else 0.0
    return float(stats.ttest_1samp(pooled, 0.0).pvalue)


def paired_test(
    differences: Sequence[np.ndarray], resamples: int = 10_000, seed: int = 0
) -> PairedResult:
    """Both tests on per-seed arrays of per-user differences (see the module docstring)."""
    observed, low, high, p_boot = paired_bootstrap(differences, resamples, seed)
    return PairedResult(
        difference=observed,
        ci_low=low,
        ci_high=high,
        p_bootstrap=p_boot,
        p_t_test=paired_t_test(differences),
        n_pairs=int(sum(np.asarray(d).size for d in differences)),
    )
