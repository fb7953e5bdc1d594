"""Accuracy comparisons between initializers: McNemar's exact test, Welch's t-test, Holm correction.

Holm's correction (:func:`holm`) is shared with the symmetry check.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..jsonable import json_safe
from .distributions import t_ppf, t_sf
from .registry import MethodNote
from .verdict import Thresholds

__all__ = [
    "MCNEMAR",
    "WELCH",
    "Comparison",
    "accuracy_summary",
    "compare_accuracies",
    "comparison_methods",
    "holm",
    "mcnemar_exact",
    "welch_t",
]

MCNEMAR = "mcnemar-exact"
WELCH = "welch-t"


def holm(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN).

    With the ``m`` finite p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``;
    rejecting ``p_adj < alpha`` keeps the family-wise error rate at most ``alpha`` under any dependence.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


@dataclass(frozen=True)
class Comparison:
    """One pairwise test between initializers ``a`` and ``b`` (a row of ``summary.json``'s ``comparisons``).

    ``p_adjusted``: Holm-adjusted over all pairs of the same ``test``; ``significant``: ``p_adjusted <
    alpha``; ``statistic``: the discordant count ``min(b01, b10)`` for McNemar, Welch's t otherwise.
    """

    a: str
    b: str
    test: str
    p_value: float
    p_adjusted: float
    significant: bool
    statistic: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/Inf -> None)."""
        return json_safe(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        """The comparison :meth:`to_json` wrote (undefined numbers come back as NaN)."""
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)
        return cls(str(data["a"]), str(data["b"]), str(data["test"]), num(data["p_value"]), num(data["p_adjusted"]),
                   bool(data["significant"]), None if data["statistic"] is None else float(data["statistic"]),
                   str(data["detail"]))


def mcnemar_exact(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> tuple[float, int, int]:
    """McNemar's exact test on paired test-set predictions of two classifiers.

    ``b01`` = #(a right, b wrong), ``b10`` = #(a wrong, b right). Null hypothesis: both classifiers
    have the same error rate, so each discordant example is equally likely to favour either:
    ``b01 ~ Binomial(b01 + b10, 1/2)``. ``p`` = two-sided exact binomial p-value (1 when no
    discordant pair). Valid with one run of each. Returns ``(p, b01, b10)``.
    """
    a = np.asarray(pred_a).ravel()
    b = np.asarray(pred_b).ravel()
    y = np.asarray(labels).ravel()
    if not (a.shape == b.shape == y.shape):
        raise ValueError(f"predictions and labels differ in length: {a.shape}, {b.shape}, {y.shape}")
    right_a, right_b = a == y, b == y
    b01 = int(np.sum(right_a & ~right_b))
    b10 = int(np.sum(~right_a & right_b))
    if b01 + b10 == 0:
        return 1.0, b01, b10
    from scipy import stats  # experiments only: an audit's checks need no scipy.stats (.distributions)

    p = float(stats.binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue)
    return min(1.0, p), b01, b10


def welch_t(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Welch's t-test (unequal variances), two-sided: ``(t, p)``.

    ``t = (mean_x - mean_y) / sqrt(s_x^2/n_x + s_y^2/n_y)`` with Welch-Satterthwaite degrees of freedom
    (as ``scipy.stats.ttest_ind(equal_var=False)``). Null hypothesis: equal mean accuracy. With zero
    variance in both groups it is undefined: ``p = 1`` when the means are equal, else ``p = 0`` (every
    run of one beat every run of the other by the same margin), with t = NaN.
    """
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return math.nan, 1.0 if a.mean() == b.mean() else 0.0
    t = float((a.mean() - b.mean()) / math.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, 2 * t_sf(abs(t), df)


def accuracy_summary(accuracies: Mapping[str, Sequence[float]], level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per initializer: ``mean``, ``sd`` (n-1), ``ci_low``/``ci_high`` (``mean -+ t_{(1+level)/2, n-1} sd/sqrt(n)``,
    None for n < 2) and ``n``."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in accuracies.items():
        v = np.asarray(values, np.float64)
        n = len(v)
        mean = float(v.mean()) if n else math.nan
        sd = float(v.std(ddof=1)) if n >= 2 else None
        low = high = None
        if sd is not None:
            half = t_ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
            low, high = mean - half, mean + half
        out[name] = {"mean": mean, "sd": sd, "ci_low": low, "ci_high": high, "n": n}
    return out


def compare_accuracies(predictions: Mapping[str, Sequence[np.ndarray]], labels: np.ndarray,
                       accuracies: Mapping[str, Sequence[float]], alpha: float = 0.05) -> tuple[Comparison, ...]:
    """Every pair of initializers: McNemar on the first seed's predictions; Welch's t with >= 2 seeds each.

    Holm correction across pairs within each test; a difference is significant when its adjusted
    p-value is below ``alpha``. Pairs are in the order of the mapping's keys.
    """
    names = list(dict.fromkeys([*predictions, *accuracies]))
    rows: list[tuple[str, str, str, float, float | None, str]] = []
    for a, b in itertools.combinations(names, 2):
        pa, pb = predictions.get(a) or (), predictions.get(b) or ()
        if len(pa) and len(pb):
            p, b01, b10 = mcnemar_exact(pa[0], pb[0], labels)
            acc_a = float(np.mean(np.asarray(pa[0]) == np.asarray(labels)))
            acc_b = float(np.mean(np.asarray(pb[0]) == np.asarray(labels)))
            rows.append((a, b, MCNEMAR, p, float(min(b01, b10)),
                         f"test accuracy {acc_a:.4f} vs {acc_b:.4f}; {b01} examples only {a} got right, "
                         f"{b10} only {b}"))
        xa, xb = accuracies.get(a) or (), accuracies.get(b) or ()
        if len(xa) >= 2 and len(xb) >= 2:
            t, p = welch_t(xa, xb)
            rows.append((a, b, WELCH, p, t if math.isfinite(t) else None,
                         f"mean accuracy {np.mean(xa):.4f} (n={len(xa)}) vs {np.mean(xb):.4f} (n={len(xb)})"))
    adjusted = np.full(len(rows), math.nan)
    for test in (MCNEMAR, WELCH):
        idx = [i for i, r in enumerate(rows) if r[2] == test]
        if idx:
            adjusted[idx] = holm([rows[i][3] for i in idx])
    return tuple(Comparison(a, b, test, p, float(q), bool(q < alpha), stat, detail)
                 for (a, b, test, p, stat, detail), q in zip(rows, adjusted, strict=True))


def comparison_methods(th: Thresholds) -> tuple[MethodNote, ...]:
    """The methods section's entries for the accuracy comparisons between initializers."""
    level = f"{1 - th.alpha:.0%}"
    return (
        MethodNote(
            "comparison", "Accuracy comparisons: McNemar's exact test",
            "For every pair of initializers trained on the same data, the test-set predictions of the first seed "
            "are paired: b01 examples only the first got right, b10 only the second. Valid with one run each. "
            "p-values are Holm-adjusted across pairs.",
            "both have the same error rate: b01 ~ Binomial(b01 + b10, 1/2).",
            f"significant when the Holm-adjusted p < {th.alpha:g}.",
        ),
        MethodNote(
            "comparison", "Accuracy comparisons: Welch's t-test",
            f"With 2 or more seeds, each initializer's mean test accuracy with a t-based {level} confidence "
            "interval, and Welch's unequal-variance t-test for every pair, Holm-adjusted across pairs.",
            "equal mean accuracy.",
            f"significant when the Holm-adjusted p < {th.alpha:g}.",
        ),
    )
