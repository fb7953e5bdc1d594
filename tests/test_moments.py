"""The one reduction: the compiled kernel and its torch twin against exact sums (math.fsum), within the
float64 summation bound the module states; how the kernel is switched and reported."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from initdiag.recording import moments, streams


def _exact(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel of a (G, C, P) view: the exactly rounded sum, sum of squares and sum of |v| (fsum of
    the float32 values widened to float64, whose squares are exact)."""
    a = v.double().numpy()
    cols = [a[:, c, :].ravel() for c in range(a.shape[1])]
    return (np.array([math.fsum(col) for col in cols]), np.array([math.fsum(col * col) for col in cols]),
            np.array([math.fsum(np.abs(col)) for col in cols]))


def _within_sum_bound(row: np.ndarray, v: torch.Tensor) -> None:
    """``row`` = [s1, s2, ...] of ``v`` within ``sum_error_bound`` of the exact sums (plus one ulp of the
    exact sum for fsum's own rounding)."""
    s1, s2, abs1 = _exact(v)
    channels, n = v.shape[1], v.shape[0] * v.shape[2]
    bound1 = np.array([moments.sum_error_bound(n, m) for m in abs1]) + np.spacing(np.abs(s1))
    bound2 = np.array([moments.sum_error_bound(n, m) for m in s2]) + np.spacing(s2)
    assert np.all(np.abs(row[:channels] - s1) <= bound1)
    assert np.all(np.abs(row[channels:2 * channels] - s2) <= bound2)


LAYOUTS = ["nchw", "nhwc", "strided", "logits", "one-channel", "odd-run"]


def _tensor(layout: str) -> tuple[torch.Tensor, int]:
    """A float32 tensor with a large common offset (cancellation in the variance) and its channel dim,
    in a layout the kernel reads without a copy."""
    g = torch.Generator().manual_seed(7)
    y = torch.randn(9, 6, 13, 11, generator=g) * 0.01 + 3.0
    y[0, 1] = 0.0
    if layout == "nhwc":
        return y.contiguous(memory_format=torch.channels_last), 1
    if layout == "strided":
        return y[:, :, 0, ::2], 1
    if layout == "logits":
        return y[:, :, 0, 0].contiguous(), 1
    if layout == "one-channel":
        return y.reshape(-1), -1
    if layout == "odd-run":
        return y[:, :, 0, :7], 1  # runs of 7 contiguous values: shorter than the kernel's lanes
    return y, 1


@pytest.fixture(params=["kernel", "torch"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test through the compiled kernel (skipped when it is not in use) and through the torch twin."""
    if request.param == "kernel" and not moments.kernel_in_use():
        pytest.skip(moments.kernel_status())
    with moments.kernel_disabled() if request.param == "torch" else contextlib.nullcontext():
        yield request.param


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reduce_is_within_the_float64_summation_bound_of_the_exact_sums(layout: str, path: str) -> None:
    y, cdim = _tensor(layout)
    assert moments.kernel_geometry(tuple(y.shape), y.stride(), cdim, None) is not None
    v = moments.channel_view(y, cdim)
    channels = v.shape[1]
    twin = moments.moments_torch(v, 3.0, 0.02).numpy()
    _within_sum_bound(twin, v)
    out = torch.zeros(1, 2 * channels + 2, dtype=torch.float64)
    moments.reduce(y, cdim, None, out, 0, mid=3.0, thr=0.02)
    _within_sum_bound(out[0].numpy(), v)
    assert out[0, -2:].tolist() == twin[-2:].tolist()  # counts: exact on both paths


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_variance_from_the_sums_is_within_the_stated_bound_despite_cancellation(layout: str, path: str) -> None:
    """E[y^2] / var ~ 1e5 here, so the bound on var is ~1e5 times the sums' relative bound."""
    y, cdim = _tensor(layout)
    v = moments.channel_view(y, cdim).double()
    channels, n = v.shape[1], v.shape[0] * v.shape[2]
    out = torch.zeros(1, 2 * channels + 2, dtype=torch.float64)
    moments.reduce(y, cdim, None, out, 0)
    s1, s2 = out[0, :channels], out[0, channels:2 * channels]
    var = (s2 / n - (s1 / n) ** 2).mean().item()
    want = v.var(dim=(0, 2), unbiased=False).mean().item()  # two-pass in float64: error ~ n u var
    second = v.square().mean().item()
    assert abs(var - want) <= moments.variance_error_bound(n, channels, second) + 4 * n * moments.UNIT_ROUNDOFF * want


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_sum_of_squares_beyond_float32_range_is_inf_on_both_paths(layout: str, path: str) -> None:
    """Values of ~1e20 are finite in float32, but their squares are not: a float32 model's own arithmetic
    overflows on them, so s2 is inf (what the divergence check reads), while s1 stays the finite sum; a
    channel whose squares stay in range is unchanged."""
    y, cdim = _tensor(layout)
    v = moments.channel_view(y, cdim)
    big = y.clone()
    moments.channel_view(big, cdim)[:, 0] *= 1e19  # one channel's values ~3e19: squares ~1e39 > 3.4e38
    out = torch.zeros(1, 2 * v.shape[1] + 2, dtype=torch.float64)
    moments.reduce(big, cdim, None, out, 0)
    channels = v.shape[1]
    assert math.isinf(out[0, channels].item()) and math.isfinite(out[0, 0].item())
    if channels > 1:
        assert torch.isfinite(out[0, channels + 1:2 * channels]).all()
    wide = moments.moments_torch(moments.channel_view(big.double(), cdim))  # a float64 model: no overflow
    assert math.isfinite(wide[channels].item())



def test_a_stream_keeps_its_last_layout_only_for_tensors_that_share_it(path: str) -> None:
    """``Stream.fill`` reuses the kernel layout it filled from last; a tensor with other strides, channel dim,
    cap or bounds, or a different tensor of the same layout, is reduced as itself (the reference:
    :func:`moments.moments_torch` of the view :func:`moments.reduce` reads), row after row of one stream."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(5, 6, 6, 6, generator=g)
    last = y.contiguous(memory_format=torch.channels_last)
    steps = [(y, 1, 64, 0.0, -1.0), (y, 1, 64, 0.0, -1.0), (y, 2, 64, 0.0, -1.0), (y, 1, 64, 0.0, -1.0),
             (y, 1, None, 0.0, -1.0), (y, 1, 64, 0.0, -1.0), (y, 1, 64, 0.0, 0.5), (y, 1, 64, 0.2, 0.5),
             (y, 1, 64, 0.0, -1.0), (last, 1, 64, 0.0, -1.0), (y, 1, 64, 0.0, -1.0),
             (torch.randn(5, 6, 6, 6, generator=g), 1, 64, 0.0, -1.0), (y[:, :, :, ::2], 1, 64, 0.0, -1.0),
             (y, 1, 64, 0.0, -1.0), (y.double(), 1, 64, 0.0, -1.0), (y, 1, 64, 0.0, -1.0), (y[:4], 1, 64, 0.0, -1.0)]
    stream = streams.Stream(2 * 6 + 2, torch.device("cpu"), 64)
    for t, cdim, cap, mid, thr in steps:
        stream.room()
        count = stream.fill(t, cdim, cap, mid, thr, {}, None)
        v = moments.channel_view(moments.last_samples(t, cdim, cap), cdim)
        want = moments.moments_torch(v, mid, thr).numpy()
        row = stream.buffer[stream.n].numpy()
        assert count == v.shape[0] * v.shape[2]
        np.testing.assert_allclose(row[:-2], want[:-2], rtol=1e-12, atol=1e-12)
        assert row[-2:].tolist() == want[-2:].tolist()
        stream.commit(0, 0, "train", count)


def test_inside_moments_once_a_stream_copies_the_row_of_an_unchanged_tensor_and_reads_any_other(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside ``moments_once`` (an audit: weights written only in place) a tensor filled again with its version
    counter unmoved gets its last row copied, the compiled kernel not called; an in-place write, another
    tensor of the same values and layout, another channel dim, or a stream emptied by ``take`` is read again.
    Outside it nothing is copied: a write through ``.data``, which moves no version counter, is seen."""
    from initdiag.recording.tensor_stats import moments_once

    reads: list[int] = []
    real = streams.kernel_row

    def counted(*a: Any) -> int:
        reads.append(1)
        return real(*a)

    monkeypatch.setattr(streams, "kernel_row", counted)
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    stream = streams.Stream(2 * 6 + 2, torch.device("cpu"), 64)

    def fill(t: torch.Tensor, cdim: int = 0) -> bool:
        """Fill the next row from ``t``; check it against the torch reference; whether the kernel ran."""
        before = len(reads)
        stream.room()
        count = stream.fill(t, cdim, None, 0.0, -1.0, {}, None)
        want = moments.moments_torch(moments.channel_view(t.detach(), cdim)).numpy()
        row = stream.buffer[stream.n, :len(want)].numpy()
        np.testing.assert_allclose(row[:-2], want[:-2], rtol=1e-12, atol=1e-12)
        assert row[-2:].tolist() == want[-2:].tolist() and count == t.numel() // t.shape[cdim]
        stream.commit(0, 0, "train", count)
        return len(reads) > before

    kernel = path == "kernel"
    with moments_once():
        assert fill(w) == kernel
        assert not fill(w) and not fill(w)  # unchanged: copied
        assert fill(torch.randn(6, 5)) == kernel  # another tensor of the same layout and version counter
        assert fill(w) == kernel and not fill(w)
        w.mul_(2.0)  # in place: the version counter moves
        assert fill(w) == kernel and not fill(w)
        assert fill(w.clone()) == kernel  # the same values and layout in another tensor
        assert fill(w) == kernel
        stream.take()
        assert fill(w) == kernel
    w.data.mul_(3.0)  # no version counter moves
    assert fill(w) == kernel and fill(w) == kernel

def test_kernel_disabled_takes_the_torch_path_and_restores_the_state_even_when_the_block_raises() -> None:
    before, status = moments.kernel_in_use(), moments.kernel_status()
    with pytest.raises(RuntimeError), moments.kernel_disabled():
        assert not moments.kernel_in_use()
        assert moments.kernel_status().endswith("torch path")
        with moments.kernel_disabled():
            assert not moments.kernel_in_use()
        assert not moments.kernel_in_use()
        raise RuntimeError
    assert (moments.kernel_in_use(), moments.kernel_status()) == (before, status)


def test_kernel_status_names_the_library_in_use_or_why_not() -> None:
    status = moments.kernel_status()
    assert status.startswith("compiled kernel: ")
    if moments.kernel_in_use():
        assert "in use (" in status and "_kernel" in status
    else:
        assert status.endswith("torch path")


def test_the_environment_variable_turns_the_kernel_off_at_import() -> None:
    code = "from initdiag.recording import moments as m; print(m.kernel_in_use()); print(m.kernel_status())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "INITDIAG_NO_FAST_KERNEL": "1"})
    assert run.stdout.splitlines() == ["False", "compiled kernel: disabled by INITDIAG_NO_FAST_KERNEL: torch path"]


def _other_builds(tmp_path: Path) -> list[ctypes.CDLL]:
    """The kernel built with ``-DINITDIAG_SCALAR_SUMS`` (plain C loops) and with ``-DINITDIAG_COUNT_CHUNK=32`` (the
    vector paths with their int32 count lanes flushed every 32 values or rows); skips without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not moments.kernel_in_use():
        pytest.skip("no C compiler, or the kernel is not in use")
    source = Path(moments.__file__).with_name("_kernel.c")
    libs = []
    for name, flag in (("scalar", "-DINITDIAG_SCALAR_SUMS"), ("flushing", "-DINITDIAG_COUNT_CHUNK=32")):
        out = tmp_path / f"{name}.so"
        subprocess.run([compiler, "-O3", "-shared", "-fPIC", flag, "-o", str(out), str(source)], check=True,
                       capture_output=True)
        libs.append(ctypes.CDLL(str(out)))
    return libs


def test_the_plain_c_build_gives_the_vectorized_builds_bits(tmp_path: Path) -> None:
    """The kernel's summation order is fixed by its code, not by the vector width: a build with
    ``-DINITDIAG_SCALAR_SUMS`` (plain C loops) and the installed build (AVX2 where the CPU has it) write the
    same bits, on every layout the kernel reads differently (runs of 16+ values with tails of 0 to 15, short
    runs of a sample's contiguous block, channels innermost in blocks of 16, of 4 and one by one, strided, one
    channel), NaN, -0.0 and zeros included; and so does a build whose vector paths flush their int32 count lanes
    every 32 values (rows), as they do every 2^28 to stay below 2^31."""
    libs = _other_builds(tmp_path)
    for lib in libs:
        lib.initdiag_moments.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 6, ctypes.c_void_p, ctypes.c_double,
                                         ctypes.c_double]
    g = torch.Generator().manual_seed(3)
    shapes = [(64, 64, 3, 3), (7, 5, 2, 3), (3, 33, 1, 31), (64, 10), (5, 7), (9, 64, 11, 11), (2, 130, 7),
              (3, 23, 6, 7), (2, 6, 8, 8), (4, 3, 1, 47), (2, 21, 5, 13)]
    for i, shape in enumerate(shapes):
        base = torch.randn(*shape, generator=g) * 3
        base[base.abs() < 0.3] = 0.0
        base.view(-1)[1] = -0.0
        if i % 2:
            base.view(-1)[-2] = math.nan
        other = base.contiguous(memory_format=torch.channels_last) if base.dim() == 4 else base.transpose(0, -1)
        for y in (base, other):
            cdim = 0 if y.dim() == 2 and y is other else 1
            for cap in (None, 16):
                geometry = moments.kernel_geometry(tuple(y.shape), y.stride(), cdim, cap)
                assert geometry is not None
                groups, channels, positions, sg, sc, sp, _, offset = geometry
                installed = torch.zeros((1, 2 * channels + 2), dtype=torch.float64)
                moments.reduce(y, cdim, cap, installed, 0, mid=0.0, thr=-1.0)
                for lib in libs:
                    plain = torch.zeros(2 * channels + 2, dtype=torch.float64)
                    assert lib.initdiag_moments(y.data_ptr() + 4 * offset, groups, channels, positions, sg, sc, sp,
                                                plain.data_ptr(), 0.0, -1.0) == 0
                    assert torch.equal(installed[0].nan_to_num(7.0), plain.nan_to_num(7.0)), (shape, y.stride(), cap)


def test_whole_tensor_stats_are_the_same_bits_in_every_build(tmp_path: Path) -> None:
    """``initdiag_abs_stats`` reads a float32 array once where AVX2 is (sums and magnitudes of each block while it
    is in L1), twice in plain C: the plain C build, and a build flushing its count lanes every 32 values, write
    the same 7 doubles as the installed build (the sums in the moments' order, the rest exact), for lengths
    around the lanes and the blocks, with zeros, -0.0, values below both thresholds, NaN and inf; and the sums
    are the moments' own bits for one channel."""
    libs = _other_builds(tmp_path)
    fn = moments._KERNEL.stats
    assert fn is not None
    for lib in libs:
        lib.initdiag_abs_stats.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                                           ctypes.c_void_p]
    g = torch.Generator().manual_seed(5)
    below = (2.0**-24, 2.0**-40)
    for i, n in enumerate((1, 15, 16, 17, 2047, 2048, 2049, 4096 + 31, 3 * 2048 + 8, 20_000)):
        x = torch.randn(n, generator=g) * 2.0 ** (i - 5)
        x[torch.rand(n, generator=g) < 0.3] = 0.0
        x[1::7] = 1e-9  # non-zero, below the first threshold
        if n > 2:
            x[n // 2] = -0.0
        if i % 3 == 1:
            x[-1] = math.nan
        if i % 3 == 2:
            x[n // 3] = -math.inf
        want = np.empty(7)
        assert fn(x.data_ptr(), n, *below, want.ctypes.data) == 0
        a = x.abs()
        assert want[5] == int(((a > 0) & (a < below[0])).sum()) > 0 or n < 2  # torch's count of them
        for lib in libs:
            got = np.empty(7)
            assert lib.initdiag_abs_stats(x.data_ptr(), n, *below, got.ctypes.data) == 0
            assert np.array_equal(np.nan_to_num(got, nan=7.0), np.nan_to_num(want, nan=7.0)), (n, got, want)
        if i % 3 == 0:  # finite: the moments' own sums, bit for bit
            row = torch.zeros((1, 4), dtype=torch.float64)
            moments.reduce(x, -1, None, row, 0)
            assert row[0, :3].tolist() == want[:3].tolist(), n
