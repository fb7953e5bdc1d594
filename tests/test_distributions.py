"""The t and normal distributions and the least-squares line of ``checks.distributions`` against scipy.stats,
which they replace on the audit's path: the same values bit for bit."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from initdiag.checks.distributions import line_fit, norm_cdf, norm_sf, t_ppf, t_sf


def test_t_and_normal_give_scipy_stats_bits() -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0, 3, 300), [0.0, -0.0, 1e-300, 40.0, -40.0, math.inf, -math.inf]])
    for df in (1, 2, 3.5, 7, 29, 1e3, 1e8):
        for x in xs:
            assert t_sf(x, df) == stats.t.sf(x, df)
        for q in (1e-12, 0.025, 0.5, 0.8, 0.975, 1 - 1e-12):
            assert t_ppf(q, df) == stats.t.ppf(q, df)
    for x in xs:
        assert norm_sf(x) == stats.norm.sf(x)
        assert norm_cdf(x) == stats.norm.cdf(x)


@pytest.mark.parametrize("case", ["random", "exact line", "constant y", "two-valued", "large"])
def test_line_fit_gives_linregress_bits(case: str) -> None:
    rng = np.random.default_rng(1)
    for n in (3, 4, 7, 30, 200):
        x = np.arange(n, dtype=np.float64) if case != "two-valued" else np.repeat([0.0, 5.0], [n - 1, 1])
        y = {"random": rng.normal(0, 1, n), "exact line": 0.5 - 1.7 * x, "constant y": np.full(n, -2.25),
             "two-valued": rng.normal(0, 1, n), "large": rng.normal(1e6, 1e3, n) + 1e4 * x}[case]
        ref, got = stats.linregress(x, y), line_fit(x, y)
        for name in ("slope", "intercept", "pvalue", "stderr"):
            a, b = float(getattr(ref, name)), getattr(got, name)
            assert a == b or (math.isnan(a) and math.isnan(b)), (case, n, name, a, b)


def test_line_fit_refuses_what_has_no_line() -> None:
    with pytest.raises(ValueError, match="3 or more points"):
        line_fit(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="x not all equal"):
        line_fit(np.ones(4), np.arange(4.0))


def test_an_audit_imports_no_scipy_stats() -> None:
    """scipy.stats takes ~1 s to import; the audit's checks use these formulas instead."""
    code = "import sys, initdiag.audit.run, initdiag.checks; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
