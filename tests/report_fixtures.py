"""A fixed, hand-built ExperimentResult for the report tests: 2 runs x 5 layers (3 Linear) x 6 steps.

Every number is a formula of the layer and step, so the result (and the rendered report) never changes.
``fixed_result(evil=True)`` names a layer and an initializer with HTML/script payloads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest

from initdiag import cli
from initdiag.checks import Comparison, RunAnalysis, RunEvidence, TheoryRow, Verdict, theory_profiles
from initdiag.config import ExperimentConfig
from initdiag.data import DataProvenance
from initdiag.initializers import Initializer, InitSpec
from initdiag.jsonable import run_name
from initdiag.models import ModelSpec
from initdiag.report import ReportContext, build_context
from initdiag.report.context import Method
from initdiag.results import ExperimentResult, RunResult
from initdiag.series import FRAME_COLUMNS
from initdiag.structure import LayerInfo
from initdiag.training import EpochStats

EVIL_LAYER = "<script>alert(1)</script>"
EVIL_LABEL = '"><img src=x onerror=alert(1)>'
STEPS = 6
STEPS_PER_EPOCH = 3


@dataclass(frozen=True)
class LabelSpec:
    """Stands in for an InitSpec whose label is arbitrary text (InitSpec only takes registered names)."""

    name: str
    label: str

    @property
    def initializer(self) -> Initializer:
        return InitSpec(self.name).initializer

    @property
    def resolved(self) -> dict[str, float]:
        return InitSpec(self.name).resolved


def _layers(evil: bool) -> tuple[LayerInfo, ...]:
    mid = EVIL_LAYER if evil else "fc2"
    return (
        LayerInfo("fc1", "fc1", "Linear", "weight", 0, "relu", (16, 784)),
        LayerInfo("relu1", "relu1", "ReLU", "activation", 0, "relu", None),
        LayerInfo(mid, mid, "Linear", "weight", 1, "relu", (16, 16)),
        LayerInfo("relu2", "relu2", "ReLU", "activation", 1, "relu", None),
        LayerInfo("head", "head", "Linear", "weight", 2, "linear", (10, 16)),
    )


def _frame(run: str, label: str, seed: int, layers: tuple[LayerInfo, ...], scale: float) -> pd.DataFrame:
    """Forward/backward/weight statistics: the variance falls by ``scale`` per weight layer (0: zero)."""
    rows = []
    for step in range(STEPS):
        epoch = 1 + step // STEPS_PER_EPOCH
        for layer in layers:
            base = scale ** layer.depth if scale > 0 else 0.0
            fwd = base * (1.0 + 0.05 * step) * (0.5 if layer.role == "activation" else 1.0)
            bwd = (scale ** (2 - layer.depth) if scale > 0 else 0.0) * 1e-4 * (1.0 + 0.1 * step)
            stats = [("forward", "var", fwd), ("forward", "mean_sq", 0.1 * fwd), ("forward", "zero_frac",
                     0.5 if layer.role == "activation" else 0.0), ("backward", "var", bwd)]
            if layer.role == "activation":
                stats.append(("forward", "dead_frac", 0.0 if scale > 0 else 1.0))
            if layer.role == "weight":
                stats.append(("weight", "var", 2.0 / 16 if scale > 0 else 0.0))
            rows += [(run, label, seed, epoch, step, "train", layer.name, layer.depth, layer.module, kind, stat,
                      value) for kind, stat, value in stats]
    rows.append((run, label, seed, 0, -1, "init", layers[0].name, 0, "Linear", "forward", "var", 123.0))
    frame = pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))
    for column in ("run", "initializer", "phase", "module", "kind", "stat"):
        frame[column] = frame[column].astype("category")
    frame["layer"] = pd.Categorical(frame["layer"], categories=[la.name for la in layers])
    return frame


def _verdicts(layers: tuple[LayerInfo, ...], zero: bool) -> tuple[Verdict, ...]:
    names = tuple(la.name for la in layers if la.role == "weight")
    if not zero:
        return (
            Verdict("signal", "forward", "pass", (), 0.42, {"gain": 1.02, "gain_low": 0.9, "gain_high": 1.1},
                    "Forward: the variance stays within the 100x threshold.", None),
            Verdict("signal", "backward", "pass", (), 0.37, {"gain": 0.98}, "Backward: within threshold.", None),
            Verdict("symmetry", None, "pass", (), 0.81, {"max_cosine": 0.21}, "No duplicate neurons.", None),
            Verdict("dead", None, "warn", (names[1],), None, {"dead_fraction": 0.55, "nan_effect": float("nan")},
                    f"55% of the units of layer '{names[1]}' never activate.", "Use `he` for ReLU layers.",
                    phase="final"),
            Verdict("diverged", None, "pass", (), None, {"step": None}, "Everything stayed finite.", None,
                    phase="training"),
        )
    return (
        Verdict("signal", "forward", "fail", names, None, {"gain": 0.0, "change": float("inf")},
                f"Forward: no signal (variance 0) in 3 of 3 layers, starting at layer '{names[0]}'.",
                "ReLU layers: use `he`", outcome="no_signal"),
        Verdict("signal", "backward", "fail", names, None, {"gain": None},
                "Backward: no signal in 3 of 3 layers.", "ReLU layers: use `he`", outcome="no_signal"),
        Verdict("symmetry", None, "fail", names, 1e-320, {"identical_groups": 3.0},
                "Every neuron of each layer is identical: they get identical gradients forever.",
                "Break the symmetry with a random initializer such as `he`."),
        Verdict("dead", None, "fail", ("relu1", "relu2"), None, {"dead_fraction": 1.0},
                "100% of the ReLU units output 0 for every input.", "Use `he` for ReLU layers."),
        Verdict("diverged", None, "pass", (), None, {"step": None}, "Everything stayed finite.", None,
                phase="training"),
    )


def _run(spec: InitSpec | LabelSpec, seed: int, layers: tuple[LayerInfo, ...], scale: float, accs: list[float],
         diverged: int | None = None) -> RunResult:
    label = spec.label
    name = run_name(label, seed)
    history = tuple(EpochStats(e + 1, 2.3 - 0.5 * a, 2.2 - 0.6 * a, a, 1.5) for e, a in enumerate(accs))
    zero = scale == 0
    theory = (TheoryRow(label, "ReLU", "forward", 0.0 if zero else 1.0, None if zero else 0.97, None if zero else 0.9,
                        None if zero else 1.05, "fan_in x Var(W) x c per layer (c = 1/2 ReLU, 1 linear)"),)
    frame = _frame(name, label, seed, layers, scale)
    variances = {la.module_name: spec.initializer.variance(la.weight_shape, spec.resolved) for la in layers
                 if la.weight_shape is not None}
    evidence = RunEvidence(name, label, frame, layers, {}, {}, np.zeros(1), weight_vars=variances)
    return RunResult(
        name=name, spec=cast(InitSpec, spec), seed=seed, history=history, test_accuracy=accs[-1],
        test_loss=history[-1].test_loss,
        predictions=np.zeros(20, dtype=np.int64), step_losses=np.linspace(2.3, 1.0, STEPS),
        frame=frame, layers=layers,
        analysis=RunAnalysis(_verdicts(layers, zero), theory=theory, profiles=theory_profiles(evidence)),
        diverged_step=diverged, seconds=3.25 if zero else 4.5,
    )


def fixed_result(evil: bool = False, seeds: int = 1) -> ExperimentResult:
    """The fixed result: `he` (healthy) and `zeros` (no signal, symmetric, dead) on a tiny MLP, each
    with ``seeds`` seeds (0, 1, ...)."""
    layers = _layers(evil)
    config = ExperimentConfig(model=ModelSpec("mlp"), initializers=(InitSpec("he"), InitSpec("zeros")), epochs=2,
                              seeds=seeds, limit_train=600, out=Path("reports/fixed"))
    he = LabelSpec("he", EVIL_LABEL) if evil else InitSpec("he")
    runs = (*(_run(he, s, layers, 0.8, [0.91 + 0.01 * s, 0.95 + 0.01 * s]) for s in range(seeds)),
            *(_run(InitSpec("zeros"), s, layers, 0.0, [0.1135, 0.1135]) for s in range(seeds)))
    comparisons = (Comparison(a=he.label, b="zeros", test="mcnemar-exact", p_value=1.5e-12, p_adjusted=1.5e-12,
                              significant=True, statistic=19.0,
                              detail="he correct on 831 test images that zeros got wrong, the reverse on 19"),)
    provenance = DataProvenance(
        name="mnist", source="bundled sample (initdiag/sample)", kind="bundled", train_size=600, test_size=1000,
        files={"train-images-idx3-ubyte": "0" * 32, "t10k-labels-idx1-ubyte": "f" * 32},
        notice="MNIST not found locally and could not be downloaded (offline); using the bundled sample.",
    )
    accuracy = {r.label: {"mean": r.test_accuracy, "ci_low": float("nan") if seeds == 1 else r.test_accuracy - 0.02,
                          "ci_high": float("nan") if seeds == 1 else r.test_accuracy + 0.02, "n": seeds}
                for r in runs}
    return ExperimentResult(
        config=config, provenance=provenance, runs=runs, comparisons=comparisons, accuracy=accuracy,
        test_labels=np.zeros(20, dtype=np.int64), started=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), seconds=7.75,
        command="initdiag report --model mlp --init he,zeros --epochs 2 --limit-train 600",
        environment={"initdiag": "0.1.0", "torch": "2.9.0", "python": "3.12.3", "platform": "Linux-x86_64",
                     "machine": "x86_64", "cpu_count": "2 threads", "device": "cpu"},
        missing=("xavier/seed0",),
    )


FIXED_METHODS = (
    Method("vanishing/exploding", "Signal propagation", "Log variance regressed on depth.", "the per-layer gain is 1",
           "fail when the change across the network is >= 100x"),
    Method("dead", "Dead <ReLU> units", "Fraction of units that are 0 for every input.", "not a statistical test",
           "warn >= 50%, fail >= 90%"),
)


def fixed_context(evil: bool = False) -> ReportContext:
    """``build_context(fixed_result())`` with the parts other modules own pinned (methods text, time)."""
    ctx = build_context(fixed_result(evil))
    return replace(ctx, methods=FIXED_METHODS, generated="2025-01-02 04:00:00 UTC")


# -- real reports, made once per test session by the CLI (for the browser and PDF checks) ---------------
REAL_REPORT_ARGS = ("report", "--dataset", "mnist-sample", "--limit-train", "256", "--epochs", "1",
                    "--init", "zeros,he", "--format", "html,pdf,json")
"""A small real ``initdiag report`` (cnn): one failing and one healthy initializer, seconds to train."""
AUDIT_MODEL = f'''
from collections import OrderedDict

from torch import nn

HostileConv = type({EVIL_LABEL!r}, (nn.Conv2d,), {{}})


def build() -> nn.Module:
    """A small CNN whose first layer has a hostile name and a hostile class name."""
    return nn.Sequential(OrderedDict([
        ({EVIL_LAYER!r}, HostileConv(1, 8, 3)), ("act1", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("flat", nn.Flatten()), ("fc", nn.Linear(8 * 13 * 13, 32)), ("act2", nn.ReLU()),
        ("head", nn.Linear(32, 10)),
    ]))
'''
_MADE: dict[str, Path] = {}


def real_report(factory: pytest.TempPathFactory) -> Path:
    """The output directory of :data:`REAL_REPORT_ARGS`, run once per session."""
    if "report" not in _MADE:
        out = factory.mktemp("real-report") / "out"
        assert cli.main([*REAL_REPORT_ARGS, "--out", str(out)]) == 0
        _MADE["report"] = out
    return _MADE["report"]


def real_audit_report(factory: pytest.TempPathFactory) -> Path:
    """The output directory of ``initdiag audit`` on :data:`AUDIT_MODEL`, run once per session (skips
    when this checkout has no ``audit``)."""
    if "audit" not in _MADE:
        if importlib.util.find_spec("initdiag.audit") is None:
            pytest.skip("audit not available")
        base = factory.mktemp("real-audit")
        model = base / "hostile_model.py"
        model.write_text(AUDIT_MODEL, encoding="utf-8")
        out = base / "out"
        assert cli.main(["audit", f"{model}:build", "--input-shape", "1,28,28", "--init", "keep,zeros,he",
                         "--format", "html,pdf,json", "--out", str(out)]) == 0
        _MADE["audit"] = out
    return _MADE["audit"]
