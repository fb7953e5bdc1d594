"""The report's methods section: what each check computes, its null hypothesis and its threshold.

Each registered check writes its own entries (:meth:`~initdiag.checks.registry.Check.methods`); the accuracy
comparisons and the theory overlay, which are not checks, add theirs.
"""

from __future__ import annotations

from collections.abc import Iterable

from .compare import comparison_methods
from .overlay import THEORY_METHOD
from .registry import CHECKS, Check, MethodNote
from .verdict import DEFAULT_THRESHOLDS, Thresholds

__all__ = ["MethodNote", "methods"]


def methods(th: Thresholds = DEFAULT_THRESHOLDS, checks: Iterable[Check] | None = None) -> tuple[MethodNote, ...]:
    """The methods section, with the thresholds of ``th`` written in: each check's entries (every registered
    check by default) in registry order, then the accuracy comparisons and the theory overlay."""
    notes = [note for check in (CHECKS if checks is None else checks) for note in check.methods(th)]
    return (*notes, *comparison_methods(th), THEORY_METHOD)
