"""Neurons as rows, and the near-duplicate test: the largest |cosine| between neurons against independent
random rows (the statistic the symmetry check warns on)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import special

from .verdict import Thresholds

__all__ = [
    "blocked_max_cos", "finite_rows", "live_rows", "max_cos", "max_cosine_pvalue", "native_rows", "neuron_rows",
    "projection_vectors", "projections",
]

_DEFAULT = Thresholds()


def neuron_rows(weight: np.ndarray, bias: np.ndarray | None, dtype: Any = np.float64) -> np.ndarray:
    """One row per neuron (output channel): the weight reshaped to ``(out, -1)``, the bias appended, in
    ``dtype`` (a view of the weight when that needs no copy)."""
    w = np.asarray(weight, dtype=dtype)
    rows = w.reshape(w.shape[0], -1)
    if bias is not None:
        rows = np.hstack([rows, np.asarray(bias, dtype=dtype).reshape(-1, 1)])
    return rows


def native_rows(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """:func:`neuron_rows` in float32 for weights of 32 bits or fewer (float32 holds them exactly), else
    float64: the checks read every weight once or twice, at half the memory traffic."""
    small = np.asarray(weight).dtype.itemsize <= 4 and (bias is None or np.asarray(bias).dtype.itemsize <= 4)
    return neuron_rows(weight, bias, np.float32 if small else np.float64)


@functools.lru_cache(maxsize=32)
def _null_max_cos(n: int, d: int, n_samples: int) -> np.ndarray:
    """Monte Carlo null: max |cos| among ``n`` independent N(0, I_d) rows, ``n_samples`` draws (cached)."""
    rng = np.random.default_rng([n, d, n_samples])
    out = np.empty(n_samples)
    for s in range(n_samples):
        out[s] = _max_abs_cos(rng.standard_normal((n, d)))
    return np.sort(out)


def _max_abs_cos(rows: np.ndarray, norms: np.ndarray | None = None) -> float:
    """Largest |cosine| between two different rows (the Gram matrix in float32: error ~1e-6); ``norms``: the
    rows' Euclidean norms when already known."""
    norms = np.linalg.norm(rows, axis=1) if norms is None else norms
    u = (rows * (1.0 / norms).astype(rows.dtype)[:, None]).astype(np.float32, copy=False)  # no float64 temporary
    gram = np.abs(u @ u.T)
    np.fill_diagonal(gram, 0.0)
    return float(min(1.0, gram.max()))


def max_cosine_pvalue(weight: np.ndarray, bias: np.ndarray | None, n_samples: int = 0,
                      rng: np.random.Generator | None = None, *,
                      max_rows: int = _DEFAULT.cosine_max_rows) -> tuple[float, float]:
    """Largest |cosine| between two neurons and its p-value under independent random rows.

    Statistic: ``c = max_{i<j} |<r_i, r_j>| / (|r_i| |r_j|)`` over the rows of :func:`neuron_rows`
    (non-finite and all-zero rows dropped; more than ``max_rows`` rows are subsampled with ``rng``; columns
    that are 0 in every row tested dropped, e.g. zero biases, leaving ``n`` rows of dimension ``d``).
    Null hypothesis: the rows are independent, isotropic (e.g. i.i.d. zero-mean Gaussian) vectors.
    ``n_samples = 0``: analytic, ``p = min(1, n(n-1)/2 * P(|cos| >= c))`` with
    ``cos^2 ~ Beta(1/2, (d-1)/2)`` for one pair (a union bound: valid, and tight in the small-p tail
    where decisions are made); ``n_samples > 0``: Monte Carlo, ``p = (1 + #{null >= c}) / (1 + n_samples)``
    with the null drawn once per ``(n, d)`` and cached. Returns ``(nan, nan)`` when ``n < 2`` or ``d < 2``.
    """
    return max_cos(native_rows(weight, bias), n_samples, rng, max_rows)


@functools.lru_cache(maxsize=64)
def projection_vectors(d: int) -> np.ndarray:
    """The fixed ``(d, 2)`` float64 vectors of :func:`projections`, entries in [1, 2) (seeded; cached, read-only:
    the layers of a model share a few dimensions)."""
    v = 1.0 + np.random.default_rng(20240611).random((d, 2))
    v.setflags(write=False)
    return v


def projections(rows: np.ndarray) -> np.ndarray:
    """``rows @ v`` in float64 for ``v`` = :func:`projection_vectors`: two independent positive projections of
    each row, a cache-sized block of rows at a time. A row of finite float32 (or narrower) values has finite
    projections; a row holding NaN or inf has a non-finite one; a row of zeros projects to exactly 0 (the one
    pass that :func:`live_rows` and the symmetry groups share)."""
    d = rows.shape[1]
    v = projection_vectors(d)
    step = max(1, (1 << 18) // max(d, 1))
    if not len(rows):
        return np.empty((0, 2))
    with np.errstate(over="ignore", invalid="ignore"):  # a float64 row near its max may overflow: re-read below
        return np.concatenate([rows[i:i + step].astype(np.float64) @ v for i in range(0, len(rows), step)])


def finite_rows(rows: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Whether each row is finite, from its :func:`projections` ``proj``: exact, as only the rows with a
    non-finite projection (NaN or inf in the row, or a huge finite float64 row overflowing) are read again."""
    finite = np.isfinite(proj).all(axis=1)
    if not finite.all():
        unsure = np.flatnonzero(~finite)
        finite[unsure] = np.isfinite(rows[unsure]).all(axis=1)
    return finite


def live_rows(rows: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Whether each row is finite (:func:`finite_rows`) and not all zero: a row with both projections exactly
    0 is read again (a zero row projects to 0; another does only by cancellation)."""
    live = finite_rows(rows, proj)
    zero = np.flatnonzero((proj == 0).all(axis=1))
    if zero.size:
        live[zero] = rows[zero].any(axis=1)
    return live


def max_cos(rows: np.ndarray, n_samples: int, rng: np.random.Generator | None,
             max_rows: int, proj: np.ndarray | None = None) -> tuple[float, float]:
    """:func:`max_cosine_pvalue` of the rows of :func:`neuron_rows` (copied only where rows or columns go).

    Non-finite and all-zero rows are dropped by :func:`live_rows` from their projections ``proj`` (taken
    here when not given: one pass over all rows); the rows kept are subsampled before anything else is read
    from them, and the columns dropped are those 0 in every row tested (when ``max_rows`` subsamples, the
    dimension of the rows tested)."""
    live = live_rows(rows, projections(rows) if proj is None else proj)
    if not live.all():
        rows = rows[live]
    if len(rows) > max_rows:
        rng = rng if rng is not None else np.random.default_rng(0)
        rows = rows[np.sort(rng.choice(len(rows), size=max_rows, replace=False))]
    norms = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    used = rows.any(axis=0) if len(rows) else np.ones(rows.shape[1], bool)
    if not used.all():
        rows = rows[:, used]
    n, d = rows.shape
    if n < 2 or d < 2:
        return math.nan, math.nan
    c = _max_abs_cos(rows, np.sqrt(norms))
    if n_samples <= 0:
        q = float(special.betaincc(0.5, (d - 1) / 2.0, c * c))  # Beta(1/2, (d-1)/2)'s sf, without scipy.stats' overhead
        return c, min(1.0, n * (n - 1) / 2.0 * q)
    null = _null_max_cos(n, d, n_samples)
    exceed = len(null) - int(np.searchsorted(null, c * (1 - 1e-12), side="left"))
    return c, (1 + exceed) / (1 + n_samples)


def blocked_max_cos(rows: np.ndarray, reps: np.ndarray, blocks: int, size: int, th: Thresholds,
                     rng: np.random.Generator, proj: np.ndarray | None = None) -> tuple[float, float]:
    """The cosine test over pairs within blocks only: the largest |cos| of any block, and its p-value as a
    union bound over every within-block pair, ``min(1, sum_b n_b (n_b - 1) / 2 * q)``, where each block's own
    bound is ``n_b (n_b - 1) / 2 * q`` (:func:`max_cosine_pvalue`; rows of one dimension in every block).
    ``proj``: the rows' :func:`projections`, when taken."""
    best, best_pairs, best_p, pairs = math.nan, 0.0, math.nan, 0.0
    for b in range(blocks):
        members = reps[(reps >= b * size) & (reps < (b + 1) * size)]
        c, p = max_cos(rows[members], th.mc_samples, rng, th.cosine_max_rows,
                       None if proj is None else proj[members])
        if not math.isfinite(c):
            continue
        m = min(len(members), th.cosine_max_rows)
        block_pairs = m * (m - 1) / 2.0
        pairs += block_pairs
        if not math.isfinite(best) or c > best:
            best, best_pairs, best_p = c, block_pairs, p
    if not math.isfinite(best):
        return math.nan, math.nan
    return best, min(1.0, best_p * pairs / best_pairs)
