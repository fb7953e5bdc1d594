"""The report's structure section (what the model is) and the residual-stream figures."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..results import AuditRun, RunResult, TrainingRun
from ..structure import Structure
from ..vocab import Kind, Role, Stat, Status
from . import plots
from .context import BlockRow, Figure, StructureRow, StructureSection
from .format import fmt

__all__ = ["MAJOR_ROWS", "major_blocks", "major_layers", "stream_figures", "structure_section"]

Run = RunResult | AuditRun | TrainingRun


def _fans(fan_in: float, fan_out: float) -> str:
    return f"{fmt(fan_in, 4)} / {fmt(fan_out, 4)}"


MAJOR_ROWS = 24
"""A per-layer table of at most this many rows is printed whole; a longer one prints the layers that matter."""

MAJOR_BLOCKS = 6
"""A block table of at most this many blocks is printed whole; a longer one prints the blocks that matter."""

FLAGGED_ROWS = 6
"""Of the layers failing or warning verdicts name, a printed table keeps the first and the last this many."""

DEVIATING_ROWS = 3
"""A printed table keeps this many layers whose weight variance is furthest (beyond 2x) from the advised one."""


def _flagged(run: Run) -> set[str]:
    """The layers and blocks a failing or warning verdict of ``run`` names."""
    return {n for v in run.verdicts if v.status != Status.PASS for n in v.layers}


def major_blocks(run: Run) -> set[str]:
    """The residual blocks a printed table keeps: the first, the last and those a non-passing verdict names."""
    if run.structure is None or not run.structure.blocks:
        return set()
    named = _flagged(run)
    blocks = run.structure.blocks
    return {blocks[0].name, blocks[-1].name} | {b.name for b in blocks if b.name in named}


def major_layers(run: Run) -> set[str]:
    """The layers a printed table keeps, a number that does not grow with depth: the first and the last
    :data:`FLAGGED_ROWS` layers non-passing verdicts name, the first and the last layer, each kept block's
    (:func:`major_blocks`) output and first weight layer, and the :data:`DEVIATING_ROWS` weight layers whose
    weight variance is furthest from the one advised for their activation (beyond a factor 2)."""
    order = {la.name: i for i, la in enumerate(run.layers)}
    flagged = sorted(_flagged(run), key=lambda n: order.get(n, len(order)))
    keep = set(flagged[:FLAGGED_ROWS] + flagged[-FLAGGED_ROWS:])
    blocks = major_blocks(run)
    keep |= blocks
    if run.structure is not None:
        firsts: dict[str, str] = {}
        for la in run.structure.weight_layers:
            if la.block is not None:
                firsts.setdefault(la.block, la.name)
        keep |= {firsts[b] for b in blocks if b in firsts}
    if run.layers:
        keep |= {run.layers[0].name, run.layers[-1].name}
    off = sorted(((abs(math.log(w.ratio)), w.layer) for w in (run.weights if isinstance(run, AuditRun) else ())
                  if w.ratio is not None and w.ratio > 0 and abs(math.log(w.ratio)) > math.log(2.0)), reverse=True)
    keep |= {name for _, name in off[:DEVIATING_ROWS]}
    return keep


def structure_section(run: AuditRun) -> StructureSection | None:
    """The structure table of one audited initialization (None when the structure is not known)."""
    s = run.structure
    if s is None:
        return None
    weights = {w.layer: w for w in run.weights}
    rows = []
    major = major_layers(run) if len(s.weight_layers) > MAJOR_ROWS else {la.name for la in s.weight_layers}
    major |= {s.weight_layers[0].name, s.weight_layers[-1].name} if s.weight_layers else set()
    for layer in s.weight_layers:
        act = layer.activation
        w = weights.get(layer.module_name)
        init = "—" if w is None else ("re-initialized" if w.reinitialized else "PyTorch default" if w.default_init
                                      else "as given")
        if w is not None and w.ratio is not None:
            init += f", Var(W) {fmt(w.ratio)}x {w.recommended}"
        rows.append(StructureRow(layer.block or "—", layer.name, layer.module_type, layer.op,
                                 f"{act.name} ({act.source})" if act.name != "linear" else "linear",
                                 layer.norm_after or "—", _fans(layer.fan_in, layer.fan_out)
                                 + (" (constant input)" if layer.constant_input else ""), init,
                                 layer.name not in major))
    theory = run.stream.rules if run.stream is not None else ()
    kept = major_blocks(run) if len(s.blocks) > MAJOR_BLOCKS else {b.name for b in s.blocks}
    blocks = tuple(BlockRow(b.index, b.name, b.module_type, b.residual_adds,
                            ("normalized" if b.branch_normalized else "not normalized") + (", post-norm" if b.post_norm
                                                                                             else ""),
                            b.shortcut if isinstance(b.shortcut, str) else ", ".join(b.shortcut),
                            theory[b.index] if b.index < len(theory) else "—", b.name not in kept)
                   for b in s.blocks)
    return StructureSection(run.label, _summary(s), tuple(rows), blocks)


def _summary(s: Structure) -> str:
    chains = s.segments()
    longest = max((len(c) for c in chains), default=0)
    acts = sorted({w.activation.name for w in s.weight_layers if w.activation.name != "linear"})
    return (f"{len(s.weight_layers)} weight layers ({len(chains)} chains between normalizations, residual adds "
            f"and block boundaries; the longest has {longest}), {len(s.norms)} normalization layers, "
            f"{len(s.blocks)} residual blocks; activations: {', '.join(acts) or 'none'}.")


def stream_figures(runs: Sequence[Run], labels: Sequence[str], styles: dict[str, int],
                   legend: str = "initializer") -> tuple[Figure, ...]:
    """Per block, the residual stream's average channel variance (forward: with the theory's prediction) and
    average channel squared mean, and the variance of its gradient (backward): Brock et al. 2021's
    signal-propagation plots."""
    firsts = [next(r for r in runs if r.label == label) for label in labels]
    sites = list(dict.fromkeys(la.name for r in firsts for la in sorted(
        (la for la in r.layers if la.role == Role.BLOCK), key=lambda la: la.depth)))
    if len(sites) < 3:
        return ()
    figures = []
    for kind, title, fid in ((Kind.FORWARD, "Residual stream per block at initialization", "fig-stream-forward"),
                             (Kind.BACKWARD, "Gradient on the residual stream per block", "fig-stream-backward")):
        values: dict[str, list[float | None]] = {}
        theory: dict[str, list[float | None]] = {}
        for run in firsts:
            frame = run.frame
            step = frame.loc[frame["kind"] == kind, "step"].min() if len(frame) else 0
            rows = frame[(frame["kind"] == kind) & (frame["step"] == step)]
            for stat, suffix in ((Stat.VAR, ""), (Stat.MEAN_SQ, " (channel mean²)")):
                got = rows[rows["stat"] == stat]
                by_site = dict(zip(got["layer"].astype(str), got["value"].astype(float), strict=True))
                values[run.label + suffix] = [by_site.get(s) for s in sites]
            if kind == Kind.FORWARD and run.stream is not None and len(run.stream.values) == len(sites):
                theory[run.label] = list(run.stream.values)
        svg = plots.layer_profile(values, sites, title=title, ylabel="average over channels (log scale)", salt=fid,
                                  styles={**styles, **{f"{k} (channel mean²)": styles.get(k, 0) + 4 for k in styles}},
                                  xlabel="stream: entering the first block, then after each block",
                                  theory=theory or None, theory_label="theory (thin dashed)", legend_title=legend)
        caption = ("Average over channels of the variance (and of the squared mean) of the stream after each "
                   "residual block, at the first batch; thin dashed: the variance theory predicts (each block adds "
                   "Var(f(x)); normalized branches add a fixed amount, unnormalized ones a multiple of the stream)."
                   if kind == Kind.FORWARD else
                   "Variance of dL/d(stream) after each block, at the first batch: it grows toward the input when "
                   "the branches multiply the gradient.")
        figures.append(Figure(fid, svg, caption))
    return tuple(figures)
