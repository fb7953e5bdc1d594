"""Symmetry: identical neurons (exact groups) and near-duplicates (largest |cosine| against independent rows)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..recording.snapshots import Weights
from ..vocab import CheckName, Family, Need, Phase, Signal, Status
from .chains import design_notes_of
from .compare import holm
from .cosine import (
    blocked_max_cos,
    finite_rows,
    max_cos,
    max_cosine_pvalue,
    native_rows,
    neuron_rows,
    projection_vectors,
    projections,
)
from .evidence import RunEvidence, init_advice
from .registry import AnalysisContext, Check, MethodNote
from .verdict import Thresholds, Verdict

__all__ = ["SymmetryCheck", "max_cosine_pvalue", "neuron_rows", "symmetry_groups", "symmetry_verdict"]

_DEFAULT = Thresholds()
_EPS = float(np.finfo(np.float64).eps)


def symmetry_groups(weight: np.ndarray, bias: np.ndarray | None, atol: float,
                    rtol: float = 0.0) -> list[list[int]]:
    """Groups (size >= 2, indices ascending, ordered by first index) of identical neurons.

    Neuron ``i`` joins a group when ``|row_i,k - row_j,k| <= atol + rtol * scale_k`` for every entry ``k``
    and the group's first row ``j`` (rows from :func:`neuron_rows`; rows with NaN/Inf join none), where
    ``scale_k`` is the largest |weight| for a weight entry and the largest |bias| for the bias: the two are
    different parameters, and a bias of 1 next to weights of 1e-6 (a gate that starts open, gMLP) must not
    make every weight row "equal" within 1e-5. Rows are visited in the order of a fixed random projection, so
    only rows whose projections are within the tolerance are compared: about ``O(out * in)`` work for a random
    layer or a fully symmetric one.
    """
    return _groups(native_rows(weight, bias), atol, rtol, bias is not None)


def _groups(rows: np.ndarray, atol: float, rtol: float, has_bias: bool = False,
            proj: np.ndarray | None = None) -> list[list[int]]:
    """:func:`symmetry_groups` of the rows of :func:`neuron_rows` (float32 or float64; the bias last when
    ``has_bias``), projected (``proj``: their :func:`~.cosine.projections` when taken) and compared in
    float64."""
    d = rows.shape[1]
    proj = projections(rows) if proj is None else proj
    finite = np.flatnonzero(finite_rows(rows, proj))
    if len(finite) < 2:
        return []
    if len(finite) < len(rows):
        rows, proj = rows[finite], proj[finite]
    split = d - 1 if has_bias and d > 1 else d
    scales = np.array([max(-float(part.min(initial=0.0)), float(part.max(initial=0.0)))  # no |rows| copy
                       for part in (rows[:, :split], rows[:, split:])])
    scale = np.full(d, scales[0])
    scale[split:] = scales[1]
    tol = atol + rtol * scale
    # |p_i - p_j| within it on both projections when rows match
    window = (tol + 2 * d * _EPS * scale) @ projection_vectors(d)
    if not np.isfinite(proj).all():  # finite rows whose float64 projections overflowed: compare them by value
        proj = np.nan_to_num(proj, nan=0.0, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    order = np.argsort(proj[:, 0], kind="stable")
    first, second = proj[order, 0], proj[order, 1]
    if not (np.diff(first) <= window[0]).any():  # no two projections close enough for any pair to match
        return []
    # Candidate pairs: sorted positions k < k + o within the window on the first projection (o = 1, 2, ...
    # until none is) and on the second; only they are compared entry by entry. Densely packed projections
    # (many near-equal rows) take the leader scan over runs instead.
    cand: list[np.ndarray] = []
    for o in range(1, len(order)):
        near = first[o:] - first[:-o] <= window[0]
        if not near.any():
            break
        if o > _MAX_OFFSET:
            return _dense_groups(rows, proj[:, 0], order, finite, float(window[0]), tol)
        k = np.flatnonzero(near & (np.abs(second[o:] - second[:-o]) <= window[1]))
        cand.append(np.stack([k, k + o], axis=1))
    pairs = np.concatenate(cand) if cand else np.empty((0, 2), np.int64)
    matched = [pair for pair in pairs
               if (np.abs(rows[order[pair[0]]].astype(np.float64) - rows[order[pair[1]]]) <= tol).all()]
    if not matched:
        return []
    involved = np.unique(np.asarray(matched).reshape(-1))  # sorted positions: ascending first projection
    return sorted(_run_groups(rows, proj[:, 0], order[involved], finite, float(window[0]), tol))


_MAX_OFFSET = 64
"""Beyond this many sorted neighbours within the window, :func:`_groups` scans runs with leaders instead."""


def _dense_groups(rows: np.ndarray, proj: np.ndarray, order: np.ndarray, finite: np.ndarray, window: float,
                  tol: np.ndarray) -> list[list[int]]:
    """:func:`_groups` by the leader scan over each run of sorted projections with gaps <= ``window`` (a row
    alone in its run matches no other row)."""
    close = np.concatenate(([False], np.diff(proj[order]) <= window, [False])).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(close) == 1), np.flatnonzero(np.diff(close) == -1) + 1
    found: list[list[int]] = []
    for a, b in zip(starts, ends, strict=True):
        found.extend(_run_groups(rows, proj, order[a:b], finite, window, tol))
    return sorted(found)


def _run_groups(rows: np.ndarray, proj: np.ndarray, run: np.ndarray, finite: np.ndarray, window: float,
                tol: np.ndarray) -> list[list[int]]:
    """The groups among the rows ``run`` (positions in ``rows``, in ascending projection): each row joins the
    first earlier leader within ``window`` of its projection that it matches entry by entry, else leads."""
    block = rows[run].astype(np.float64)
    leader_proj: list[float] = []
    leaders: list[int] = []
    members: list[list[int]] = []
    for k, pos in enumerate(run):
        i, p = int(finite[pos]), float(proj[pos])
        lo = bisect.bisect_left(leader_proj, p - window)
        if lo < len(leaders):
            diff = np.abs(block[leaders[lo:]] - block[k])
            hit = np.flatnonzero((diff <= tol).all(axis=1))
            if hit.size:
                members[lo + int(hit[0])].append(i)
                continue
        leader_proj.append(p)
        leaders.append(k)
        members.append([i])
    return [sorted(m) for m in members if len(m) >= 2]


def _groups_text(groups: list[list[int]], n: int) -> str:
    if len(groups) == 1 and len(groups[0]) == n:
        return f"all {n} neurons identical"
    shown = []
    for g in groups[:3]:
        shown.append(f"neurons {', '.join(map(str, g))}" if len(g) <= 4 else f"{len(g)} neurons ({g[0]}, {g[1]}, ...)")
    more = f" and {len(groups) - 3} more groups" if len(groups) > 3 else ""
    return "; ".join(shown) + more + " identical"


def _persisted(init: list[list[int]], final: list[list[int]]) -> bool:
    """True when every group of identical neurons at init is still within one group at the end."""
    where = {i: k for k, g in enumerate(final) for i in g}
    return bool(init) and all(len({where.get(i, -1 - i) for i in g}) == 1 for g in init)


def _layer_report(name: str, weight: np.ndarray, bias: np.ndarray | None, th: Thresholds,
                  rng: np.random.Generator, input_groups: int = 1) -> dict[str, Any]:
    """Identical neurons and the cosine test of one layer. With ``input_groups`` > 1 (a grouped or depthwise
    convolution) only neurons of one group read the same inputs, so groups and pairs are taken within each
    block of ``n / input_groups`` consecutive neurons: neurons reading different inputs get different
    gradients and are never symmetric, whatever their weights (a depthwise layer has no pair at all)."""
    rows = native_rows(weight, bias)
    proj = projections(rows)  # one pass over the layer, shared by the groups and the cosine test
    n = int(rows.shape[0])
    blocks = input_groups if input_groups > 1 and n % input_groups == 0 else 1
    size = n // blocks
    groups = [[b * size + i for i in g] for b in range(blocks)
              for g in _groups(rows[b * size:(b + 1) * size], th.symmetry_atol, th.symmetry_rtol, bias is not None,
                               proj[b * size:(b + 1) * size])]
    later = {i for g in groups for i in g[1:]}
    reps = np.array([i for i in range(n) if i not in later], dtype=np.int64)
    if blocks == 1:
        largest, p = max_cos(rows[reps] if later else rows, th.mc_samples, rng, th.cosine_max_rows,
                             proj[reps] if later else proj)
    else:
        largest, p = blocked_max_cos(rows, reps, blocks, size, th, rng, proj)
    return {"layer": name, "neurons": n, "distinct": n - len(later), "groups": groups, "max_cos": largest,
            "p_value": p, "rows_tested": int(min(len(reps), th.cosine_max_rows))}


def _breaks(group: list[int], grad: np.ndarray, grad_bias: np.ndarray | None, th: Thresholds) -> bool:
    """Whether the neurons of ``group`` get different gradients (so the first step makes them differ)."""
    rows = neuron_rows(grad, grad_bias)[group]
    if not np.isfinite(rows).all():
        return False
    tol = th.symmetry_atol + th.symmetry_rtol * float(np.abs(rows).max(initial=0.0))
    return bool(np.abs(rows - rows[0]).max(initial=0.0) > tol)


Report = dict[str, Any]


def _adjust(reports: list[Report], phase: str, before: dict[str, list[list[int]]]) -> None:
    """Holm-adjusts the layers' p-values (``p_adjusted``); after training, notes whether each layer's groups at
    init persisted (``persisted``)."""
    adjusted = holm([r["p_value"] for r in reports])
    for r, q in zip(reports, adjusted, strict=True):
        r["p_adjusted"] = float(q)
        if phase != "init":
            r["persisted"] = _persisted(before.get(r["layer"], []), r["groups"])


def _split_breaking(reports: list[Report], weights: Weights, grads: Weights, th: Thresholds) -> list[Report]:
    """Moves the groups whose neurons get different first-step gradients (``grads``) from ``groups`` to
    ``breaking``; returns the layers left with breaking groups only."""
    broken: list[Report] = []
    for r in reports:
        grad = grads.get(r["layer"])
        if r["groups"] and grad is not None and grad[0].shape == weights[r["layer"]][0].shape:
            r["breaking"] = [g for g in r["groups"] if _breaks(g, grad[0], grad[1], th)]
            r["groups"] = [g for g in r["groups"] if g not in r["breaking"]]
            if r["breaking"] and not r["groups"]:
                broken.append(r)
    return broken


def _persistence_text(reports: list[Report], before: dict[str, list[list[int]]], phase: str,
                      effect: dict[str, float | None]) -> str:
    """After training: how many layers that started with identical neurons kept them (also in ``effect``)."""
    if phase == "init" or not before:
        return ""
    started = [r for r in reports if before.get(r["layer"])]
    kept = [r for r in started if r["persisted"]]
    effect["persisted_layers"] = float(len(kept))
    if not started:
        return ""
    return (f" Symmetry persisted through training in {len(kept)} of the {len(started)} layers "
            "that started with identical neurons.")


def _effect(reports: list[Report], symmetric: list[Report], worst: Report | None) -> dict[str, float | None]:
    return {"layers_symmetric": float(len(symmetric)), "layers": float(len(reports)),
            "min_distinct_fraction": min(r["distinct"] / max(r["neurons"], 1) for r in reports),
            "max_cos": worst["max_cos"] if worst else None}


def _subsample_text(reports: list[Report], th: Thresholds) -> str:
    subsampled = [r["layer"] for r in reports if r["neurons"] > th.cosine_max_rows]
    return (f" (cosine test on a random {th.cosine_max_rows} neurons of layers "
            f"{', '.join(repr(s) for s in subsampled[:3])})" if subsampled else "")


def _symmetric_message(reports: list[Report], symmetric: list[Report], when: str) -> str:
    described = "; ".join(f"layer '{r['layer']}': {r['distinct']} distinct of {r['neurons']} "
                          f"({_groups_text(r['groups'], r['neurons'])})" for r in symmetric[:3])
    more = f"; and {len(symmetric) - 3} more layers" if len(symmetric) > 3 else ""
    return (f"{when.capitalize()}, {len(symmetric)} of {len(reports)} Conv/Linear layers have identical "
            f"neurons, which get identical gradients and cannot learn different features: {described}{more}.")


def _near_duplicate_message(flagged: list[Report], when: str, sub_text: str) -> str:
    described = "; ".join(f"layer '{r['layer']}': largest |cos| {r['max_cos']:.3f}, Holm-adjusted "
                          f"p = {r['p_adjusted']:.2g}" for r in flagged[:3])
    return (f"{when.capitalize()}, near-duplicate neurons: more similar than independent random rows "
            f"would be ({described}){sub_text}.")


def _pass_message(reports: list[Report], worst: Report | None, min_p: float, phase: str, when: str,
                  sub_text: str) -> str:
    if worst is not None and phase != "init":
        return (f"{when.capitalize()}, no identical neurons in {len(reports)} Conv/Linear layers; the largest "
                f"|cosine| between neurons is {worst['max_cos']:.3f} (layer '{worst['layer']}'), not tested: "
                f"trained neurons are not independent random rows.")
    if worst is not None:
        return (f"{when.capitalize()}, no identical neurons in {len(reports)} Conv/Linear layers; the largest "
                f"|cosine| between neurons ({worst['max_cos']:.3f}, layer '{worst['layer']}') is in line with "
                f"independent random rows (smallest Holm-adjusted p = {min_p:.2g}){sub_text}.")
    return f"{when.capitalize()}, no identical neurons in {len(reports)} Conv/Linear layers."


def _broken_text(broken: list[Report], steps: Mapping[str, int]) -> str:
    """``steps``: parameter -> the look-ahead step from which it learns (absent: 1)."""
    names = ", ".join(f"'{r['layer']}'" for r in broken[:3]) + (" ..." if len(broken) > 3 else "")
    layers = {r["layer"] for r in broken}
    late = max((s for p, s in steps.items() if p.rpartition(".")[0] in layers), default=1)
    when = "from the first step" if late == 1 else f"by step {late} (the look-ahead: a zero after them moves first)"
    return (f" Layers {names} start with identical neurons (e.g. zero-initialized) but each neuron gets its "
            f"own gradient, so they differ {when}: symmetry is broken by design.")


def symmetry_verdict(ev: RunEvidence, phase: str, th: Thresholds, rng: np.random.Generator,
                     init_reports: list[dict[str, Any]] | None = None,
                     extra: str = "") -> tuple[Verdict | None, list[dict[str, Any]]]:
    """Identical neurons (fail) or near-duplicates (warn) in the Conv/Linear layers at ``phase``.

    Exact: groups from :func:`symmetry_groups` with ``th.symmetry_atol``/``symmetry_rtol``; a group fails
    when it persists: at initialization, when the neurons' gradients of the first step (``ev.grads_init``)
    are identical too (identical weights and gradients stay identical; a zero-initialized output head or
    zero last layer of a residual branch gets a different gradient per unit and breaks at the first step,
    which passes with a note); without gradients, any group fails. Near-duplicates:
    :func:`max_cosine_pvalue` on one neuron per group, Holm-adjusted across the layers; warn when an
    adjusted p < ``th.near_duplicate_alpha``, at initialization only, since trained neurons are not
    independent random rows (the null). For ``final``, ``persisted`` says whether every group present at
    init is still identical.
    """
    weights: Weights = ev.weights_init if phase == "init" else ev.weights_final
    if not weights:
        return None, []
    reports = [_layer_report(name, w, b, th, rng, ev.input_groups.get(name, 1)) for name, (w, b) in weights.items()]
    before = {r["layer"]: r["groups"] for r in init_reports or []}
    _adjust(reports, phase, before)
    broken = _split_breaking(reports, weights, ev.grads_init, th) if phase == "init" else []
    symmetric = [r for r in reports if r["groups"]]
    # The null (independent random rows) describes an initialization: trained neurons are correlated by
    # learning, so near-duplicates are only tested at init; after training only exact groups count.
    flagged = [r for r in reports if r["p_adjusted"] < th.near_duplicate_alpha] if phase == "init" else []
    tested = [r for r in reports if math.isfinite(r["max_cos"])]
    worst = max(tested, key=lambda r: r["max_cos"]) if tested else None
    min_p = min((r["p_adjusted"] for r in tested), default=math.nan)
    p_value = min_p if math.isfinite(min_p) else None
    when = "at initialization" if phase == "init" else "after training"
    effect = _effect(reports, symmetric, worst)
    sub_text = _subsample_text(reports, th)
    persisted_text = _persistence_text(reports, before, phase, effect)
    details = {"layers": reports}
    if symmetric:
        return Verdict(CheckName.SYMMETRY, Signal.WEIGHTS, Status.FAIL.value, tuple(r["layer"] for r in symmetric),
                       p_value, effect, _symmetric_message(reports, symmetric, when) + persisted_text + extra,
                       "Use a random initializer to break the symmetry: " + init_advice(ev), phase, details), reports
    if flagged:
        return Verdict(CheckName.SYMMETRY, Signal.WEIGHTS, Status.WARN.value, tuple(r["layer"] for r in flagged),
                       min_p, effect, _near_duplicate_message(flagged, when, sub_text) + persisted_text,
                       "Check how these weights were set (copied rows, a low-rank or shared init); "
                       + init_advice(ev), phase, details), reports
    message = _pass_message(reports, worst, min_p, phase, when, sub_text) + persisted_text
    if broken:
        message += _broken_text(broken, ev.zero_steps)
        effect["layers_breaking"] = float(len(broken))
    return Verdict(CheckName.SYMMETRY, Signal.WEIGHTS, Status.PASS.value, (), p_value,
                   effect, message, None, phase, details), reports


class SymmetryCheck(Check):
    """Identical or near-duplicate neurons, at initialization and after training."""

    name = CheckName.SYMMETRY
    family = Family.SYMMETRY
    needs = frozenset({Need.WEIGHTS})
    always_shown = True

    def run(self, ctx: AnalysisContext) -> list[Verdict | None]:
        ev, th, rng = ctx.evidence, ctx.thresholds, ctx.rng()
        init, reports = symmetry_verdict(ev, Phase.INIT, th, rng, extra=ctx.derive(design_notes_of)["others"])
        final, _ = symmetry_verdict(ev, Phase.FINAL, th, rng, init_reports=reports)
        return [init, final]

    def methods(self, th: Thresholds) -> tuple[MethodNote, ...]:
        return (
            MethodNote(
                "symmetry", "Identical neurons",
                "Each neuron is a row of the Conv/Linear weight reshaped to (out, -1) with its bias appended. "
                "Neurons are grouped when every entry agrees within the tolerance, at initialization and after "
                "training; the report gives the number of distinct neurons, the groups, and whether each group "
                "persisted through training. Identical neurons get identical gradients, so they stay identical.",
                "not a statistical test (exact comparison within a float tolerance).",
                f"|difference| <= {th.symmetry_atol:g} + {th.symmetry_rtol:g} x max|weight| in every weight, "
                "x max|bias| in the bias; any group fails.",
            ),
            MethodNote(
                "symmetry", "Near-duplicate neurons",
                "The largest |cosine| between two distinct neurons of a layer (at most "
                f"{th.cosine_max_rows} random rows; columns zero in every row tested, such as zero biases, "
                "dropped) is compared with its distribution "
                "for independent random rows of the same shape: p = min(1, n(n-1)/2 x P(|cos| >= c)) with "
                "cos^2 ~ Beta(1/2, (d-1)/2) for one pair (a union bound over the pairs)"
                + (f", or Monte Carlo with {th.mc_samples} draws" if th.mc_samples > 0 else "")
                + ". p-values are Holm-adjusted across the run's layers. Tested at initialization only: trained "
                "neurons are correlated by learning, so the null does not describe them.",
                "the neurons are independent, isotropic random vectors (as drawn by a healthy random init).",
                f"warn when a Holm-adjusted p < {th.near_duplicate_alpha:g} (family-wise level per run).",
            ),
        )
