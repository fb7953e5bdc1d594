"""What the report shows, as frozen dataclasses: the template's whole input (no computing, no rendering).

Compute (checks, theory) -> structure (:mod:`.build`, this module's types) -> presentation (:mod:`.render`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AccuracySection",
    "Badge",
    "BlockRow",
    "ComparisonRow",
    "DataFile",
    "Figure",
    "Finding",
    "FindingGroup",
    "GridRow",
    "KeyValue",
    "LayerRow",
    "LayerTable",
    "MeanRow",
    "Method",
    "Provenance",
    "RepairRow",
    "RepairSection",
    "ReportContext",
    "RunRow",
    "SignalSection",
    "StructureRow",
    "StructureSection",
    "TheoryLine",
    "TocEntry",
    "UnitSection",
    "VerdictGrid",
]


@dataclass(frozen=True)
class Badge:
    """A pass/warn/fail mark: a word, a colour (CSS class ``status``) and a symbol for grey print."""

    status: str
    symbol: str
    text: str

    @property
    def css(self) -> str:
        """CSS class for the status ("na" for "n/a")."""
        return "na" if self.status == "n/a" else self.status


@dataclass(frozen=True)
class Figure:
    """An inline SVG figure with its anchor id and caption."""

    id: str
    svg: str
    caption: str


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str


@dataclass(frozen=True)
class TocEntry:
    id: str
    title: str


@dataclass(frozen=True)
class GridRow:
    label: str
    cells: tuple[Badge, ...]


@dataclass(frozen=True)
class VerdictGrid:
    """Rows: initializers (one per run when seeds > 1); columns: check families."""

    row_heading: str
    columns: tuple[str, ...]
    rows: tuple[GridRow, ...]


@dataclass(frozen=True)
class RunRow:
    initializer: str
    seed: int
    test_accuracy: str
    test_loss: str
    status: Badge
    detail: str
    seconds: str


@dataclass(frozen=True)
class MeanRow:
    initializer: str
    mean: str
    ci: str
    n: int


@dataclass(frozen=True)
class ComparisonRow:
    a: str
    b: str
    test: str
    statistic: str
    p_value: str
    p_adjusted: str
    significant: bool
    detail: str


@dataclass(frozen=True)
class AccuracySection:
    runs: tuple[RunRow, ...]
    means: tuple[MeanRow, ...]
    comparisons: tuple[ComparisonRow, ...]
    figure: Figure | None
    note: str = ""


@dataclass(frozen=True)
class TheoryLine:
    run: str
    activation: str
    signal: str
    expected: str
    measured: str
    interval: str
    note: str


@dataclass(frozen=True)
class SignalSection:
    forward: Figure | None
    backward: Figure | None
    theory: tuple[TheoryLine, ...]
    heatmaps: tuple[Figure, ...]
    heatmap_note: str
    stream: tuple[Figure, ...] = ()
    """The residual stream per block (models with residual blocks), forward and backward."""


@dataclass(frozen=True)
class StructureRow:
    """One weight layer as the structure saw it."""

    block: str
    layer: str
    module: str
    op: str
    activation: str
    norm: str
    fans: str
    init: str
    minor: bool = False
    """Left out of the PDF (the HTML has it): not flagged, not the first or last layer, not a block's first."""


@dataclass(frozen=True)
class BlockRow:
    """One residual block."""

    index: int
    name: str
    module: str
    adds: int
    branch: str
    shortcut: str
    theory: str
    minor: bool = False


@dataclass(frozen=True)
class StructureSection:
    """What the model is, for one audited initialization: its weight layers, residual blocks and chains."""

    run: str
    summary: str
    layers: tuple[StructureRow, ...]
    blocks: tuple[BlockRow, ...]

    @property
    def minor(self) -> int:
        """Rows the PDF leaves out (:attr:`StructureRow.minor`)."""
        return sum(r.minor for r in self.layers)


@dataclass(frozen=True)
class Finding:
    """One verdict as table row / plain-language finding."""

    run: str
    check: str
    family: str
    badge: Badge
    layers: str
    p_value: str
    effect: str
    message: str
    advice: str
    phase: str


@dataclass(frozen=True)
class FindingGroup:
    run: str
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class UnitSection:
    """Verdicts of the symmetry, dead-unit and saturation checks."""

    symmetry: tuple[Finding, ...]
    dead: tuple[Finding, ...]
    saturation: tuple[Finding, ...]


@dataclass(frozen=True)
class LayerRow:
    name: str
    module: str
    depth: int
    activation: str
    forward_var: str
    backward_var: str
    weight_var: str
    weight_vs_recommended: str = ""
    """Audit: Var(W) over the Var(W) of the initializer advised for the activation, e.g. "0.167x he"."""
    init: str = ""
    """Audit: how the weight was set ("PyTorch default", "re-initialized: he", ...)."""
    minor: bool = False
    """Not flagged by a verdict, not a block's output, not the first or last layer: in the HTML (inside the
    collapsible full table) but left out of the PDF."""


@dataclass(frozen=True)
class LayerTable:
    """Per-layer statistics at initialization for one run (the audit variant's main table); ``weights``:
    show the rows' ``weight_vs_recommended`` and ``init`` columns."""

    run: str
    rows: tuple[LayerRow, ...]
    weights: bool = False

    @property
    def minor(self) -> int:
        """Rows the PDF leaves out (:attr:`LayerRow.minor`)."""
        return sum(r.minor for r in self.rows)


@dataclass(frozen=True)
class Method:
    """One check's method; ``flagged``: a verdict of this report warns or fails by it (the PDF prints only
    those; the HTML has every method of a check this report ran)."""

    check: str
    title: str
    description: str
    null_hypothesis: str
    threshold: str
    flagged: bool = True


@dataclass(frozen=True)
class DataFile:
    name: str
    md5: str


@dataclass(frozen=True)
class Provenance:
    command: str
    date: str
    versions: str
    seeds: str
    dataset: str
    source: str
    sizes: str
    duration: str
    machine: str
    files: tuple[DataFile, ...]
    environment: tuple[KeyValue, ...]
    config: tuple[KeyValue, ...]
    framework: tuple[KeyValue, ...] = ()
    """A training's framework settings (optimizer, learning rate, epochs, precision, ...)."""


@dataclass(frozen=True)
class RepairRow:
    """One parameter a repair changed: its layer, its name, its std before and after, the gain, the checks
    it answers and the rule applied."""

    layer: str
    param: str
    old_std: str
    new_std: str
    gain: str
    answers: str
    rule: str


@dataclass(frozen=True)
class RepairSection:
    """A fix report's repair: the one-line answers (``audit``, ``training``: empty without a verification),
    its badge, how the repair went (``method``), the changed parameters, the layers not converged and not
    repaired, and the verification training's figure. ``changed`` False: the model was left as it was
    (``audit`` says so and the rest is empty)."""

    changed: bool
    badge: Badge
    audit: str
    training: str
    method: str
    rows: tuple[RepairRow, ...]
    unconverged: tuple[str, ...]
    unrepaired: tuple[str, ...]
    figure: Figure | None


@dataclass(frozen=True)
class ReportContext:
    """Everything the template shows. ``kind`` is a result kind ("experiment", "audit", "training", "fix"; an
    audit or a fix trains nothing: ``accuracy`` is None and ``layer_tables`` holds the per-layer tables);
    optional sections are None or empty."""

    kind: str
    title: str
    model: str
    generated: str
    provenance: Provenance
    notices: tuple[str, ...]
    missing: tuple[str, ...]
    grid: VerdictGrid
    accuracy: AccuracySection | None
    signal: SignalSection | None
    units: UnitSection
    findings: tuple[FindingGroup, ...]
    methods: tuple[Method, ...]
    layer_tables: tuple[LayerTable, ...] = ()
    structure: tuple[StructureSection, ...] = ()
    recommendation: str = ""
    """Audit: the initializer to use and the evidence (shown under the verdict summary)."""
    kept: tuple[str, ...] = ()
    """Audit: per initializer, the weights it left as they were and why (shown under the recommendation)."""
    blind: tuple[Any, ...] = ()
    """What variance cannot see: one :class:`~initdiag.report.blind.BlindSection` per check with verdicts."""
    repair: RepairSection | None = None
    """Fix: what the repair changed and whether the repaired model passes and trains better."""
    loss: Figure | None = None
    """Experiment, training: the training loss per step of every run."""
    answer: Any = None
    """Page 1: the :class:`~initdiag.report.answer.Answer` (what was run, the verdict, findings, figures)."""

    @property
    def toc(self) -> tuple[TocEntry, ...]:
        """The sections present, in order, with their anchor ids."""
        entries = [TocEntry("summary", "Verdict summary")]
        if self.repair is not None:
            entries.append(TocEntry("repair", "Repair"))
        if self.accuracy is not None:
            entries.append(TocEntry("accuracy", "Accuracy comparison"))
        if self.loss is not None:
            entries.append(TocEntry("loss", "Training loss"))
        if self.structure:
            entries.append(TocEntry("structure", "Structure"))
        if self.layer_tables:
            entries.append(TocEntry("layers", "Layers at initialization"))
        if self.signal is not None:
            entries.append(TocEntry("signal", "Signal propagation"))
        if self.blind:
            entries.append(TocEntry("blind", "What variance cannot see"))
        entries += [TocEntry("units", "Symmetry, dead and saturated units"),
                    TocEntry("findings", "Findings and advice"), TocEntry("methods", "Methods"),
                    TocEntry("provenance", "Provenance")]
        return tuple(entries)
