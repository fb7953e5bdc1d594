"""Results -> the report's context: one builder for every kind of result.

Every report has a verdict summary, signal propagation, units, findings, methods and provenance, built the
same way. What a kind adds or changes (an experiment's accuracy section and heatmaps over training, an
audit's per-layer table and recommendation, a training's heatmaps over the recorded steps, a fix's repair
section and its two audits side by side) is one row of :data:`KINDS`, looked up by ``result.kind``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

from ..checks import CHECKS, Verdict, methods
from ..jsonable import finite, json_safe
from ..results import (
    AuditResult,
    AuditRun,
    ExperimentResult,
    FixResult,
    ParamChange,
    Result,
    RunResult,
    TrainingResult,
    TrainingRun,
)
from ..series import first_step_values
from ..vocab import CheckName, Family, Kind, ResultKind, Role, Status
from .answer import answer_section
from .blind import blind_sections
from .context import (
    AccuracySection,
    DataFile,
    Finding,
    FindingGroup,
    GridRow,
    KeyValue,
    LayerRow,
    LayerTable,
    Method,
    Provenance,
    RepairSection,
    ReportContext,
    StructureSection,
    UnitSection,
    VerdictGrid,
)
from .format import RANK, badge, check_title, fmt, fmt_p, fmt_seconds, layers_text
from .repair import repair_recommendation, repair_section
from .sections import accuracy_section, loss_figure, run_label, signal_section
from .structure import MAJOR_ROWS, major_layers, structure_section

__all__ = ["KINDS", "KindSections", "Result", "build_context", "common_facts", "grid_column", "layer_table"]

Run = RunResult | AuditRun | TrainingRun

_INPUT_KINDS = {"normal": "standard normal inputs", "tokens": "random token ids", "mnist": "MNIST images",
                "example": "the caller's example input"}


@dataclass(frozen=True)
class KindSections:
    """What one kind of result puts in its report besides the sections every report has."""

    title: str
    model: Callable[[Any], str]
    multi: Callable[[Any], bool]
    notices: Callable[[Any], tuple[str, ...]]
    provenance: Callable[[Any, dict[str, Any]], Provenance]
    over_training: bool
    accuracy: Callable[[Any, list[str], dict[str, int], bool], AccuracySection | None] = \
        lambda result, labels, styles, multi: None
    layer_tables: Callable[[Any], tuple[LayerTable, ...]] = lambda result: ()
    structure: Callable[[Any], tuple[StructureSection, ...]] = lambda result: ()
    recommendation: Callable[[Any], str] = lambda result: ""
    kept: Callable[[Any], tuple[str, ...]] = lambda result: ()
    missing: Callable[[Any], tuple[str, ...]] = lambda result: ()
    repair: Callable[[Any], RepairSection | None] = lambda result: None
    series: str = "initializer"
    """What a run stands for, when each has its own label: the verdict grid's row heading, the figures' legend title."""


def build_context(result: Result) -> ReportContext:
    """The report's context for any kind of result (figures included)."""
    kind = KINDS[result.kind]
    runs: Sequence[Run] = result.runs
    labels = list(dict.fromkeys(r.label for r in runs))
    styles = {label: i for i, label in enumerate(labels)}
    multi = kind.multi(result)
    model = kind.model(result)
    accuracy = kind.accuracy(result, labels, styles, multi)
    provenance = kind.provenance(result, common_facts(result))
    signal = signal_section(runs, labels, styles, multi, over_training=kind.over_training, legend=kind.series)
    findings = _findings(runs, multi)
    blind = blind_sections([(run_label(r, multi), r.verdicts, functools.partial(_row, run_label(r, multi)))
                            for r in runs], salt=model, legend=kind.series)
    repair = kind.repair(result)
    loss = loss_figure(runs, styles, multi)
    return ReportContext(
        kind=str(result.kind),
        title=f"initdiag {kind.title}: {model}",
        model=model,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        provenance=provenance,
        notices=kind.notices(result),
        missing=kind.missing(result),
        grid=_grid(runs, multi, kind.series),
        accuracy=accuracy,
        loss=loss,
        signal=signal,
        units=_units(runs, multi),
        findings=findings,
        methods=_methods(runs, accuracy is not None),
        layer_tables=kind.layer_tables(result),
        structure=kind.structure(result),
        recommendation=kind.recommendation(result),
        kept=kind.kept(result),
        blind=blind,
        repair=repair,
        answer=answer_section(provenance, [run_label(r, multi) for r in runs], findings, signal, blind, accuracy,
                              repair, loss, _training_what(result) if isinstance(result, TrainingResult) else ""),
    )


def _training_what(result: TrainingResult) -> str:
    run, s = result.training, result.settings
    epochs = f" in {len(run.epoch_losses)} epochs of {run.steps_per_epoch} steps" if len(run.epoch_losses) else ""
    optimizer = f", {s['optimizer']} at lr {s['lr']}" if "optimizer" in s and "lr" in s else \
        f", lr {s['learning_rate']}" if "learning_rate" in s else ""
    return (f"a {result.framework} fit of {result.model}: {len(run.losses)} steps{epochs}{optimizer}, audited at its "
            f"first batch, in {fmt_seconds(result.seconds)}.")


def _methods(runs: Sequence[Run], compared: bool) -> tuple[Method, ...]:
    """The methods of the checks this report ran: a check's method is in when a verdict of it (by its check or
    outcome name; ``vanishing/exploding`` for ``signal`` and ``stream``) is in a run, the accuracy comparisons
    when the kind compares accuracies, the theory overlay always; ``flagged`` when one of those verdicts warns
    or fails (the accuracy comparisons count as flagged: their p-values are on the report's first pages)."""
    ran: dict[str, bool] = {"theory": False}
    if compared:
        ran["comparison"] = True
    for run in runs:
        for v in run.verdicts:
            keys = {str(v.check), str(v.outcome)}
            if v.check in (CheckName.SIGNAL, CheckName.STREAM) and v.outcome != "no_signal":
                keys.add("vanishing/exploding")
            for k in keys:
                ran[k] = ran.get(k, False) or v.status != Status.PASS
    return tuple(Method(m.check, m.title, m.description, m.null_hypothesis, str(m.threshold), ran[m.check])
                 for m in methods() if m.check in ran)


def common_facts(result: Result) -> dict[str, Any]:
    """Command, date, versions, duration, machine, environment and configuration: every kind's provenance."""
    env = result.environment
    versions = ", ".join(f"{k} {env[k]}" for k in ("initdiag", "torch", "python") if k in env)
    config = cast(Any, result).config
    return {
        "command": result.command,
        "date": result.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": versions or "—",
        "duration": fmt_seconds(result.seconds),
        "machine": ", ".join(env[k] for k in ("platform", "device", "gpu") if k in env) or "—",
        "environment": tuple(KeyValue(k, str(v)) for k, v in env.items()),
        "config": tuple(KeyValue(k, v if isinstance(v, str) else json.dumps(json_safe(v), sort_keys=True))
                        for k, v in _shown(config.to_json()).items()),
    }


def _shown(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as the report shows it: a built-in model without depth, width and activation knobs (the
    seed CNN, the MLP) by its name alone; only the deep MLP takes them."""
    model = config.get("model")
    if isinstance(model, dict) and model.get("name") in ("cnn", "mlp"):
        return {**config, "model": model["name"]}
    return config


def _experiment_notices(result: ExperimentResult) -> tuple[str, ...]:
    prov = result.provenance
    out: list[str] = []
    if prov.kind == "bundled":  # one notice: why the sample was used (the raw download error went to stderr)
        reason = re.sub(r"\s*\(download failed:.*\)$", "", (prov.notice or "").split(";")[0]).strip()
        why = f" {reason.rstrip('.')}; pass --data-dir DIR for the full set." if reason else ""
        out.append(f"This report used the bundled MNIST sample shipped with initdiag ({prov.train_size:,} "
                   f"training and {prov.test_size:,} test images), not the full MNIST data set: accuracies "
                   f"are lower and noisier than on full MNIST.{why}")
    elif prov.notice:
        out.append(prov.notice)
    return tuple(out)


def _experiment_provenance(result: ExperimentResult, facts: dict[str, Any]) -> Provenance:
    """The data set an experiment trained on."""
    prov = result.provenance
    seeds = result.config.run_seeds
    return Provenance(**facts, seeds=", ".join(map(str, seeds)) + (
        " (one run per initializer)" if len(seeds) == 1 else f" ({len(seeds)} runs per initializer)"),
                      dataset=prov.name,
                      source=f"{prov.source} ({prov.kind})",
                      sizes=f"{prov.train_size:,} training, {prov.test_size:,} test images",
                      files=tuple(DataFile(k, v) for k, v in sorted(prov.files.items())))


def _audit_provenance(result: AuditResult, facts: dict[str, Any]) -> Provenance:
    """The inputs an audit pushed through the model."""
    inputs = result.inputs
    return Provenance(**facts, seeds=str(result.config.seed), dataset=_INPUT_KINDS.get(inputs.kind, inputs.kind),
                      source=inputs.source, sizes=inputs.description,
                      files=tuple(DataFile(k, v) for k, v in sorted(inputs.files.items())))


def _audit_notices(audit: AuditResult) -> tuple[str, ...]:
    return (audit.inputs.notice,) if audit.inputs.notice else ()


def _audit_tables(audit: AuditResult) -> tuple[LayerTable, ...]:
    return tuple(_audit_layer_table(r) for r in audit.runs)


def _audit_kept(audit: AuditResult) -> tuple[str, ...]:
    return tuple(f"`{run.label}`: {run.kept_text()}" for run in audit.runs if run.kept)


def _audit_structure(audit: AuditResult) -> tuple[StructureSection, ...]:
    return tuple(s for r in audit.runs if (s := structure_section(r)) is not None)


def _fix_tables(result: FixResult) -> tuple[LayerTable, ...]:
    """The per-layer tables of the model as given and as repaired (its changed weights named)."""
    root = result.runs[0].structure.root if result.runs[0].structure is not None else ""
    changed = {c.param.rpartition(".")[0] or root: c for c in result.changes}
    return _audit_layer_table(result.runs[0], {}), _audit_layer_table(result.runs[1], changed)


KINDS: dict[str, KindSections] = {
    ResultKind.EXPERIMENT: KindSections(
        title="report", model=lambda r: r.config.model.label,
        multi=lambda r: r.config.seeds > 1 or len(r.runs) > len({x.label for x in r.runs}),
        notices=_experiment_notices, provenance=_experiment_provenance, over_training=True,
        accuracy=accuracy_section, missing=lambda r: tuple(r.missing)),
    ResultKind.AUDIT: KindSections(
        title="audit", model=lambda r: r.model, multi=lambda r: False, notices=_audit_notices,
        provenance=_audit_provenance, over_training=False, layer_tables=_audit_tables, structure=_audit_structure,
        recommendation=lambda r: r.recommendation.evidence, kept=_audit_kept),
    ResultKind.TRAINING: KindSections(
        title="training", model=lambda r: r.model, multi=lambda r: False, notices=lambda r: _audit_notices(r.audit),
        provenance=lambda r, facts: replace(_audit_provenance(r.audit, facts), framework=(
            KeyValue("framework", r.framework), *(KeyValue(k, v) for k, v in r.settings.items()))),
        over_training=True,
        layer_tables=lambda r: _audit_tables(r.audit), structure=lambda r: _audit_structure(r.audit),
        recommendation=lambda r: r.audit.recommendation.evidence, kept=lambda r: _audit_kept(r.audit)),
    ResultKind.FIX: KindSections(
        title="fix", model=lambda r: r.target, multi=lambda r: False, notices=lambda r: _audit_notices(r.before),
        provenance=lambda r, facts: _audit_provenance(r.before, facts), over_training=False,
        layer_tables=_fix_tables, structure=lambda r: tuple(s for x in r.runs if (s := structure_section(x))),
        recommendation=repair_recommendation, repair=repair_section, series="model"),
}
"""Per result kind (``result.kind``), what its report adds to the common sections."""


def grid_column(verdict: Verdict) -> str:
    """The verdict grid's column of ``verdict``: its registered check's (``signal-forward``/``signal-backward``
    for the signal checks, by direction), else its family."""
    return CHECKS.column(verdict)


def _grid(runs: Sequence[Run], multi: bool, series: str = "initializer") -> VerdictGrid:
    """One row per run, one badge per column: the registered checks' columns (those always shown, and those
    some run has a verdict in), then the families of verdicts no registered check claims."""
    present = {grid_column(v) for r in runs for v in r.verdicts}
    columns = [(key, heading) for key, heading, always in CHECKS.grid_columns() if always or key in present]
    known = {key for key, _ in columns}
    columns += [(key, key) for key in dict.fromkeys(grid_column(v) for r in runs for v in r.verdicts)
                if key not in known]
    keys = [key for key, _ in columns]
    rows = []
    for run in runs:
        worst = dict.fromkeys(keys, "n/a")
        for v in run.verdicts:
            key = grid_column(v)
            if RANK.get(v.status, 0) > RANK[worst[key]]:
                worst[key] = v.status
        if worst.get(CheckName.DIVERGED) == "n/a":
            worst[CheckName.DIVERGED] = Status.FAIL if run.diverged_step is not None else Status.PASS
        rows.append(GridRow(run_label(run, multi), tuple(badge(worst[k]) for k in keys)))
    return VerdictGrid("run" if multi else series, tuple(h for _, h in columns), tuple(rows))


def _finding(v: Verdict, run: str) -> Finding:
    effect = ", ".join(f"{k} = {fmt(x)}" for k, x in v.effect.items() if finite(x) is not None or
                       (isinstance(x, float) and math.isinf(x))) or "—"
    return Finding(run, check_title(v), grid_column(v), badge(v.status), layers_text(list(v.layers)), fmt_p(v.p_value),
                   effect, v.message, v.advice or "", v.phase)


def _row(run: str, v: Verdict) -> Finding:
    return _finding(v, run)


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
    """Per-layer variances at initialization of one run: its output, the gradient, its weight. A table longer
    than :data:`MAJOR_ROWS` marks the rows that do not matter (:func:`.structure.major_layers`) as minor: the
    PDF leaves them out, the HTML shows them."""
    fwd, bwd, wgt = (first_step_values(run.frame, k) for k in (Kind.FORWARD, Kind.BACKWARD, Kind.WEIGHT))
    major = major_layers(run) if len(run.layers) > MAJOR_ROWS else {la.name for la in run.layers}
    return LayerTable(run.name, tuple(
        LayerRow(layer.name, layer.module, layer.depth, layer.activation or "—", fmt(fwd.get(layer.name)),
                 fmt(bwd.get(layer.name)), fmt(wgt.get(layer.name)), minor=layer.name not in major)
        for layer in run.layers))


def _audit_layer_table(run: AuditRun, changed: Mapping[str, ParamChange] | None = None) -> LayerTable:
    """:func:`layer_table` with each weight against the initializer advised for its activation. ``changed``
    (a fix's runs: module name -> the repair's change of its weight) says which weights a repair changed."""
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
        if changed is not None:
            how = f"repaired: std x{fmt(changed[w.layer].gain)}" if w.layer in changed else how
        elif not w.reinitialized and run.label != "keep":
            root = run.structure.root if run.structure is not None else ""
            reason = next((k.reason for k in run.kept if (k.name.rpartition(".")[0] or root) == w.layer), "")
            how += f" (kept: {reason})" if reason else " (kept)"
        rows.append(LayerRow(row.name, row.module, row.depth, row.activation, row.forward_var, row.backward_var,
                             row.weight_var, f"{fmt(w.ratio)}x {w.recommended}" if w.ratio is not None else "—", how,
                             row.minor and not (changed and w.layer in changed)))
    return LayerTable(run.label, tuple(rows), weights=True)
