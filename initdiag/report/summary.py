"""``summary.json``: the machine-readable summary of a result (one schema for every kind).

Strictly valid JSON (NaN/Inf become null). Schema version 3 (version 2 had no ``outcome`` in a verdict: a
signal verdict's ``check`` held its outcome; version 1 had neither ``structure`` nor ``stream``)::

    {"schema_version": 3, "tool": "initdiag", "version": str, "kind": "experiment" | "audit" | "training" | "fix",
     "created": ISO-8601 UTC, "command": str, "model": str,
     "dataset": {"name", "source", "kind", "train_size", "test_size", "files": {file: md5}},
     "config": {...}, "environment": {str: str}, "duration_seconds": float, "missing": [run name, ...],
     "runs": [{"name", "initializer", "seed", "status": "ok"|"diverged", "diverged_step": int|null,
               "test_accuracy", "test_loss", "seconds", "failed": [--fail-on name],
               "history": [{"epoch", "train_loss", "test_loss", "test_accuracy"}],
               "layers": [{"name", "module", "depth", "activation", "activation_variance_init",
                           "gradient_variance_init", "weight_variance_init"}],
               "verdicts": [Verdict.to_json()], "theory": [TheoryRow fields],
               "structure": Structure.to_json() | null, "stream": {"values", "bounded", "rules"} | null}],
     "comparisons": [Comparison.to_json()], "accuracy": {initializer: {"mean", "ci_low", "ci_high", "n"}}}

A verdict is ``{"check", "outcome", "family", "signal", "status", "phase", "layers", "p_value", "effect",
"message", "advice", "details"}``. The ``*_init`` values are the ``var`` statistic (forward, backward, weight)
at the first training step (an audit: averaged over its batches). An audit's runs have an empty ``history``,
null accuracies, ``"weights"`` (``LayerWeight.to_json()`` per weight layer), ``"kept"`` (``{"name", "reason"}`` per
weight the initializer left as it was) and ``"digest"`` (SHA-256 of the parameters); its ``dataset`` describes the
inputs (``name`` the input kind, ``train_size`` the samples pushed through, ``test_size`` 0, plus
``description``, ``batch_shape``, ``dtype``); ``comparisons`` and ``accuracy`` are empty; and the top level
adds ``"passed"`` and ``"recommendation"`` (``{"initializer", "evidence", "compared", "equal"}``). A training (a
callback's report) is its audit at the first batch (the first run, as an audit's) and the training as a second run
with ``"losses"`` (the loss of every step), ``"steps_per_epoch"`` and ``"epoch_losses"`` (each epoch's mean); the
top level adds ``"framework"`` and ``"framework_settings"``. A fix's runs are its two audits' first runs, named
``"before"`` (the model as given) and ``"after"`` (as repaired); its ``dataset`` is the first audit's, as an
audit's, and the top level adds ``"passed"`` (the repaired model's audit), ``"passed_before"``, ``"method"``,
``"rounds"``, ``"changed"`` (bool), ``"changes"`` (``ParamChange.to_json()``: ``{"layer", "param", "old_std",
"new_std", "gain", "answers", "rule"}`` per changed parameter), ``"unconverged"`` and ``"unrepaired"`` (layer
names) and ``"verification"`` (``{"steps", "data", "optimizer", "improved", "original_tail", "repaired_tail",
"original", "repaired"}``: each step's loss of the original and the repaired model; or null).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from ..jsonable import json_safe
from ..results import AuditResult, AuditRun, ExperimentResult, FixResult, Result, RunResult, TrainingResult, TrainingRun
from ..series import first_step_values
from ..vocab import Kind, ResultKind, __version__

__all__ = ["SCHEMA_VERSION", "summary_json"]

SCHEMA_VERSION = 3


def _run_json(run: RunResult | AuditRun | TrainingRun) -> dict[str, Any]:
    fwd, bwd, wgt = (first_step_values(run.frame, k) for k in (Kind.FORWARD, Kind.BACKWARD, Kind.WEIGHT))
    trained = run if isinstance(run, RunResult) else None
    data: dict[str, Any] = {
        "name": run.name, "initializer": run.label, "seed": run.seed, "status": run.status,
        "diverged_step": run.diverged_step, "test_accuracy": trained.test_accuracy if trained else math.nan,
        "test_loss": trained.test_loss if trained else math.nan, "seconds": run.seconds,
        "failed": list(run.failed),
        "history": [{"epoch": e.epoch, "train_loss": e.train_loss, "test_loss": e.test_loss,
                     "test_accuracy": e.test_accuracy} for e in trained.history] if trained else [],
        "layers": [{"name": layer.name, "module": layer.module, "depth": layer.depth,
                    "activation": layer.activation, "activation_variance_init": fwd.get(layer.name),
                    "gradient_variance_init": bwd.get(layer.name), "weight_variance_init": wgt.get(layer.name)}
                   for layer in run.layers],
        "verdicts": [v.to_json() for v in run.verdicts],
        "theory": [t.to_json() for t in run.theory],
        "structure": None if run.structure is None else run.structure.to_json(),
        "stream": None if run.stream is None else {"values": list(run.stream.values), "bounded": run.stream.bounded,
                                                   "rules": list(run.stream.rules)},
    }
    if isinstance(run, AuditRun):
        data["weights"] = [w.to_json() for w in run.weights]
        data["kept"] = [k.to_json() for k in run.kept]
        data["digest"] = run.digest
    if isinstance(run, TrainingRun):
        data["losses"] = [float(x) for x in run.losses]
        data["steps_per_epoch"] = run.steps_per_epoch
        data["epoch_losses"] = [float(x) for x in run.epoch_losses]
    return data


def _experiment(result: ExperimentResult) -> dict[str, Any]:
    prov = result.provenance
    return {"model": result.config.model.label,
            "dataset": {"name": prov.name, "source": prov.source, "kind": prov.kind, "train_size": prov.train_size,
                        "test_size": prov.test_size, "files": dict(prov.files)},
            "missing": list(result.missing), "comparisons": [c.to_json() for c in result.comparisons],
            "accuracy": result.accuracy}


def _audit(result: AuditResult) -> dict[str, Any]:
    inputs = result.inputs
    return {"model": result.model,
            "dataset": {"name": inputs.kind, "source": inputs.source, "kind": inputs.kind,
                        "train_size": inputs.batches * inputs.batch_shape[0], "test_size": 0,
                        "files": dict(inputs.files), "description": inputs.description,
                        "batch_shape": list(inputs.batch_shape), "dtype": inputs.dtype},
            "passed": result.passed, "recommendation": result.recommendation.to_json()}


def _training(result: TrainingResult) -> dict[str, Any]:
    return {**_audit(result.audit), "passed": result.passed, "framework": result.framework,
            "framework_settings": dict(result.settings)}


def _fix(result: FixResult) -> dict[str, Any]:
    v = result.verification
    return {"model": result.target, "dataset": _audit(result.before)["dataset"], "passed": result.passed,
            "passed_before": result.before.passed, "method": result.method, "rounds": result.rounds,
            "changed": result.changed, "changes": [c.to_json() for c in result.changes],
            "unconverged": list(result.unconverged), "unrepaired": list(result.unrepaired),
            "verification": None if v is None else v.to_json()}


_KIND_PARTS: dict[str, Callable[[Any], dict[str, Any]]] = {
    ResultKind.EXPERIMENT: _experiment, ResultKind.AUDIT: _audit, ResultKind.TRAINING: _training,
    ResultKind.FIX: _fix}
"""Per result kind, its part of the summary beyond what every kind has."""


def summary_json(result: Result) -> dict[str, Any]:
    """The summary of ``result`` (see the module docstring for the schema)."""
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool": "initdiag", "version": __version__, "kind": str(result.kind),
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": result.command, "missing": [], "comparisons": [], "accuracy": {},
    }
    data.update(_KIND_PARTS[result.kind](result))
    data.update({"config": cast(Any, result).config.to_json(), "environment": dict(result.environment),
                 "duration_seconds": result.seconds, "runs": [_run_json(r) for r in result.runs]})
    cleaned: dict[str, Any] = json_safe(data)
    return cleaned
