"""``summary.json`` of a sweep: the experiment schema's envelope, with the cells and every run of the grid.

Strictly valid JSON (NaN/Inf become null), schema version 2 like an experiment's::

    {"schema_version": 2, "tool": "initdiag", "version": str, "kind": "sweep", "created": ISO-8601 UTC,
     "command": str, "backend": "local" | "ray", "ray_address": str | null,
     "dataset": {"name", "source", "kind", "train_size", "test_size", "files": {file: md5}},
     "config": SweepConfig.to_json(), "environment": {str: str}, "duration_seconds": float,
     "missing": ["cell/initializer/seedN", ...],
     "cells": [{"cell", "model", "depth", "width", "activation",
                "accuracy": {initializer: {"mean", "sd", "ci_low", "ci_high", "n"}},
                "comparisons": [Comparison.to_json()]}],
     "runs": [{"cell", "model", "depth", "width", "activation", "initializer", "seed", "name", "backend",
               "status": "ok"|"diverged", "diverged_step", "test_accuracy", "test_loss", "seconds",
               "failed": [--fail-on name], "verdicts": [Verdict.to_json()], "theory": [TheoryRow fields],
               "history": [{"epoch", "train_loss", "test_loss", "test_accuracy"}]}]}

``cell`` is :func:`~initdiag.results.cell_key` (``deep-mlp-d30-w256-relu``); ``depth``, ``width`` and
``activation`` are null for a model that has none (``cnn``, ``mlp``). Cells and runs are in grid order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..jsonable import json_safe
from ..models import ModelName, ModelSpec
from ..results import SweepResult, cell_key
from ..vocab import __version__
from .summary import SCHEMA_VERSION, _run_json

__all__ = ["sweep_summary_json"]

_RUN_KEYS = ("name", "status", "diverged_step", "test_accuracy", "test_loss", "seconds", "verdicts", "theory",
             "history")
"""What a sweep run keeps of an experiment run's entry (per-layer tables and structure stay in series.csv)."""


def _cell(model: ModelSpec) -> dict[str, Any]:
    deep = model.name == ModelName.DEEP_MLP
    return {"cell": cell_key(model), "model": str(model.name), "depth": model.depth if deep else None,
            "width": model.width if deep else None, "activation": model.activation if deep else None}


def sweep_summary_json(result: SweepResult) -> dict[str, Any]:
    """The summary of a sweep (see the module docstring for the schema)."""
    prov = result.provenance
    runs = []
    for cell in result.cells:
        where = _cell(cell.config.model)
        for run in cell.runs:
            entry = _run_json(run)
            runs.append({**where, "initializer": run.label, "seed": run.seed, "backend": result.backend,
                         **{k: entry[k] for k in _RUN_KEYS}, "failed": list(run.failed)})
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "tool": "initdiag", "version": __version__, "kind": "sweep",
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": result.command, "backend": result.backend, "ray_address": result.config.ray_address,
        "dataset": {"name": prov.name, "source": prov.source, "kind": prov.kind, "train_size": prov.train_size,
                    "test_size": prov.test_size, "files": dict(prov.files)},
        "config": result.config.to_json(), "environment": dict(result.environment or result.cells[0].environment),
        "duration_seconds": result.seconds, "missing": list(result.missing),
        "cells": [{**_cell(c.config.model), "accuracy": c.accuracy, "comparisons": [x.to_json() for x in c.comparisons]}
                  for c in result.cells],
        "runs": runs,
    }
    cleaned: dict[str, Any] = json_safe(data)
    return cleaned
