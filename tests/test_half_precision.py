"""Models in bfloat16 and float16 audit and record: the statistics are accumulated in float64 whatever the
model's dtype, they agree with the same model in float32 within the half type's rounding, and the precision
check judges the model's own dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import initdiag
from initdiag import Recorder


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize(("dtype", "name", "tol"), [(torch.bfloat16, "bfloat16", 0.05),
                                                    (torch.float16, "float16", 0.01)])
def test_a_half_precision_model_audits_like_its_float32_self(dtype: torch.dtype, name: str, tol: float) -> None:
    full = _mlp()
    half = _mlp().to(dtype)
    a = initdiag.audit(full, input_shape=(32,))
    b = initdiag.audit(half, input_shape=(32,))
    assert half[0].weight.dtype == dtype  # the model is left in its dtype
    fa, fb = a.runs[0].frame, b.runs[0].frame
    assert fb["value"].dtype == "float64"
    pick = (fa.kind == "forward") & (fa.stat == "var")
    va = fa[pick].groupby("layer", observed=True)["value"].mean()
    vb = fb[(fb.kind == "forward") & (fb.stat == "var")].groupby("layer", observed=True)["value"].mean()
    assert (vb / va).sub(1).abs().max() < tol * 4  # rounding of weights, inputs and every product
    precision = next(v for v in b.verdicts if v.check == "precision")
    assert precision.details["dtype"] == name and f"Judged for {name}." in precision.message
    assert b.passed


def test_the_recorder_accumulates_a_bfloat16_loop_in_float64() -> None:
    model = _mlp().to(torch.bfloat16)
    x = torch.randn(16, 32).to(torch.bfloat16)
    with Recorder(model, every=1) as rec:
        for _ in range(3):
            model(x).float().square().mean().backward()
    frame = rec.frame()
    y = model[0](x).detach().double()
    got = frame[(frame.layer == "0") & (frame.kind == "forward") & (frame.stat == "var") & (frame.step == 0)]
    assert float(got["value"].iloc[0]) == pytest.approx(float(y.var(0, unbiased=False).mean()), rel=1e-6)
