"""The signal-propagation theory engine (``initdiag.theory.gauss``) against independent references.

References: closed forms (ReLU moments, the He / Xavier / PyTorch-default / LeCun gain table, exact Gaussian
moments of piecewise polynomials via scipy.stats), scipy's adaptive quadrature of numpy implementations,
Monte-Carlo estimates with 2e6 float64 normal samples and central differences for phi', the small-q Taylor
series and 1 / (2 l) asymptotics of tanh, and measured profiles of actual torch networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as P
from scipy import integrate, special, stats
from torch import nn
from torch.nn import functional as F

from initdiag.theory.activations import ACTIVATION_FUNCTIONS, ActivationSpec, activation_function, as_activation
from initdiag.theory.gauss import (
    ChainProfile,
    LayerTheory,
    asymptotic_regime,
    batchnorm_relu_gradient_gain,
    chi,
    gaussian_moments,
    late_gain,
    length_map,
    normalized,
    propagate_chain,
    propagate_stream,
    residual_step,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # much faster on a small shared machine

N = 512  # fan_in = fan_out for the gain table
INF = math.inf


# --- closed forms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [0.01, 0.3, 1.0, 7.5])
@pytest.mark.parametrize("phi", ["relu", nn.ReLU(), torch.relu, lambda x: x.clamp(min=0.0)])
def test_relu_moments_are_exact(phi: object, q: float) -> None:
    m = gaussian_moments(phi, q)  # type: ignore[arg-type]
    assert m.second == pytest.approx(q / 2, rel=1e-12)
    assert m.slope_second == pytest.approx(0.5, rel=1e-12)
    assert m.mean == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-12)
    assert m.variance == pytest.approx(q / 2 - q / (2 * math.pi), rel=1e-12)


@pytest.mark.parametrize(("var_w", "phi", "gain"), [
    (2.0 / N, "relu", 1.0),  # He (Kaiming normal, fan_in)
    (2.0 / (N + N), "relu", 0.5),  # Xavier, square layer
    ((1.0 / math.sqrt(N)) ** 2 / 3.0, "relu", 1.0 / 6.0),  # PyTorch default U(-a, a), a = 1 / sqrt(fan_in)
    (1.0 / N, "linear", 1.0),  # LeCun + linear
])
def test_classic_gain_table(var_w: float, phi: str, gain: float) -> None:
    layer = LayerTheory.from_variance(var_w, N, N, phi_before=phi)
    for q in (0.2, 1.0, 3.0):
        assert length_map(phi, q, layer.sigma_w2_in) / q == pytest.approx(gain, rel=1e-12)
        assert chi(phi, q, layer.sigma_w2_out) == pytest.approx(gain, rel=1e-12)  # E[phi'^2] = E[phi^2] / q here


# --- exact piecewise-polynomial and adaptive-quadrature references -------------------------------------------

PIECES: dict[str, list[tuple[float, float, list[float]]]] = {  # (a, b, coefficients in x, low to high)
    "relu6": [(-INF, 0, [0]), (0, 6, [0, 1]), (6, INF, [6])],
    "hardtanh": [(-INF, -1, [-1]), (-1, 1, [0, 1]), (1, INF, [1])],
    "hardsigmoid": [(-INF, -3, [0]), (-3, 3, [0.5, 1 / 6]), (3, INF, [1])],
    "hardswish": [(-INF, -3, [0]), (-3, 3, [0, 0.5, 1 / 6]), (3, INF, [0, 1])],
    "leaky_relu": [(-INF, 0, [0, 0.01]), (0, INF, [0, 1])],
}


def _z_moments(lo: float, hi: float, kmax: int) -> list[float]:
    """E[z^k 1{lo < z < hi}], z ~ N(0, 1), k = 0..kmax: M_k = (k-1) M_{k-2} + lo^{k-1} pdf(lo) - hi^{k-1} pdf(hi)."""
    def edge(t: float, k: int) -> float:
        return 0.0 if math.isinf(t) else t**k * float(stats.norm.pdf(t))
    m = [float(stats.norm.cdf(hi) - stats.norm.cdf(lo)), edge(lo, 0) - edge(hi, 0)]
    for k in range(2, kmax + 1):
        m.append((k - 1) * m[k - 2] + edge(lo, k - 1) - edge(hi, k - 1))
    return m


def _piecewise_expectations(name: str, q: float) -> tuple[float, float, float]:
    """Exact (E[phi], E[phi^2], E[phi'^2]) of a piecewise polynomial at x ~ N(0, q)."""
    s = math.sqrt(q)

    def expect(transform: Callable[[np.ndarray], np.ndarray]) -> float:
        total = 0.0
        for a, b, coef in PIECES[name]:
            c = np.atleast_1d(transform(np.asarray(coef, dtype=float)))
            moments = _z_moments(a / s, b / s, len(c) - 1)
            total += sum(float(ck) * s**k * moments[k] for k, ck in enumerate(c))
        return total

    return expect(lambda c: c), expect(lambda c: P.polymul(c, c)), expect(lambda c: P.polymul(P.polyder(c),
                                                                                            P.polyder(c)))


@pytest.mark.parametrize("name", sorted(PIECES))
def test_kinked_activations_match_exact_piecewise_moments(name: str) -> None:
    for q in (1e-3, 0.1, 1.0, 4.0, 37.0, 1e3, 1e4):
        mean, second, slope = _piecewise_expectations(name, q)
        m = gaussian_moments(name, q)
        assert m.mean == pytest.approx(mean, rel=1e-10, abs=1e-12 * math.sqrt(second))
        assert m.second == pytest.approx(second, rel=1e-10)
        # hardsigmoid: torch's backward multiplies by 1/6 rounded to float32 (6e-8 relative)
        assert m.slope_second == pytest.approx(slope, rel=1e-7 if name == "hardsigmoid" else 1e-10)


_SELU_L, _SELU_A = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _npsig(x: float) -> float:
    return float(special.expit(x))


NUMPY_REFS: dict[str, tuple[Callable[[float], float], Callable[[float], float], tuple[float, ...]]] = {
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x), (0.0,)),
    "selu": (lambda x: _SELU_L * (x if x > 0 else _SELU_A * math.expm1(x)),
             lambda x: _SELU_L * (1.0 if x > 0 else _SELU_A * math.exp(x)), (0.0,)),
    "softsign": (lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2, (0.0,)),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2, ()),
    "sigmoid": (_npsig, lambda x: _npsig(x) * (1 - _npsig(x)), ()),
    "gelu": (lambda x: x * float(special.ndtr(x)), lambda x: float(special.ndtr(x)) + x * float(stats.norm.pdf(x)), ()),
    "silu": (lambda x: x * _npsig(x), lambda x: _npsig(x) * (1 + x * (1 - _npsig(x))), ()),
    "softplus": (lambda x: float(np.logaddexp(0.0, x)), _npsig, ()),
}


def _quad_reference(name: str, q: float) -> tuple[float, float, float]:
    f, df, kinks = NUMPY_REFS[name]
    s = math.sqrt(q)
    points = sorted({0.0, *(k / s for k in kinks), *(c / s for c in (-8, -4, -2, -1, -0.5, 0.5, 1, 2, 4, 8))})
    points = [p for p in points if abs(p) < 13]

    def e(g: Callable[[float], float]) -> float:
        return integrate.quad(lambda z: g(s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -13, 13,
                              points=points, limit=500, epsabs=1e-300, epsrel=1e-13)[0]

    return e(f), e(lambda x: f(x) ** 2), e(lambda x: df(x) ** 2)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("name", sorted(NUMPY_REFS))
def test_moments_match_adaptive_quadrature_from_tiny_to_huge_q(name: str) -> None:
    for q in (1e-3, 0.5, 1.0, 3.0, 20.0, 500.0):
        mean, second, slope = _quad_reference(name, q)
        m = gaussian_moments(name, q)
        assert m.mean == pytest.approx(mean, rel=1e-9, abs=1e-9 * math.sqrt(second))
        assert m.second == pytest.approx(second, rel=1e-9)
        assert m.slope_second == pytest.approx(slope, rel=1e-9)


# --- Monte-Carlo, every registered activation ----------------------------------------------------------------

@cache
def _normal_sample() -> torch.Tensor:
    return torch.randn(2_000_000, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)


def _mc_check(phi: Callable[[torch.Tensor], torch.Tensor], q: float, k: float = 5.0) -> None:
    """Quadrature within k Monte-Carlo standard errors of E[phi], E[phi^2], E[phi'^2] over 2e6 float64 normal
    samples, phi' by central differences (independent of autograd; phi itself as the mean of the two sides,
    off by h^2 phi'' / 2 ~ 1e-12). Chunked so that each pass stays in cache."""
    h, sums = 1e-6, torch.zeros(3, 2, dtype=torch.float64)
    with torch.no_grad():
        for part in torch.split(_normal_sample(), 1 << 16):
            x = part * math.sqrt(q)
            above, below = phi(x + h).to(torch.float64), phi(x - h).to(torch.float64)
            y, dy = (above + below) * 0.5, (above - below) * (0.5 / h)
            samples = torch.stack((y, y * y, dy * dy))
            sums[:, 0] += samples.sum(1)
            sums[:, 1] += (samples * samples).sum(1)
    n = _normal_sample().numel()
    estimates = sums[:, 0] / n
    errors = ((sums[:, 1] / n - estimates**2).clamp(min=0.0) / n).sqrt()
    m = gaussian_moments(phi, q)
    for got, estimate, se in zip((m.mean, m.second, m.slope_second), estimates.tolist(), errors.tolist(), strict=True):
        assert abs(got - estimate) <= k * se + 1e-8 * max(1.0, abs(estimate)), (got, estimate, se)


@pytest.mark.parametrize("name", sorted(ACTIVATION_FUNCTIONS))
def test_every_registered_activation_matches_monte_carlo(name: str) -> None:
    for q in (0.1, 1.0, 4.0):
        _mc_check(activation_function(name), q)


class QuickGELU(nn.Module):
    """A user's own elementwise module (the sigmoid approximation of GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@pytest.mark.parametrize("phi", [QuickGELU(), lambda x: torch.where(x > 0, x, 0.1 * torch.expm1(x))],
                         ids=["module", "lambda"])
def test_arbitrary_callables_match_monte_carlo(phi: Callable[[torch.Tensor], torch.Tensor]) -> None:
    for q in (0.1, 1.0, 4.0):
        _mc_check(phi, q)
        assert gaussian_moments(phi, q).method == "split"


def test_parameters_and_modules_resolve_to_the_registry() -> None:
    assert as_activation(nn.GELU("tanh")) == activation_function("gelu", approximate="tanh")
    assert as_activation(nn.ReLU6()) == activation_function("relu6")  # not its base class nn.Hardtanh
    assert as_activation(nn.Hardtanh(-2.0, 0.5)) == activation_function("hardtanh", min_val=-2.0, max_val=0.5)
    assert as_activation(nn.PReLU()) == ActivationSpec("prelu", (("negative_slope", 0.25),))
    assert as_activation(QuickGELU()) is None
    assert gaussian_moments(nn.LeakyReLU(0.2), 2.0).second == pytest.approx((1 + 0.04) * 2.0 / 2, rel=1e-12)
    spec = activation_function("softplus", beta=4.0)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    assert torch.allclose(spec(x), F.softplus(x, beta=4.0))
    for q in (0.05, 2.0):
        _mc_check(spec, q)
    with pytest.raises(KeyError, match="unknown activation 'swish2'"):
        activation_function("swish2")
    with pytest.raises(KeyError):
        gaussian_moments("ReLU", 1.0)
    with pytest.raises(ValueError, match="takes no parameter alpha"):
        activation_function("relu", alpha=1.0)
    with pytest.raises(ValueError, match="q must be"):
        gaussian_moments("tanh", -1.0)


def test_q_zero_and_grad_modes() -> None:
    assert gaussian_moments("sigmoid", 0.0) == pytest.approx(gaussian_moments(torch.sigmoid, 0.0))
    m = gaussian_moments("sigmoid", 0.0)
    assert (m.mean, m.second, m.variance, m.slope_second) == pytest.approx((0.5, 0.25, 0.0, 1 / 16), rel=1e-12)
    assert gaussian_moments("tanh", 0.0).slope_second == pytest.approx(1.0, rel=1e-12)
    assert gaussian_moments(lambda x: torch.relu(x), 0.0).slope_second == 0.5  # the q -> 0 limit, as "relu"
    assert gaussian_moments("selu", 1e-14).slope_second == pytest.approx(gaussian_moments("selu", 0.0).slope_second)
    with torch.no_grad():
        assert gaussian_moments(QuickGELU(), 0.7).slope_second > 0
    with torch.inference_mode():
        assert gaussian_moments(lambda x: torch.tanh(x), 0.7).slope_second > 0
    assert gaussian_moments("tanh", 0.123) is gaussian_moments("tanh", 0.123)  # cached


# --- tanh: Taylor series, polynomial vs geometric decay --------------------------------------------------------

def test_tanh_small_q_taylor_series() -> None:
    for q in (1e-4, 1e-3, 1e-2):
        # E[tanh(x)^2] = q - 2 q^2 + 17/3 q^3 - ..., from tanh^2 x = x^2 - 2/3 x^4 + 17/45 x^6 and E[x^2k]
        assert abs(gaussian_moments("tanh", q).second - (q - 2 * q * q)) <= 6 * q**3


def test_tanh_length_map_decays_polynomially_at_sigma_w2_one_and_geometrically_below() -> None:
    depth = 1000
    critical = propagate_chain([LayerTheory(1.0, 1.0, phi_before="tanh")] * depth, 1.0)
    assert critical.forward[-1] * depth == pytest.approx(0.5, rel=0.2)  # q_l ~ 1 / (2 l)
    assert late_gain(critical) == pytest.approx(1.0, abs=0.01)
    assert asymptotic_regime(critical) == "subgeometric"
    ordered = propagate_chain([LayerTheory(0.5, 0.5, phi_before="tanh")] * 200, 1.0)
    assert late_gain(ordered) < 0.6
    assert asymptotic_regime(ordered) == "geometric-decay"
    assert late_gain(ordered, direction="backward") < 0.6


# --- chains ---------------------------------------------------------------------------------------------------

def test_he_relu_chain_is_flat_and_xavier_relu_halves() -> None:
    depth, q0 = 30, 1.7
    he = propagate_chain([LayerTheory.from_variance(2.0 / N, N, N, phi_before="relu")] * depth, q0)
    assert max(abs(q - q0) for q in he.forward) < 1e-9
    assert max(abs(g - 1.0) for g in he.backward) < 1e-9
    xavier = propagate_chain([LayerTheory.from_variance(1.0 / N, N, N, phi_before="relu")] * depth, q0)
    assert xavier.forward == pytest.approx([q0 * 2.0 ** -(i + 1) for i in range(depth)], rel=1e-12)
    assert xavier.backward == pytest.approx([2.0 ** -(depth - 1 - i) for i in range(depth)], rel=1e-12)
    assert xavier.forward_gains == pytest.approx([0.5] * depth) and xavier.backward_gains == pytest.approx([0.5] * 29)
    assert late_gain(xavier) == pytest.approx(0.5) and asymptotic_regime(xavier) == "geometric-decay"
    assert late_gain(xavier, direction="backward") == pytest.approx(0.5)
    assert late_gain([1.0, 2.0, 4.0, 8.0]) == pytest.approx(2.0) and asymptotic_regime([3.0] * 5) == "subgeometric"


def test_chain_predicts_a_real_tanh_xavier_mlp_forward_and_backward() -> None:
    width, depth, batch = 1024, 20, 4096
    gen = torch.Generator().manual_seed(0)
    weights = [nn.init.xavier_normal_(torch.empty(width, width), generator=gen) for _ in range(depth)]
    x = torch.randn(batch, width, generator=gen, requires_grad=True)
    v = torch.randn(batch, width, generator=gen)  # dL/dout for loss = (out * v).sum()
    outputs, h = [], x
    for i, w in enumerate(weights):
        h = (h if i == 0 else torch.tanh(h)) @ w.T
        h.retain_grad()
        outputs.append(h)
    (h * v).sum().backward()
    layers = [LayerTheory.from_variance(2.0 / (width + width), width, width, phi_before=None if i == 0 else "tanh")
              for i in range(depth)]
    profile = propagate_chain(layers, x.detach().pow(2).mean().item())
    forward = [y.detach().pow(2).mean().item() for y in outputs]
    backward = [y.grad.pow(2).mean().item() / v.pow(2).mean().item() for y in outputs]  # type: ignore[union-attr]
    assert forward == pytest.approx(profile.forward, rel=0.10)
    assert backward == pytest.approx(profile.backward, rel=0.15)
    assert forward[-1] < 0.05 and backward[0] < 0.05  # the profiles do move: q_20 ~ 1/40, tanh' shrinks g


# --- residual streams and normalization ------------------------------------------------------------------------

def test_residual_streams_grow_exponentially_unnormalized_and_linearly_normalized() -> None:
    depth = 12
    assert propagate_stream([1.0] * depth, 1.0, [False] * depth) == pytest.approx([2.0**i for i in range(depth + 1)])
    linear = propagate_stream([1.0] * depth, 1.0, [True] * depth, 1.0)
    assert linear == pytest.approx([1.0 + i for i in range(depth + 1)])
    mixed = propagate_stream([0.5, 9.0, 0.0], 2.0, [False, True, False], [7.0, 0.25, 7.0])
    assert mixed == pytest.approx((2.0, 3.0, 3.25, 3.25))  # a Fixup-style zero branch keeps the stream
    assert residual_step(1.5, 0.25) == 1.75
    assert normalized(17.0) == 1.0 and normalized(0.3, gamma2=4.0, beta2=0.5) == 4.5
    assert normalized(1.0, eps=1.0) == 0.5 and normalized(0.0, beta2=0.2) == 0.2
    with pytest.raises(ValueError):
        propagate_stream([1.0], 1.0, [True, False])


def test_residual_stream_matches_real_unnormalized_resnets() -> None:
    width, blocks, batch, nets = 2048, 4, 128, 3
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(batch, width, generator=gen)
    measured = torch.zeros(blocks + 1)
    for _ in range(nets):  # the stream's shared (mean) direction makes single nets noisy: average a few
        x = x0
        measured[0] += x.pow(2).mean() / nets
        for block in range(blocks):  # pre-activation block x + W2 relu(W1 relu(x)), He init: branch gain 1
            w1, w2 = (torch.randn(width, width, generator=gen) * math.sqrt(2.0 / width) for _ in range(2))
            x = x + torch.relu(torch.relu(x) @ w1.T) @ w2.T
            measured[block + 1] += x.pow(2).mean() / nets
    assert measured.tolist() == pytest.approx(propagate_stream([1.0] * blocks, measured[0].item(), [False] * blocks),
                                              rel=0.10)


def test_batchnorm_relu_gradient_grows_by_pi_over_pi_minus_one() -> None:
    width, depth, batch = 512, 16, 1024
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=gen)
    v = torch.randn(batch, width, generator=gen)
    pre, h = [], x
    for i in range(depth):  # Linear -> BatchNorm (train mode, gamma = 1, beta = 0) -> ReLU, no skips
        y = (h if i == 0 else torch.relu(h)) @ (torch.randn(width, width, generator=gen) / math.sqrt(width)).T
        y = y.detach().requires_grad_(True) if i == 0 else y
        y.retain_grad()
        pre.append(y)
        h = (y - y.mean(0)) / y.var(0, unbiased=False).add(1e-5).sqrt()
    (h * v).sum().backward()
    grads = [y.grad.pow(2).mean().item() for y in pre]  # type: ignore[union-attr]
    steady = (grads[1] / grads[-1]) ** (1.0 / (depth - 2))  # per layer, away from the first layer's input
    assert steady == pytest.approx(batchnorm_relu_gradient_gain(), rel=0.03)
    assert batchnorm_relu_gradient_gain() == pytest.approx(1.4669422, rel=1e-7)


def test_chain_profile_fields() -> None:
    p = propagate_chain([LayerTheory(2.0, 3.0, 0.1), LayerTheory(1.0, 4.0, 0.0, "linear")], 1.0)
    assert isinstance(p, ChainProfile)
    assert p.forward == pytest.approx((2.1, 2.1)) and p.backward == pytest.approx((4.0, 1.0))
    assert p.forward_gains == pytest.approx((2.1, 1.0)) and p.backward_gains == pytest.approx((4.0,))
