"""Results -> the report's context: one builder for an experiment and for an audit.

An experiment has an accuracy section and heatmaps over training; an audit has a table per layer and a
recommendation instead. Everything else (verdict summary, signal propagation, units, findings, methods,
provenance) is built the same way for both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..checks import METHODS, Verdict
from ..jsonable import finite, json_safe
from ..results import AuditRecord, AuditRun, ExperimentResult, RunResult
from ..series import first_step_values
from ..vocab import Family, Kind, Role, Status
from .context import (
    DataFile,
    Finding,
    FindingGroup,
    GridRow,
    KeyValue,
    LayerRow,
    LayerTable,
    Method,
    Provenance,
    ReportContext,
    UnitSection,
    VerdictGrid,
)
from .format import RANK, badge, check_title, family, fmt, fmt_p, fmt_seconds, layers_text
from .sections import accuracy_section, run_label, signal_section
from .structure import structure_section

__all__ = ["FAMILIES", "Result", "build_context", "layer_table"]

Result = ExperimentResult | AuditRecord
Run = RunResult | AuditRun

FAMILIES: tuple[tuple[str, str], ...] = (
    ("signal-forward", "signal forward"),
    ("signal-backward", "signal backward"),
    (Family.SYMMETRY, "symmetry"),
    (Family.DEAD, "dead units"),
    (Family.SATURATION, "saturation"),
    (Family.DIVERGED, "diverged"),
)
"""Columns of the verdict grid: (family key, heading)."""

_INPUT_KINDS = {"normal": "standard normal inputs", "tokens": "random token ids", "mnist": "MNIST images",
                "example": "the caller's example input"}


def build_context(result: Result) -> ReportContext:
    """The report's context for an experiment or an audit (figures included)."""
    audit = isinstance(result, AuditRecord)
    runs: Sequence[Run] = result.runs
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = {label: i for i, label in enumerate(labels)}
    if isinstance(result, AuditRecord):
        multi, model = False, result.model
    else:
        multi, model = result.config.seeds > 1 or len(runs) > len(labels), result.config.model.label
    return ReportContext(
        kind="audit" if audit else "experiment",
        title=f"initdiag {'audit' if audit else 'report'}: {model}",
        model=model,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        provenance=_provenance(result),
        notices=_notices(result),
        missing=() if isinstance(result, AuditRecord) else tuple(result.missing),
        grid=_grid(runs, multi),
        accuracy=None if isinstance(result, AuditRecord) else accuracy_section(result, labels, styles, multi),
        signal=signal_section(runs, labels, styles, multi, over_training=not audit),
        units=_units(runs, multi),
        findings=_findings(runs, multi),
        methods=tuple(Method(m.check, m.title, m.description, m.null_hypothesis, str(m.threshold)) for m in METHODS),
        layer_tables=tuple(_audit_layer_table(r) for r in result.runs) if isinstance(result, AuditRecord) else (),
        structure=tuple(s for r in result.runs if (s := structure_section(r)) is not None)
        if isinstance(result, AuditRecord) else (),
        recommendation=result.recommendation.evidence if isinstance(result, AuditRecord) else "",
    )


def _notices(result: Result) -> tuple[str, ...]:
    if isinstance(result, AuditRecord):
        return (result.inputs.notice,) if result.inputs.notice else ()
    prov = result.provenance
    out: list[str] = []
    if prov.kind == "bundled":
        out.append(f"This report used the bundled MNIST sample shipped with initdiag ({prov.train_size:,} "
                   f"training and {prov.test_size:,} test images), not the full MNIST data set: accuracies "
                   "are lower and noisier than on full MNIST.")
    if prov.notice:
        out.append(prov.notice)
    return tuple(out)


def _provenance(result: Result) -> Provenance:
    """Command, date, versions, duration, machine, environment and configuration; and what went in: the data
    set of an experiment, the inputs of an audit."""
    env = result.environment
    versions = ", ".join(f"{k} {env[k]}" for k in ("initdiag", "torch", "python") if k in env)
    facts: dict[str, Any] = {
        "command": result.command,
        "date": result.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": versions or "—",
        "duration": fmt_seconds(result.seconds),
        "machine": ", ".join(env[k] for k in ("platform", "device", "gpu") if k in env) or "—",
        "environment": tuple(KeyValue(k, str(v)) for k, v in env.items()),
        "config": tuple(KeyValue(k, v if isinstance(v, str) else json.dumps(json_safe(v), sort_keys=True))
                        for k, v in result.config.to_json().items()),
    }
    if isinstance(result, AuditRecord):
        inputs = result.inputs
        return Provenance(**facts, seeds=str(result.config.seed), dataset=_INPUT_KINDS.get(inputs.kind, inputs.kind),
                          source=inputs.source, sizes=inputs.description,
                          files=tuple(DataFile(k, v) for k, v in sorted(inputs.files.items())))
    prov = result.provenance
    return Provenance(**facts, seeds=", ".join(map(str, result.config.run_seeds)), dataset=prov.name,
                      source=f"{prov.source} ({prov.kind})",
                      sizes=f"{prov.train_size:,} training, {prov.test_size:,} test images",
                      files=tuple(DataFile(k, v) for k, v in sorted(prov.files.items())))


def _grid(runs: Sequence[Run], multi: bool) -> VerdictGrid:
    known = [str(k) for k, _ in FAMILIES]
    extra = list(dict.fromkeys(family(v) for r in runs for v in r.verdicts if family(v) not in known))
    keys = known + extra
    headings = [h for _, h in FAMILIES] + extra
    rows = []
    for run in runs:
        worst = dict.fromkeys(keys, "n/a")
        for v in run.verdicts:
            key = family(v)
            if RANK.get(v.status, 0) > RANK[worst[key]]:
                worst[key] = v.status
        if worst[Family.DIVERGED] == "n/a":
            worst[Family.DIVERGED] = Status.FAIL if run.diverged_step is not None else Status.PASS
        rows.append(GridRow(run_label(run, multi), tuple(badge(worst[k]) for k in keys)))
    return VerdictGrid("run" if multi else "initializer", tuple(headings), tuple(rows))


def _finding(v: Verdict, run: str) -> Finding:
    effect = ", ".join(f"{k} = {fmt(x)}" for k, x in v.effect.items() if finite(x) is not None or
                       (isinstance(x, float) and math.isinf(x))) or "—"
    return Finding(run, check_title(v), family(v), badge(v.status), layers_text(list(v.layers)), fmt_p(v.p_value),
                   effect, v.message, v.advice or "", v.phase)


def _units(runs: Sequence[Run], multi: bool) -> UnitSection:
    found = [_finding(v, run_label(r, multi)) for r in runs for v in r.verdicts]
    return UnitSection(*(tuple(f for f in found if f.family == k)
                         for k in (Family.SYMMETRY, Family.DEAD, Family.SATURATION)))


def _findings(runs: Sequence[Run], multi: bool) -> tuple[FindingGroup, ...]:
    groups = []
    for run in runs:
        bad = [_finding(v, run_label(run, multi)) for v in run.verdicts if v.status != Status.PASS]
        bad.sort(key=lambda f: -RANK[f.badge.status])
        if bad:
            groups.append(FindingGroup(run_label(run, multi), tuple(bad)))
    return tuple(groups)


def layer_table(run: Run) -> LayerTable:
    """Per-layer variances at initialization of one run: its output, the gradient, its weight."""
    fwd, bwd, wgt = (first_step_values(run.frame, k) for k in (Kind.FORWARD, Kind.BACKWARD, Kind.WEIGHT))
    return LayerTable(run.name, tuple(
        LayerRow(layer.name, layer.module, layer.depth, layer.activation or "—", fmt(fwd.get(layer.name)),
                 fmt(bwd.get(layer.name)), fmt(wgt.get(layer.name))) for layer in run.layers))


def _audit_layer_table(run: AuditRun) -> LayerTable:
    """:func:`layer_table` with each weight against the initializer advised for its activation."""
    weights = {w.layer: w for w in run.weights}
    infos = {la.name: la for la in run.layers}
    rows = []
    for row in layer_table(run).rows:
        info = infos.get(row.name)
        w = weights.get(info.module_name) if info is not None and info.role == Role.WEIGHT else None
        if w is None:
            rows.append(row)
            continue
        how = (f"re-initialized: {run.label}" if w.reinitialized else "PyTorch default" if w.default_init
               else "as given")
        if not w.reinitialized and run.label != "keep":
            how += " (kept: only Conv/Linear weights are re-initialized)"
        rows.append(LayerRow(row.name, row.module, row.depth, row.activation, row.forward_var, row.backward_var,
                             row.weight_var, f"{fmt(w.ratio)}x {w.recommended}" if w.ratio is not None else "—", how))
    return LayerTable(run.label, tuple(rows), weights=True)
