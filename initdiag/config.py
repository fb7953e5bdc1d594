"""What to run, as frozen dataclasses validated on construction (bad values raise UsageError)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import UsageError, did_you_mean
from .initializers import DEFAULT_INITIALIZERS, InitSpec
from .models import ModelSpec

__all__ = ["FORMATS", "PAPERS", "ExperimentConfig"]

FORMATS: tuple[str, ...] = ("html", "pdf", "json", "csv")
PAPERS: tuple[str, ...] = ("a4", "letter")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def _positive(name: str, value: int | float, minimum: int | float = 1) -> None:
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum} (got {value})")


def parse_formats(text: str) -> tuple[str, ...]:
    """Parse ``html,pdf,json,csv`` (any subset, any order) into a tuple in canonical order."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--format needs at least one of " + ", ".join(FORMATS))
    for item in items:
        if item not in FORMATS:
            raise UsageError(f"unknown format '{item}'{did_you_mean(item, FORMATS)}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in items)


@dataclass(frozen=True)
class ExperimentConfig:
    """One ``initdiag report`` experiment: every initializer x seed trained on MNIST.

    Defaults reproduce the classic Keras experiment: seed CNN, Adam (lr 1e-3), batch 64, 5 epochs.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    initializers: tuple[InitSpec, ...] = tuple(InitSpec(n) for n in DEFAULT_INITIALIZERS)
    seed: int = 0
    seeds: int = 1
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    limit_train: int | None = None
    record_every: int = 1
    dataset: str = "mnist"
    data_dir: Path | None = None
    out: Path | None = None
    formats: tuple[str, ...] = FORMATS
    device: str = "cpu"
    jobs: int = 1
    probe_size: int = 512
    eval_batch_size: int = 1000
    fail_on: tuple[str, ...] = ()
    paper: str = "a4"

    def __post_init__(self) -> None:
        if not self.initializers:
            raise UsageError("no initializer given")
        _positive("--seed", self.seed, 0)
        _positive("--seeds", self.seeds)
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        _positive("--record-every", self.record_every)
        _positive("--jobs", self.jobs)
        _positive("probe size", self.probe_size)
        _positive("evaluation batch size", self.eval_batch_size)
        if not self.lr > 0 or self.lr != self.lr or self.lr == float("inf"):
            raise UsageError(f"--lr must be a positive number (got {self.lr})")
        if self.limit_train is not None:
            _positive("--limit-train", self.limit_train)
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset '{self.dataset}'{did_you_mean(self.dataset, DATASETS)}; "
                             f"choose from {', '.join(DATASETS)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise UsageError(f"unknown device '{self.device}'; choose from {', '.join(DEVICES)}")
        if self.paper not in PAPERS:
            raise UsageError(f"unknown paper size '{self.paper}'; choose from {', '.join(PAPERS)}")
        for fmt in self.formats:
            if fmt not in FORMATS:
                raise UsageError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds each initializer runs with: seed, seed+1, ..., seed+seeds-1."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def to_json(self) -> dict[str, Any]:
        """JSON-safe view for summary.json and the report's provenance."""
        data = asdict(self)
        data["model"] = asdict(self.model)
        data["initializers"] = [s.label for s in self.initializers]
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        data["out"] = str(self.out) if self.out else None
        data["formats"] = list(self.formats)
        data["fail_on"] = list(self.fail_on)
        return data
