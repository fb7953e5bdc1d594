"""What the sweep report shows, as frozen dataclasses: ``templates/sweep.html.j2``'s whole input.

A sweep is a grid of model cells (model x depth x width x activation), each trained once per initializer x
seed; the report puts the cells side by side (verdicts, accuracy) and draws the depth and width curves.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import Badge, ComparisonRow, Figure, KeyValue, Provenance, TocEntry

__all__ = ["CellAccuracyRow", "CellComparisonRow", "CellGridRow", "SweepContext", "SweepGrid"]


@dataclass(frozen=True)
class CellGridRow:
    """One cell x initializer of the verdict grid: the worst status of each check family over the seeds
    (with several seeds, how many of them reached it, e.g. "fail 2/3")."""

    cell: str
    model: str
    depth: str
    width: str
    activation: str
    initializer: str
    cells: tuple[Badge, ...]


@dataclass(frozen=True)
class SweepGrid:
    columns: tuple[str, ...]
    rows: tuple[CellGridRow, ...]
    seeds: int


@dataclass(frozen=True)
class CellAccuracyRow:
    """Mean test accuracy of one cell x initializer over its seeds, with the 95% interval (n >= 2)."""

    cell: str
    initializer: str
    mean: str
    ci: str
    n: int
    diverged: int


@dataclass(frozen=True)
class CellComparisonRow:
    """One comparison between two initializers within a cell."""

    cell: str
    comparison: ComparisonRow


@dataclass(frozen=True)
class SweepContext:
    """Everything the sweep template shows; ``facts`` is what is particular to a sweep (backend, Ray
    address, cells, runs), shown above the shared provenance block."""

    title: str
    generated: str
    provenance: Provenance
    facts: tuple[KeyValue, ...]
    notices: tuple[str, ...]
    missing: tuple[str, ...]
    grid: SweepGrid
    accuracy: tuple[CellAccuracyRow, ...]
    comparisons: tuple[CellComparisonRow, ...]
    depth: tuple[Figure, ...]
    width: tuple[Figure, ...]
    depth_note: str
    width_note: str

    @property
    def toc(self) -> tuple[TocEntry, ...]:
        """The sections, in order, with their anchor ids."""
        return (TocEntry("summary", "Verdict grid per cell"), TocEntry("accuracy", "Accuracy per cell"),
                TocEntry("depth", "Depth curves"), TocEntry("width", "Width curves"),
                TocEntry("sweep", "The sweep: backend, cells, runs"), TocEntry("provenance", "Provenance"))
