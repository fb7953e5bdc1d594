"""How numbers, statuses and names look in the report (deterministic: the same value, the same text)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ..checks import Verdict
from ..jsonable import finite
from ..structure.layers import LayerInfo
from ..vocab import HEALTHY
from .context import Badge

__all__ = ["badge", "check_title", "fixed", "fmt", "fmt_p", "fmt_seconds", "layer_label", "layer_labels",
           "layers_text"]

_SYMBOLS = {"pass": "✓", "warn": "▲", "fail": "✗", "n/a": "–"}
RANK = {"n/a": 0, "pass": 1, "warn": 2, "fail": 3}
"""Statuses from the mildest, for the worst of several."""


def fmt(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits; "—" for None/NaN, "inf"/"-inf" kept as words."""
    if x is None:
        return "—"
    value = float(x)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def fixed(x: Any, decimals: int = 4) -> str:
    """``x`` with a fixed number of decimals (aligned columns of accuracies and losses); "—" for None/NaN."""
    value = finite(x)
    return "—" if value is None else f"{value:.{decimals}f}"


def fmt_p(p: Any) -> str:
    """A p-value: 3 significant digits, scientific below 0.001, "< 1e-300" at underflow."""
    value = finite(p)
    if value is None:
        return "—"
    if value == 0:
        return "< 1e-300"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def fmt_seconds(s: float) -> str:
    total = round(s)
    return f"{s:.1f} s ({total // 3600}:{total // 60 % 60:02d}:{total % 60:02d})"


def layers_text(layers: Sequence[str], limit: int = 8) -> str:
    if not layers:
        return "—"
    shown = ", ".join(layers[:limit])
    return shown + (f", … (+{len(layers) - limit} more)" if len(layers) > limit else "")


def badge(status: str, text: str | None = None) -> Badge:
    """A pass/warn/fail/n/a badge (an unknown status is n/a) saying ``text``, by default the status itself."""
    status = status if status in _SYMBOLS else "n/a"
    return Badge(status, _SYMBOLS[status], status if text is None else text)


def check_title(verdict: Verdict) -> str:
    """How a verdict is named in tables: its outcome where the check names several (``vanishing (forward)``),
    else its check (``dead``), with the signal it is about."""
    name = verdict.outcome if verdict.outcome not in (verdict.check, HEALTHY) else verdict.check
    return f"{name} ({verdict.signal})" if verdict.signal else name




_UNINFORMATIVE = re.compile(r"(?:^|[.@])\d+$")
"""A name whose last part is a number (``0``, ``features.3``, ``0@2``) says nothing about the layer."""


def layer_label(info: LayerInfo) -> str:
    """How a layer is named on a plot axis: ``0 Conv2d`` for a ``Sequential`` index, else its name."""
    return f"{info.name} {info.module}" if _UNINFORMATIVE.search(info.name) else info.name


def layer_labels(layers: Sequence[LayerInfo], names: Sequence[str]) -> list[str]:
    """:func:`layer_label` for each of ``names`` (the name itself where no run recorded the layer)."""
    infos = {la.name: la for la in layers}
    return [layer_label(infos[n]) if n in infos else n for n in names]
