"""``initdiag compare BASE NEW``: what changed between two results' ``summary.json`` (a review of a change).

Reads two summaries of the same kind and schema version (:func:`load_summary`), matches their runs by name (when
no name is shared and each has one run, the two single runs are paired) and reports (:func:`compare`):

* verdicts, keyed by (run, check, outcome, signal): those whose status got worse in NEW (pass -> warn/fail,
  warn -> fail; a key absent from a summary counts as passed) and those resolved (the reverse);
* per layer, the forward and backward variance at initialization (``activation_variance_init``,
  ``gradient_variance_init``) where ``new / base >= factor`` or ``<= 1 / factor``. This is a ratio threshold,
  not a statistical test: ``summary.json`` carries no per-layer interval;
* weight layers (layers with a ``weight_variance_init``) added, removed, or re-initialized (weight variance
  ratio beyond ``factor``, the same rule);
* test accuracy where both runs trained, with the two-proportion z-test of :func:`two_proportion_z` when both
  test sizes are known.

Exit codes of the command: 3 when NEW fails a check (among ``--fail-on``, a check's name or outcome) that BASE
did not fail, 0 otherwise, 2 on bad input (one line on stderr). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, UsageError
from .jsonable import json_safe

__all__ = ["ALPHA", "DEFAULT_FACTOR", "AccuracyChange", "Comparison", "LayerChange", "VerdictChange", "WeightChange",
           "compare", "load_summary", "to_json", "two_proportion_z"]

DEFAULT_FACTOR = 2.0
"""A variance changed when ``new / base`` is at least this, or at most its inverse (``--factor``)."""
ALPHA = 0.05
"""Significance level of the accuracy z-test: a difference is called significant when ``p < ALPHA``."""
LAYER_STATS = ("activation_variance_init", "gradient_variance_init")
"""The per-layer statistics compared (``summary.json``'s names)."""
WEIGHT_STAT = "weight_variance_init"
_RANK = {"pass": 0, "warn": 1, "fail": 2}
_SUMMARY = "summary.json"


@dataclass(frozen=True)
class VerdictChange:
    """A verdict whose status changed: ``base`` and ``new`` are ``pass`` (also: absent), ``warn`` or ``fail``."""

    run: str
    check: str
    outcome: str
    signal: str | None
    base: str
    new: str
    layers: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class LayerChange:
    """A per-layer variance whose ratio ``new / base`` is beyond the factor (``ratio`` None when ``base`` is 0)."""

    run: str
    layer: str
    stat: str
    base: float
    new: float
    ratio: float | None


@dataclass(frozen=True)
class WeightChange:
    """A weight layer ``added``, ``removed`` or ``reinitialized`` (weight variance ratio beyond the factor)."""

    run: str
    layer: str
    change: str
    base: float | None
    new: float | None
    ratio: float | None


@dataclass(frozen=True)
class AccuracyChange:
    """Test accuracy (fraction correct) of a run in both results; ``z``/``p_value`` None without both test sizes."""

    run: str
    base: float
    new: float
    difference: float
    base_n: int | None
    new_n: int | None
    z: float | None
    p_value: float | None
    significant: bool | None


@dataclass(frozen=True)
class Comparison:
    """What changed from ``base`` to ``new`` (labels: where each came from)."""

    kind: str
    base: str
    new: str
    factor: float
    alpha: float
    runs: tuple[str, ...]
    runs_added: tuple[str, ...]
    runs_removed: tuple[str, ...]
    worse: tuple[VerdictChange, ...]
    resolved: tuple[VerdictChange, ...]
    layers: tuple[LayerChange, ...]
    weights: tuple[WeightChange, ...]
    accuracy: tuple[AccuracyChange, ...]

    def regressions(self, names: Sequence[str] = ()) -> tuple[VerdictChange, ...]:
        """Checks NEW fails that BASE did not, among ``names`` (a check's name or outcome; all when empty)."""
        return tuple(v for v in self.worse if v.new == "fail" and (not names or {v.check, v.outcome} & set(names)))

    def verdict_line(self) -> str:
        """One line: worse, better or unchanged, with the counts."""
        fails = sorted({v.check for v in self.worse if v.new == "fail"})
        warns = sorted({v.check for v in self.worse if v.new == "warn"})
        head = "Worse" if self.worse else "Better" if self.resolved else "No verdict changed"
        parts = [f"newly fails {', '.join(fails)}" if fails else "", f"newly warns {', '.join(warns)}" if warns else "",
                 f"{len(self.resolved)} resolved" if self.resolved else "",
                 f"{len(self.layers)} layer variances changed by {self.factor:g}x or more" if self.layers else "",
                 f"{len(self.weights)} weight layers added, removed or re-initialized" if self.weights else ""]
        sig = [a for a in self.accuracy if a.significant]
        if sig:
            parts.append("accuracy " + ", ".join(f"{a.difference:+.2%} (p={a.p_value:.2g})" for a in sig))
        text = "; ".join(p for p in parts if p)
        runs = f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"
        return f"**{head}**" + (f": {text}" if text else "") + f" ({self.kind}, {runs} compared)"


def load_summary(path: str | Path) -> dict[str, Any]:
    """The ``summary.json`` at ``path`` (a file, or a report folder holding one); DataError when missing,
    not JSON or not an initdiag summary (no ``tool: initdiag``, ``schema_version``, ``kind`` or ``runs``)."""
    path = Path(path)
    file = path / _SUMMARY if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no such file: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not (isinstance(data, dict) and data.get("tool") == "initdiag" and "schema_version" in data
            and isinstance(data.get("kind"), str) and isinstance(data.get("runs"), list)):
        raise DataError(f"{file} is not an initdiag summary.json (no tool/schema_version/kind/runs)")
    return data


def two_proportion_z(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float] | None:
    """Pooled two-proportion z-test of H0: both accuracies are equal, two-sided.

    ``p = (p1 n1 + p2 n2) / (n1 + n2)``, ``z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2))``,
    ``p_value = erfc(|z| / sqrt 2)``; significant when ``p_value < ALPHA`` (0.05). It assumes independent
    samples; two runs scored on the same test set are positively correlated, which makes it conservative
    (McNemar's test would be exact but needs per-example outcomes, which ``summary.json`` does not hold).
    None when a size is not positive or the pooled proportion is 0 or 1 (no variance)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if not var > 0:
        return None
    z = (p2 - p1) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _beyond(base: float, new: float, factor: float) -> tuple[bool, float | None]:
    if base <= 0:
        return new > 0, None
    ratio = new / base
    return ratio >= factor or ratio <= 1 / factor, ratio


def _verdicts(run: Mapping[str, Any]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    """The worst verdict per (check, outcome, signal), its layers the union over verdicts of that key."""
    out: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for v in run.get("verdicts") or []:
        key = (str(v.get("check")), str(v.get("outcome") or ""), v.get("signal"))
        status = str(v.get("status", "pass"))
        seen = out.get(key)
        layers = tuple(dict.fromkeys([*(seen["layers"] if seen else ()), *map(str, v.get("layers") or ())]))
        if seen is None or _RANK.get(status, 0) > _RANK.get(seen["status"], 0):
            seen = {"status": status, "message": str(v.get("message") or "")}
        out[key] = {**seen, "layers": layers}
    return out


def _verdict_changes(label: str, base: Mapping[str, Any], new: Mapping[str, Any]
                     ) -> tuple[list[VerdictChange], list[VerdictChange]]:
    b, n = _verdicts(base), _verdicts(new)
    worse: list[VerdictChange] = []
    resolved: list[VerdictChange] = []
    for key in dict.fromkeys([*b, *n]):
        was, now = b.get(key, {"status": "pass"}), n.get(key, {"status": "pass"})
        rb, rn = _RANK.get(was["status"], 0), _RANK.get(now["status"], 0)
        if rb == rn:
            continue
        side = now if rn > rb else was
        change = VerdictChange(label, key[0], key[1], key[2], was["status"], now["status"], side["layers"],
                               side["message"])
        (worse if rn > rb else resolved).append(change)
    return worse, resolved


def _layers(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(layer["name"]): layer for layer in run.get("layers") or [] if "name" in layer}


def _layer_changes(label: str, base: Mapping[str, Any], new: Mapping[str, Any], factor: float
                   ) -> tuple[list[LayerChange], list[WeightChange]]:
    b, n = _layers(base), _layers(new)
    changes, weights = [], []
    for name in b.keys() & n.keys():
        for stat in LAYER_STATS:
            x, y = _num(b[name].get(stat)), _num(n[name].get(stat))
            if x is not None and y is not None and (hit := _beyond(x, y, factor))[0]:
                changes.append(LayerChange(label, name, stat, x, y, hit[1]))
    bw = {k: _num(v.get(WEIGHT_STAT)) for k, v in b.items() if _num(v.get(WEIGHT_STAT)) is not None}
    nw = {k: _num(v.get(WEIGHT_STAT)) for k, v in n.items() if _num(v.get(WEIGHT_STAT)) is not None}
    for name, x in bw.items():
        y = nw.get(name)
        if y is None:
            weights.append(WeightChange(label, name, "removed", x, None, None))
        elif x is not None and (hit := _beyond(x, y, factor))[0]:
            weights.append(WeightChange(label, name, "reinitialized", x, y, hit[1]))
    weights += [WeightChange(label, name, "added", None, y, None) for name, y in nw.items() if name not in bw]
    order = {name: i for i, name in enumerate([*n, *b])}
    changes.sort(key=lambda c: (order[c.layer], c.stat))
    weights.sort(key=lambda w: order[w.layer])
    return changes, weights


def _size(summary: Mapping[str, Any]) -> int | None:
    n = (summary.get("dataset") or {}).get("test_size")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _accuracy(label: str, base: Mapping[str, Any], new: Mapping[str, Any], nb: int | None, nn: int | None
              ) -> AccuracyChange | None:
    x, y = _num(base.get("test_accuracy")), _num(new.get("test_accuracy"))
    if x is None or y is None:
        return None
    test = two_proportion_z(x, nb, y, nn) if nb and nn else None
    return AccuracyChange(label, x, y, y - x, nb, nn, test[0] if test else None, test[1] if test else None,
                          test[1] < ALPHA if test else None)


def _pairs(base: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[tuple[str, Any, Any]], list[str], list[str]]:
    """Runs matched by name (label, base run, new run); when none match and each side has one run, the two."""
    b = {str(r.get("name")): r for r in base["runs"]}
    n = {str(r.get("name")): r for r in new["runs"]}
    common = [k for k in n if k in b]
    if not common and len(b) == 1 and len(n) == 1:
        (kb, rb), (kn, rn) = next(iter(b.items())), next(iter(n.items()))
        return [(f"{kb} -> {kn}", rb, rn)], [], []
    return [(k, b[k], n[k]) for k in common], [k for k in n if k not in b], [k for k in b if k not in n]


def compare(base: Mapping[str, Any], new: Mapping[str, Any], factor: float = DEFAULT_FACTOR,
            labels: tuple[str, str] = ("BASE", "NEW")) -> Comparison:
    """What changed from ``base`` to ``new`` (two ``summary.json`` dicts of the same kind and schema version;
    UsageError otherwise). ``factor`` (> 1): the variance ratio beyond which a layer counts as changed."""
    if not factor > 1:
        raise UsageError(f"--factor must be greater than 1 (got {factor:g})")
    if base.get("kind") != new.get("kind"):
        raise UsageError(f"cannot compare a {base.get('kind')} with a {new.get('kind')}: the kinds differ")
    if base.get("schema_version") != new.get("schema_version"):
        raise UsageError(f"schema versions differ ({base.get('schema_version')} vs {new.get('schema_version')}): "
                         "regenerate the older summary with this initdiag")
    pairs, added, removed = _pairs(base, new)
    worse: list[VerdictChange] = []
    resolved: list[VerdictChange] = []
    layers: list[LayerChange] = []
    weights: list[WeightChange] = []
    accuracy: list[AccuracyChange] = []
    nb, nn = _size(base), _size(new)
    for label, rb, rn in pairs:
        w, r = _verdict_changes(label, rb, rn)
        lc, wc = _layer_changes(label, rb, rn, factor)
        worse += w
        resolved += r
        layers += lc
        weights += wc
        if (acc := _accuracy(label, rb, rn, nb, nn)) is not None:
            accuracy.append(acc)
    return Comparison(str(new["kind"]), labels[0], labels[1], factor, ALPHA, tuple(p[0] for p in pairs),
                      tuple(added), tuple(removed), tuple(worse), tuple(resolved), tuple(layers), tuple(weights),
                      tuple(accuracy))


def to_json(c: Comparison) -> dict[str, Any]:
    """``compare.json``: the comparison as strictly valid JSON (infinities as null), with the rules stated."""
    data: dict[str, Any] = {"tool": "initdiag", "kind": "compare", "compared_kind": c.kind, "verdict": c.verdict_line(),
                            **{k: v for k, v in asdict(c).items() if k != "kind"}}
    data["rules"] = {
        "verdicts": "keyed by (run, check, outcome, signal); absent counts as pass; worse = status rank rose",
        "layers": f"new/base >= {c.factor:g} or <= 1/{c.factor:g} (a ratio threshold; no per-layer intervals)",
        "accuracy": f"pooled two-proportion z-test, H0 equal accuracy, two-sided, significant when p < {c.alpha:g}"}
    cleaned: dict[str, Any] = json_safe(data)
    return cleaned
