"""Property-based tests (hypothesis): invariances of the checks, and a fuzzed command line that never
ends in a traceback.

* scaling every variance (and squared mean) by one constant changes no vanishing/exploding verdict;
* permuting the neurons of layers changes no symmetry verdict;
* a variance that is the same in every layer is never vanishing (nor exploding);
* any argument list built from the real options with odd values gives exit code 0, 2 or 3, never a
  traceback (the training and audit calls are replaced, so no example can start a long run).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initdiag import data as data_mod
from initdiag.checks import RunEvidence, Verdict, analyze
from initdiag.cli import main
from initdiag.config import ExperimentConfig
from initdiag.models import ACTIVATIONS
from initdiag.series import FRAME_COLUMNS
from initdiag.store import RunStore
from initdiag.structure import LayerInfo


# -- made-up evidence ------------------------------------------------------------------------------------
def frame(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Training step 0, one Linear layer per entry: ``series[kind] = (var, mean_sq)`` per layer."""
    rows = []
    for kind, (var, msq) in series.items():
        for depth, (v, m) in enumerate(zip(var, msq, strict=True)):
            for stat, value in (("var", v), ("mean_sq", m)):
                rows.append({"run": "r", "initializer": "he", "seed": 0, "epoch": 0, "step": 0, "phase": "train",
                             "layer": f"fc{depth}", "depth": depth, "module": "Linear", "kind": kind,
                             "stat": stat, "value": float(value)})
    return pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))


def layers(n: int, width: int = 16) -> tuple[LayerInfo, ...]:
    return tuple(LayerInfo(f"fc{d}", f"fc{d}", "Linear", "weight", d, "relu" if d < n - 1 else "linear",
                           (width, width)) for d in range(n))


def evidence(fr: pd.DataFrame | None = None, n_layers: int = 0,
             weights: dict[str, tuple[np.ndarray, np.ndarray | None]] | None = None) -> RunEvidence:
    return RunEvidence("r", "he", fr if fr is not None else pd.DataFrame(columns=list(FRAME_COLUMNS)),
                       layers(n_layers), weights or {}, {}, np.array([2.3, 2.2]))


def signal(verdicts: tuple[Verdict, ...]) -> dict[str, Verdict]:
    return {str(v.signal): v for v in verdicts if v.family == "signal"}


# -- scaling ---------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 14), st.data())
def test_scaling_every_variance_keeps_the_signal_verdicts(n: int, data: st.DataObject) -> None:
    steps = st.lists(st.floats(-2.0, 2.0), min_size=n, max_size=n)
    series, half_span = {}, 0.0
    for kind in ("forward", "backward"):
        log_var = np.cumsum(data.draw(steps, label=f"{kind} log10 steps"))
        log_var -= (log_var.max() + log_var.min()) / 2
        half_span = max(half_span, float(log_var.max()))
        msq_share = np.asarray(data.draw(st.lists(st.floats(0.0, 1e3), min_size=n, max_size=n), label="msq/var"))
        series[kind] = (10.0 ** log_var, msq_share * 10.0 ** log_var)
    # within float32's range, where no floor or overflow applies, before and after scaling
    log10_c = data.draw(st.floats(-(27.0 - half_span), 27.0 - half_span), label="log10 c")
    c = 10.0 ** log10_c
    before = signal(analyze(evidence(frame(series), n)).verdicts)
    after = signal(analyze(evidence(frame({k: (v * c, m * c) for k, (v, m) in series.items()}), n)).verdicts)
    assert before.keys() == after.keys() == {"forward", "backward"}
    for kind, v in before.items():
        w = after[kind]
        assert (v.outcome, v.status, v.layers) == (w.outcome, w.status, w.layers), kind
        for key in ("gain", "gain_low", "gain_high"):
            a, b = v.effect.get(key), w.effect.get(key)
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-6) or (a != a and b != b), key


@pytest.mark.parametrize("steps", [[0.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 2.0]], ids=["6-layers", "2-layers"])
def test_a_change_exactly_at_the_threshold_gets_one_verdict_at_every_scale(steps: list[float]) -> None:
    """A variance that grows exactly 100x (with 2 layers judged by the raw change) sits on a threshold;
    rescaling moves the computed change a few ulps either way, which once flipped the verdict (found by
    the property test above)."""
    log_var = np.cumsum(steps)
    n = len(steps)
    verdicts = set()
    for c in (1.0, 10 ** 0.99999, 1e-7, 3.3e5):
        series = {"forward": (c * 10.0 ** log_var, 0 * log_var), "backward": (np.ones(n), np.zeros(n))}
        v = signal(analyze(evidence(frame(series), n)).verdicts)["forward"]
        verdicts.add((v.outcome, v.status, v.layers))
    assert len(verdicts) == 1 and next(iter(verdicts))[0] == "exploding", verdicts


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.floats(1e-20, 1e20), st.floats(1e-20, 1e20), st.floats(0.0, 1e3))
def test_the_same_variance_in_every_layer_is_never_vanishing(n: int, fwd: float, bwd: float, share: float) -> None:
    ones = np.ones(n)
    series = {"forward": (fwd * ones, share * fwd * ones), "backward": (bwd * ones, share * bwd * ones)}
    verdicts = signal(analyze(evidence(frame(series), n)).verdicts)
    assert verdicts.keys() == {"forward", "backward"}
    for kind, v in verdicts.items():
        assert v.outcome not in ("vanishing", "exploding"), (kind, v.message)
        assert (v.outcome, v.status) == ("healthy", "pass"), (kind, v.message)


# -- permutations ----------------------------------------------------------------------------------------
def _symmetry(verdicts: tuple[Verdict, ...]) -> list[tuple[Any, ...]]:
    out = []
    for v in verdicts:
        if v.check != "symmetry":
            continue
        per_layer = tuple(sorted((d["layer"], d["distinct"], tuple(sorted(len(g) for g in d["groups"])))
                                 for d in v.details.get("layers", [])))
        out.append((v.status, v.layers, v.phase, per_layer, round(float(v.p_value), 9) if v.p_value else None))
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=24), min_size=1,
                                          max_size=3), st.booleans())
def test_permuting_neurons_keeps_the_symmetry_verdicts(seed: int, patterns: list[list[int]], bias: bool) -> None:
    """Each layer's neurons are rows drawn from 7 random rows by ``pattern`` (repeats are identical neurons);
    the same rows in another order must give the same verdicts, groups sizes and p-values."""
    rng = np.random.default_rng(seed)
    weights: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    permuted: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for i, pattern in enumerate(patterns):
        base_w, base_b = rng.normal(size=(7, 9)), rng.normal(size=7)
        w, b = base_w[pattern], base_b[pattern] if bias else None
        perm = rng.permutation(len(pattern))
        weights[f"fc{i}"] = (w, b)
        permuted[f"fc{i}"] = (w[perm], None if b is None else b[perm])
    before = _symmetry(analyze(evidence(weights=weights), seed=1).verdicts)
    after = _symmetry(analyze(evidence(weights=permuted), seed=1).verdicts)
    assert before and before == after
    repeated = any(len(set(p)) < len(p) for p in patterns)
    assert before[0][0] == ("fail" if repeated else before[0][0])


# -- a fuzzed command line -------------------------------------------------------------------------------
class Reached(Exception):
    """Raised instead of training or auditing: the arguments passed every check."""


WORDS = st.text(alphabet=string.ascii_letters + string.digits + ".,:=_+ ", max_size=10)
INTS = st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(-3, 70), st.integers(-(2**80), 2**80)).map(str)
NUMBERS = st.one_of(INTS, INTS, INTS, st.floats(allow_nan=True, allow_infinity=True).map(repr), WORDS)
"""Mostly plausible numbers (so that examples get past the parser), then huge, negative, NaN, words."""


def _choice(*items: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(items), WORDS)


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The only paths an example may name: all inside a temporary directory."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "file").write_text("x")
    (root / "empty").mkdir()
    RunStore(root / "planned").save_plan(ExperimentConfig(epochs=1), ["report", "--epochs", "1"])
    dirs = [str(root / n) for n in ("out", "file", "empty", "missing/deeper", "file/below")]
    return {"out": dirs, "data": dirs, "resume": [*dirs, str(root / "planned")], "root": [str(root)]}


def _report_options(p: dict[str, list[str]]) -> dict[str, st.SearchStrategy[str]]:
    return {
        "--model": _choice("cnn", "mlp", "deep-mlp", "cnnn", "MLP", ""),
        "--depth": NUMBERS, "--width": NUMBERS,
        "--activation": _choice(*ACTIVATIONS, "relu6", ""),
        "--init": _choice("he", "zeros,random,xavier,he", "random:std=0.05", "random:std=-1", "random:std=nan",
                          "xavierr", "he,he", "keep", "constant:value=1e40", "random:foo=1", ""),
        "--epochs": NUMBERS, "--batch-size": NUMBERS, "--lr": NUMBERS, "--seed": NUMBERS, "--seeds": NUMBERS,
        "--limit-train": NUMBERS, "--record-every": NUMBERS, "--jobs": NUMBERS,
        "--dataset": _choice("mnist", "mnist-sample", "mnst", ""),
        "--data-dir": st.sampled_from(p["data"]), "--out": st.sampled_from(p["out"]),
        "--format": _choice("html,pdf,json,csv", "json", "htm", "", ","),
        "--paper": _choice("a4", "letter", "a3"), "--device": _choice("cpu", "cuda", "auto", "cuda:7", "tpu"),
        "--fail-on": _choice("vanishing,diverged", "vanish", "", ","),
        "--resume": st.sampled_from(p["resume"]),
    }


def _audit_options(p: dict[str, list[str]]) -> dict[str, st.SearchStrategy[str]]:
    return {
        "--input-shape": _choice("1,28,28", "3", "784", "0", "a,b", "3x4", "-1", "2,0,2"),
        "--init": _choice("keep", "keep,he,xavier", "hee", "keep:x", ""),
        "--batches": NUMBERS, "--batch-size": NUMBERS, "--vocab": NUMBERS, "--seed": NUMBERS,
        "--inputs": _choice("normal", "mnist"), "--input-dtype": _choice("float", "long", "int"),
        "--loss": _choice("auto", "ce", "mse", "l1"),
        "--kwargs": st.sampled_from(['{"in_features": 3, "out_features": 2}', "[1]", "{", '{"bogus": 1}', "null",
                                     '{"in_features": -1, "out_features": 2}']),
        "--device": _choice("cpu", "cuda", "auto", "tpu"), "--data-dir": st.sampled_from(p["data"]),
        "--out": st.sampled_from(p["out"]), "--format": _choice("json", "html,csv", "pdff"),
        "--paper": _choice("a4", "letter"), "--fail-on": _choice("symmetry", "symetry", ""),
    }


# Only harmless targets: modules and classes that build nothing large and run nothing.
TARGETS = ("torch.nn:Linear", "torch.nn:Identity", "torch.nn:ReLU", "nope", "x.py:Net", ":", "torch:nn",
           "torch.nn:Nope", "collections:OrderedDict", "nope.py:Net")


@st.composite
def argument_lists(draw: st.DrawFn, p: dict[str, list[str]]) -> list[str]:
    command = draw(st.sampled_from(["report"] * 5 + ["audit"] * 4 + ["list", "bogus", ""]))
    argv = [*draw(st.lists(st.sampled_from(["--version", "--help"]), max_size=1))] if draw(st.integers(0, 9)) == 0 \
        else []
    if command:
        argv.append(command)
    options = _audit_options(p) if command == "audit" else _report_options(p)
    if command == "audit" and draw(st.integers(0, 4)):
        argv.append(draw(st.sampled_from(TARGETS)))
    if command == "audit" and draw(st.integers(0, 4)):
        argv += ["--input-shape", draw(options["--input-shape"])]
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=6)):
        argv += [name, draw(options[name])]
    if draw(st.integers(0, 5)) == 0:  # an option without its value, or a stray word
        argv.append(draw(st.one_of(st.sampled_from(sorted(options)), WORDS)))
    if command == "report" and "--dataset" not in argv and "--resume" not in argv:
        argv += ["--dataset", "mnist-sample"]
    return argv


@pytest.fixture
def no_long_work(monkeypatch: pytest.MonkeyPatch, places: dict[str, list[str]]) -> Iterator[None]:
    def reached(*args: Any, **kwargs: Any) -> None:
        raise Reached

    monkeypatch.setattr(importlib.import_module("initdiag.backends"), "run_experiment", reached)
    monkeypatch.setattr(importlib.import_module("initdiag.audit"), "run_audit", reached)
    monkeypatch.setattr(data_mod, "_read_sample", functools.cache(data_mod._read_sample))
    monkeypatch.setattr(data_mod, "_download_into", reached)
    monkeypatch.setenv("INITDIAG_OFFLINE", "1")
    monkeypatch.delenv("INITDIAG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(Path(places["root"][0]) / "xdg"))
    monkeypatch.chdir(places["root"][0])  # default output directories land here
    yield


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_a_fuzzed_command_line_never_ends_in_a_traceback(data: st.DataObject, places: dict[str, list[str]],
                                                         no_long_work: None) -> None:
    argv = data.draw(argument_lists(places), label="argv")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except Reached:
            code = "valid"
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code == "valid" or (isinstance(code, int) and code in (0, 2, 3)), (argv, code, text)
    if code == 2 and text.strip():
        lines = text.strip().splitlines()
        assert lines[-1].startswith("initdiag: error: "), (argv, text)
        assert sum(line.startswith("initdiag: error") for line in lines) == 1, (argv, text)
