"""The torch path's staged reductions (:mod:`initdiag.recording.staging`) against the one-tensor reference."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from initdiag.recording import moments as _moments
from initdiag.recording import staging as _staging
from initdiag.recording import streams as _streams
from initdiag.recording.moments import FLOAT32_MAX, channel_view, last_samples, moments_torch, sum_error_bound
from initdiag.recording.staging import ROW, Staging


@pytest.fixture(autouse=True)
def _torch_path() -> Iterator[None]:
    """Staging is the torch path's: float32 CPU tensors would go through the compiled kernel."""
    with _moments.kernel_disabled():
        yield


def _cases() -> dict[str, tuple[torch.Tensor, int, int | None]]:
    torch.manual_seed(0)
    y = torch.randn(6, 5, 4, 3)
    y[0, 1] = 0.0
    y[2, 3, 1] = 1e-45  # float32's least subnormal: its square, ~2e-90, is a non-zero to count
    relu = torch.relu(torch.randn(64, 10))
    return {
        "contiguous": (y, 1, None),
        "channels-last": (y.contiguous(memory_format=torch.channels_last), 1, None),
        "strided": (y[:, :, ::2], 1, None),
        "capped": (y, 1, 16),
        "channels-last-dim": (y.permute(0, 2, 3, 1), 3, None),
        "one-channel": (y.reshape(-1)[::3], -1, None),
        "weight": (torch.randn(7, 3, 3, 3), -1, None),
        "linear-relu": (relu, 1, 16),
        "row-exact": (torch.randn(2, 3, ROW), 1, None),
        "bfloat16": (y.bfloat16(), 1, None),
        "float16": (y.half(), 1, None),
    }


def _reference(y: torch.Tensor, cdim: int, cap: int | None) -> tuple[torch.Tensor, int]:
    v = channel_view(last_samples(y, cdim, cap), cdim)
    return moments_torch(v), v.shape[0] * v.shape[2]


def _assert_rows_agree(got: torch.Tensor, want: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """s1 and s2 within twice :func:`sum_error_bound` (two float64 sums of the same values), counts exact."""
    c = (want.numel() - 2) // 2
    magnitude = float(y.double().abs().sum()) + float(y.double().square().sum())
    assert torch.allclose(got[:2 * c], want[:2 * c], rtol=0.0, atol=2 * sum_error_bound(n, magnitude) + 1e-300)
    assert torch.equal(got[2 * c:], want[2 * c:])


@pytest.mark.parametrize("case", list(_cases()))
def test_staged_rows_equal_the_one_tensor_reference(case: str) -> None:
    y, cdim, cap = _cases()[case]
    want, n = _reference(y, cdim, cap)
    out = torch.full((3, want.numel()), -7.0, dtype=torch.float64)
    staging = Staging()
    assert _moments.reduce(y, cdim, cap, out, 1, staging=staging) == n
    assert torch.all(out[1] == -7.0)  # nothing written before the run
    staging.run()
    _assert_rows_agree(out[1], want, y, n)
    assert torch.all(out[0] == -7.0) and torch.all(out[2] == -7.0)


def test_many_tensors_staged_together_each_get_their_own_row() -> None:
    """Every case staged into one buffer, twice (the second run reuses the cached layout and the buffer,
    whose padding must be zero again), in rows of two streams."""
    cases = list(_cases().values())
    staging = Staging()
    for _ in range(2):
        outs = []
        for y, cdim, cap in cases:
            want, n = _reference(y, cdim, cap)
            out = torch.zeros((2, want.numel()), dtype=torch.float64)
            assert _moments.reduce(y * 3.0, cdim, cap, out, 1, staging=staging) == n
            outs.append((out, *_reference(y * 3.0, cdim, cap), y * 3.0))
        staging.run()
        for out, want, n, y in outs:
            _assert_rows_agree(out[1], want, y, n)



def test_no_residue_of_a_run_reaches_the_padding_of_the_next() -> None:
    """Runs alternate between a layout whose values fill whole rows and ones that pad where those values were
    (a run squares and clamps them to <= 2^-300 in place, then zeroes its rows), and repeat each; every row
    matches the one-tensor reference, counts included. The padded tensors are all zeros, whose sums and
    counts are exactly 0 only if no residue of the last run is added."""
    g = torch.Generator().manual_seed(5)
    full = torch.randn(4, 2 * ROW, generator=g) + 2.0  # 4 channels of 2 whole rows: no padding
    padded = torch.zeros(3, 4, 37)  # 4 channels of 111 values: 17 padding each
    odd = torch.zeros(9, 5)  # 5 channels of 9 values
    staging = Staging()
    for y in (full, padded, padded, full, odd, full, full, padded, odd, odd):
        cdim = 1 if y.dim() == 3 else 0 if y is full else 1
        want, n = _reference(y, cdim, None)
        out = torch.zeros((1, want.numel()), dtype=torch.float64)
        _moments.reduce(y, cdim, None, out, 0, staging=staging)
        staging.run()
        _assert_rows_agree(out[0], want, y, n)


def test_a_full_buffer_runs_before_it_takes_more_and_a_tensor_larger_than_it_is_reduced_at_once() -> None:
    staging = Staging(capacity=4 * ROW)
    small, large = torch.randn(3, ROW), torch.randn(5, ROW)  # 3 rows, then 5 rows: more than the buffer
    outs = [torch.zeros((1, 4), dtype=torch.float64) for _ in range(3)]
    _moments.reduce(small, -1, None, outs[0], 0, staging=staging)
    _moments.reduce(small * 2, -1, None, outs[1], 0, staging=staging)  # does not fit: the first is run
    assert outs[0][0, 2] == small.numel() and outs[1][0, 2] == 0
    _moments.reduce(large, -1, None, outs[2], 0, staging=staging)  # never fits: reduced at once
    assert outs[2][0, 2] == large.numel()
    staging.run()
    for out, y in zip(outs, (small, small * 2, large), strict=True):
        _assert_rows_agree(out[0], _reference(y, -1, None)[0], y, y.numel())


def test_float64_and_saturation_counts_are_reduced_at_once() -> None:
    staging = Staging()
    y = torch.tanh(torch.randn(8, 4))
    for t, thr in ((y.double(), -1.0), (y, 0.9)):
        out = torch.zeros((1, 10), dtype=torch.float64)
        _moments.reduce(t, 1, None, out, 0, mid=0.0, thr=thr, staging=staging)
        assert torch.equal(out[0], moments_torch(channel_view(t, 1), 0.0, thr))


def test_overflow_inf_and_nan() -> None:
    """A float32 tensor's sum of squares past float32's range is inf (as :func:`moments_torch` reports it);
    inf values are non-zero; a tensor holding NaN has NaN sums and a NaN count (documented)."""
    big = torch.full((4, 2), 3e19)  # squares sum to 7.2e39 > FLOAT32_MAX
    with_inf = torch.tensor([[1.0, math.inf], [0.0, 2.0]])
    with_nan = torch.tensor([[1.0, math.nan], [0.0, 2.0]])
    staging = Staging()
    outs = [torch.zeros((1, 6), dtype=torch.float64) for _ in range(3)]
    for out, y in zip(outs, (big, with_inf, with_nan), strict=True):
        _moments.reduce(y, 1, None, out, 0, staging=staging)
    staging.run()
    assert float(big.double().square().sum()) > FLOAT32_MAX
    assert torch.equal(outs[0][0], moments_torch(channel_view(big, 1)))
    assert outs[0][0, 2:4].isinf().all()
    assert outs[1][0, 4] == 3 and outs[1][0, 3] == math.inf and outs[1][0, 2] == 1.0
    assert outs[2][0, 0] == 1.0 and outs[2][0, 2] == 1.0  # channel 0, NaN-free: [1, 0]
    assert math.isnan(outs[2][0, 1]) and math.isnan(outs[2][0, 3]) and math.isnan(outs[2][0, 4])


def test_rows_staged_for_a_buffer_that_grows_land_in_the_grown_buffer() -> None:
    stream = _streams.Stream(6, torch.device("cpu"), capacity=64)
    staging = Staging()
    ys = [torch.randn(5, 2) * (i + 1) for i in range(_streams.FIRST_ROWS + 1)]
    for y in ys:
        if stream.n >= stream.buffer.shape[0]:
            old = stream.buffer
            stream.room()
            staging.moved(old, stream.buffer)
        _moments.reduce(y, 1, None, stream.buffer, stream.n, staging=staging)
        stream.commit(0, 0, "train", 5)
    staging.run()
    rows, _ = stream.take()
    for row, y in zip(rows, ys, strict=True):
        _assert_rows_agree(row, moments_torch(channel_view(y, 1)), y, 5)


def test_the_layout_cache_is_bounded() -> None:
    staging = Staging()
    out = torch.zeros((1, 4), dtype=torch.float64)
    for n in range(1, 3 * _staging._LAYOUTS):
        _moments.reduce(torch.ones(n), -1, None, out, 0, staging=staging)
        staging.run()
        assert out[0, 2] == n
    assert len(staging._buffers[torch.device("cpu")].layouts) <= _staging._LAYOUTS


def test_a_weight_is_one_channel_of_all_its_elements_on_every_path() -> None:
    """A weight (``cdim < 0``) under the recorder's cap: the kernel reads all of it; the one-tensor torch path
    (float64 here, which staging refuses) and the staged path must too, not the first rows the cap would
    keep of a batch (a 1x1 conv's (out, in, 1, 1) weight once lost all but ceil(cap / in) of its rows)."""
    w = torch.randn(64, 32, 1, 1)
    for y in (w, w.double()):
        out = torch.zeros((1, 4), dtype=torch.float64)
        staging = Staging()
        assert _moments.reduce(y, -1, 1024, out, 0, staging=staging) == w.numel()
        staging.run()
        want = moments_torch(channel_view(y, -1))
        _assert_rows_agree(out[0], want, w, w.numel())
