"""One-pass whole-tensor statistics: the compiled kernel and the torch path against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from initdiag.recording.moments import kernel_disabled, kernel_in_use
from initdiag.recording.tensor_stats import TensorStats, moments_once, tensor_moments, tensor_stats

BELOW = (2.0**-24, 2.0**-40)


def _reference(t: torch.Tensor, below: tuple[float, float]) -> TensorStats:
    """numpy, in float64 except the threshold comparisons (in the tensor's dtype, as torch compares)."""
    a = t.detach().float().numpy().astype(np.float64).ravel()
    mag = np.abs(a)
    live = mag > 0
    own = t.detach().reshape(-1).abs()  # compared in its own dtype
    under = tuple(int(((own > 0) & (own < b)).sum()) for b in below)
    return TensorStats(a.size, float(a.sum()), float((a * a).sum()), int(np.count_nonzero(a)),
                       math.nan if np.isnan(a).any() else float(mag[live].min()) if live.any() else math.inf,
                       math.inf if not np.isfinite(a).all() else float(mag.max()) if a.size else 0.0,
                       (under[0], under[1]))


def _cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(8, 16, 9, 9, generator=g) * 1e-6
    grad[grad < 0] = 0  # half zeros, as a gradient behind ReLUs
    grad[0, 0, 0, :3] = torch.tensor([3e-8, 1e-13, -2e-12])  # below both thresholds
    odd = torch.randn(37, generator=g)  # not a multiple of the kernel's lanes
    return [grad, grad.permute(0, 2, 3, 1), grad.transpose(0, 1), grad[:, ::2], odd, odd[:1],
            torch.zeros(5), torch.empty(0), torch.randn(4, 4, generator=g).to(torch.bfloat16)]


@pytest.mark.parametrize("case", range(9))
@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_tensor_stats_equal_a_numpy_reference(case: int, path: str) -> None:
    t = _cases()[case]
    with kernel_disabled() if path == "torch" else _same():
        got = tensor_stats(t, BELOW)
    want = _reference(t, BELOW)
    assert (got.n, got.nonzero, got.under) == (want.n, want.nonzero, want.under)
    assert got.least == want.least and got.top == want.top  # exact: magnitudes of the tensor's own values
    tol = 4 * max(t.numel(), 1) * 2.0**-53
    assert got.total == pytest.approx(want.total, rel=tol, abs=tol * float(np.abs(t.float().numpy()).sum()) + 1e-300)
    assert got.squares == pytest.approx(want.squares, rel=tol, abs=1e-300)


def test_non_finite_values_read_as_not_finite_on_both_paths() -> None:
    for bad, least in ((math.nan, math.nan), (math.inf, 0.5)):
        t = torch.tensor([0.0, 0.5, -2.0, bad, 1.0] * 5)
        for ctx in (_same(), kernel_disabled()):
            with ctx:
                s = tensor_stats(t)
            assert s.top == math.inf and (math.isnan(s.least) if math.isnan(least) else s.least == least)
            assert s.nonzero == 20


def test_squares_beyond_float32_range_are_inf_as_the_models_arithmetic_overflows() -> None:
    t = torch.full((4,), 3e19)
    for ctx in (_same(), kernel_disabled()):
        with ctx:
            assert tensor_stats(t).squares == math.inf and tensor_moments(t).mean == pytest.approx(3e19)
    assert tensor_stats(t.double()).squares == pytest.approx(4 * 9e38)


def test_the_kernel_takes_float32_cpu_tensors_that_fill_their_memory() -> None:
    if not kernel_in_use():
        pytest.skip("compiled kernel not in use")
    t = torch.randn(300, 200)
    with kernel_disabled():
        slow = tensor_stats(t.t(), BELOW)
    fast = tensor_stats(t.t(), BELOW)  # transposed: read in memory order
    assert (fast.nonzero, fast.least, fast.top, fast.under) == (slow.nonzero, slow.least, slow.top, slow.under)
    assert fast.squares == pytest.approx(slow.squares, rel=1e-12)


class _same:
    """A context that changes nothing (the kernel as decided at import)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_moments_once_reads_a_tensor_once_per_version() -> None:
    p = torch.nn.Parameter(torch.randn(64, 32))
    with moments_once():
        first = tensor_moments(p)
        assert tensor_moments(p) is first  # the same tensor, unchanged: not read again
        assert tensor_moments(p.detach()) is not first  # another tensor object is read on its own
        with torch.no_grad():
            p.mul_(2.0)  # an in-place write moves the version counter: read again
        again = tensor_moments(p)
    assert again.mean_sq == pytest.approx(4 * first.mean_sq, rel=1e-12)
    assert again.mean_sq == pytest.approx(float(p.detach().double().square().mean()), rel=1e-12)
    assert tensor_moments(p) is not again  # outside the block nothing is kept


def test_moments_of_an_inference_tensor_need_no_version_counter() -> None:
    with torch.inference_mode():
        t = torch.randn(32, 16)
    expected = float(t.double().square().mean())
    assert tensor_moments(t).mean_sq == pytest.approx(expected, rel=1e-12)
    with moments_once():
        assert tensor_moments(t).mean_sq == pytest.approx(expected, rel=1e-12)
