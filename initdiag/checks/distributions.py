"""Student's t, the normal distribution and the least-squares line, from ``scipy.special``: the formulas of
``scipy.stats`` (1.17) without its import, which takes ~1.2 s on a 2-core machine, the larger part of what a
first audit in a fresh process (every ``initdiag audit``) spends before its first forward. The same values bit
for bit as ``scipy.stats.t``, ``scipy.stats.norm`` and ``scipy.stats.linregress`` (the tests compare them).
The tests that only training and experiments run (Mann-Whitney U, the binomial test) import ``scipy.stats``
where they are called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["LineFit", "line_fit", "norm_cdf", "norm_sf", "t_ppf", "t_sf"]


def t_sf(x: float, df: float) -> float:
    """``P(T > x)`` for Student's t with ``df`` degrees of freedom (``scipy.stats.t.sf``: ``stdtr(df, -x)``)."""
    return float(special.stdtr(df, -x))


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``: ``stdtrit``)."""
    return float(special.stdtrit(df, q))


def norm_cdf(x: float) -> float:
    """``Phi(x)``, the standard normal CDF (``scipy.stats.norm.cdf``: ``ndtr``)."""
    return float(special.ndtr(x))


def norm_sf(x: float) -> float:
    """``1 - Phi(x)`` without cancellation (``scipy.stats.norm.sf``: ``ndtr(-x)``)."""
    return float(special.ndtr(-x))


@dataclass(frozen=True)
class LineFit:
    """Ordinary least squares ``y = intercept + slope x``: the slope's standard error and the two-sided p-value
    of ``H0: slope = 0`` (Student's t with ``n - 2`` degrees of freedom)."""

    slope: float
    intercept: float
    pvalue: float
    stderr: float


_TINY = 1.0e-20


def line_fit(x: np.ndarray, y: np.ndarray) -> LineFit:
    """``scipy.stats.linregress(x, y)`` for at least 3 finite points with ``x`` not all equal, step for step:
    ``ssxm, ssxym, ssym`` from ``np.cov(x, y, bias=True)``, ``r = ssxym / sqrt(ssxm ssym)`` clipped to [-1, 1] (NaN
    when ``ssym = 0`` and ``ssxym = 0``), ``slope = ssxym / ssxm``, ``t = r sqrt(df / ((1 - r + 1e-20)(1 + r +
    1e-20)))``, ``p = 2 P(T_df > |t|)``, ``stderr = sqrt((1 - r^2) ssym / ssxm / df)``, ``df = n - 2``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n < 3 or len(y) != n or np.amax(x) == np.amin(x):
        raise ValueError(f"a line needs 3 or more points with x not all equal, got {n} points")
    xmean, ymean = np.mean(x, None), np.mean(y, None)
    ssxm, ssxym, _, ssym = np.cov(x, y, bias=True).flat
    if ssxm == 0.0 or ssym == 0.0:
        r = math.nan if ssxym == 0 else 0.0
    else:
        r = float(ssxym / np.sqrt(ssxm * ssym))
        r = 1.0 if r > 1.0 else -1.0 if r < -1.0 else r  # rounding beyond the bounds
    slope = ssxym / ssxm
    intercept = ymean - slope * xmean
    df = n - 2
    t = r * np.sqrt(df / ((1.0 - r + _TINY) * (1.0 + r + _TINY)))
    p = 2 * special.stdtr(df, -np.abs(t))
    stderr = np.sqrt((1 - r**2) * ssym / ssxm / df)
    return LineFit(float(slope), float(intercept), float(p), float(stderr))
