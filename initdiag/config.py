"""What to run, as frozen dataclasses validated on construction (bad values raise UsageError)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import UsageError, did_you_mean
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS, InitSpec, split_init_list, unique_labels
from .models import ModelSpec
from .vocab import FORMATS, PAPERS, AuditInputKind, Device, InputDtype, LossMode, Optimizer, fail_on_names

__all__ = ["AUDIT_INPUTS", "AUDIT_LOSSES", "FIX_METHODS", "INPUT_DTYPES", "KEEP", "TRAIN_DTYPES", "AuditConfig",
           "ExperimentConfig", "FixConfig", "parse_audit_inits", "parse_fail_on", "parse_formats", "parse_input_shape"]

DEVICES: tuple[str, ...] = tuple(Device)


MAX_SEED = 2**32 - 1
"""The largest seed (as NumPy's legacy seeding); every seed a run uses must be in [0, MAX_SEED]."""
MAX_SEEDS = 1000
"""The most seeds per initializer in one report (each is a full training run)."""


def _positive(name: str, value: int | float, minimum: int | float = 1) -> None:
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum} (got {value})")


def _at_most(name: str, value: int, maximum: int) -> None:
    if value > maximum:
        raise UsageError(f"{name} must be at most {maximum} (got {value})")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} '{value}'{did_you_mean(value, choices)}; choose from {', '.join(choices)}")


def _device(value: str) -> None:
    if value not in DEVICES and not value.startswith("cuda:"):
        raise UsageError(f"unknown device '{value}'; choose from {', '.join(DEVICES)}")


def _check_names(names: tuple[str, ...]) -> None:
    """Each of ``names`` must be a ``--fail-on`` name of a registered check (its name or an outcome): of the
    built-in ones while the checks are not loaded (the CLI parses before any), else of the registry as it
    stands (a plug-in check registered by then counts)."""
    import sys

    if "initdiag.checks" in sys.modules:
        from .checks import CHECKS

        CHECKS.parse_fail_on(names)
        return
    known = fail_on_names()
    for name in names:
        if name not in known:
            raise UsageError(f"unknown check '{name}'{did_you_mean(name, known)}; choose from {', '.join(known)}")


def parse_fail_on(text: str) -> tuple[str, ...]:
    """Parse ``vanishing,exploding`` (``--fail-on``) into check names; an unknown name is a UsageError."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    _check_names(names)
    return names


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
    optimizer: str = Optimizer.ADAM
    limit_train: int | None = None
    record_every: int = 10
    dataset: str = "mnist"
    data_dir: Path | None = None
    out: Path | None = None
    formats: tuple[str, ...] = FORMATS
    device: str = "cpu"
    jobs: int | None = None
    """Parallel worker processes; None picks one per core (CPU) or 1 (GPU)."""
    probe_size: int = 512
    eval_batch_size: int = 250
    """Test images per evaluation forward: the seed CNN's peak there is ~30 MiB per worker (500: ~60 MiB, at
    the same speed on a CPU), and the evaluation's batch decides the worker's peak in the default run."""
    fail_on: tuple[str, ...] = ()
    paper: str = "a4"

    def __post_init__(self) -> None:
        if not self.initializers:
            raise UsageError("no initializer given")
        _positive("--seed", self.seed, 0)
        _positive("--seeds", self.seeds)
        _at_most("--seeds", self.seeds, MAX_SEEDS)
        _at_most("--seed" if self.seeds == 1 else "the last seed (--seed + --seeds - 1)",
                 self.seed + self.seeds - 1, MAX_SEED)
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        _positive("--record-every", self.record_every)
        if self.jobs is not None:
            _positive("--jobs", self.jobs)
        _positive("probe size", self.probe_size)
        _positive("evaluation batch size", self.eval_batch_size)
        if not self.lr > 0 or self.lr != self.lr or self.lr == float("inf"):
            raise UsageError(f"--lr must be a positive number (got {self.lr})")
        if self.limit_train is not None:
            _positive("--limit-train", self.limit_train)
        _choice("dataset", self.dataset, DATASETS)
        _choice("optimizer", self.optimizer, tuple(Optimizer))
        _device(self.device)
        _choice("paper size", self.paper, PAPERS)
        for fmt in self.formats:
            _choice("format", fmt, FORMATS)
        _check_names(self.fail_on)

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds each initializer runs with: seed, seed+1, ..., seed+seeds-1."""
        return tuple(range(self.seed, self.seed + self.seeds))

    def to_json(self) -> dict[str, Any]:
        """JSON-safe view for summary.json, the report's provenance and the resume store."""
        data = asdict(self)
        data["model"] = asdict(self.model)
        data["initializers"] = [s.label for s in self.initializers]
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        data["out"] = str(self.out) if self.out else None
        data["formats"] = list(self.formats)
        data["fail_on"] = list(self.fail_on)
        return data

    @classmethod
    def from_json(cls, data: Any) -> ExperimentConfig:
        """The config :meth:`to_json` wrote, validated as on construction: a malformed value is a UsageError,
        a missing or unknown key a ValueError."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError("not an experiment configuration")
        names = {f.name for f in fields(cls)}
        if set(data) - names or {"model", "initializers"} - set(data):
            raise ValueError(f"unexpected keys {sorted(set(data) - names)} in an experiment configuration")
        values = dict(data)
        values["model"] = ModelSpec(**data["model"])
        values["initializers"] = tuple(InitSpec.parse(str(label)) for label in data["initializers"])
        for key in ("data_dir", "out"):
            values[key] = Path(data[key]) if data.get(key) else None
        for key in ("formats", "fail_on"):
            values[key] = tuple(str(x) for x in data.get(key, ()))
        return cls(**values)


# -- audit -------------------------------------------------------------------------------------------------
KEEP = "keep"
"""``--init`` name of the model's own initialization (audited as the user left it)."""
AUDIT_INPUTS: tuple[str, ...] = tuple(AuditInputKind)
INPUT_DTYPES: tuple[str, ...] = tuple(InputDtype)
AUDIT_LOSSES: tuple[str, ...] = tuple(LossMode)
TRAIN_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
"""``--dtype``: the dtype the audited model will train in (the precision check's limits)."""


def _sample_shape(shape: Any) -> tuple[int, ...]:
    """One sample's shape as a tuple of positive ints (UsageError otherwise)."""
    out = tuple(shape)
    if not out or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in out):
        raise UsageError(f"input shape {out} must be positive integers (one sample, no batch dimension)")
    return out


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``3,224,224`` (or ``3x224x224``) into a tuple of positive ints: one sample, no batch dimension."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape {text!r} must be positive integers separated by commas (one sample, "
                         "without the batch dimension), e.g. 3,224,224")
    return shape


def _check_init(item: str) -> str:
    name = item.partition(":")[0].strip()
    if name == KEEP:
        if item.strip() != KEEP:
            raise UsageError(f"'{KEEP}' takes no parameters (got {item!r})")
        return KEEP
    choices = (KEEP, *INITIALIZERS)
    if name not in INITIALIZERS:
        raise UsageError(f"unknown initializer '{name}'{did_you_mean(name, choices)}; choose from {', '.join(choices)}")
    return InitSpec.parse(item).label


def parse_audit_inits(text: str) -> tuple[str, ...]:
    """Parse ``keep,he,random:std=0.05`` into labels (``keep`` = the model as given), split as
    :func:`~initdiag.initializers.split_init_list` does."""
    return AuditConfig.check_inits(split_init_list(text))


@dataclass(frozen=True)
class AuditConfig:
    """One ``initdiag audit``: a user's model, a few batches forward and backward per initialization, no training.

    ``target`` names the model (the CLI reference, or the class name from Python); ``inits`` are labels:
    ``keep`` (the model as given) or an initializer applied to a copy. ``input_shape`` is one sample's
    shape (no batch dimension); ``inputs`` "normal" (standard normal, or token ids in ``[0, vocab)`` with
    ``input_dtype="long"``), "mnist" (images, reshaped to ``input_shape`` when given) or "file" (the batch
    saved in ``inputs_file``). ``extra_inputs``: the shape and dtype of each further generated positional
    input (a siamese network's second image, a graph's adjacency matrix). ``loss``: "auto"
    (cross-entropy against random labels for (batch, classes) outputs, else the mean of squared outputs),
    "ce" or "mse". ``dtype``: the dtype the model will train in ("float16" or "bfloat16"): the precision
    check then decides for it (None: the model's own dtype; float32 and float64 make it information).
    """

    target: str = "model"
    input_shape: tuple[int, ...] | None = None
    inits: tuple[str, ...] = (KEEP,)
    batches: int = 4
    batch_size: int = 16
    inputs: str = "normal"
    input_dtype: str = "float"
    vocab: int | None = None
    loss: str = "auto"
    dtype: str | None = None
    seed: int = 0
    device: str = "cpu"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_inputs: tuple[tuple[tuple[int, ...], str], ...] = ()
    inputs_file: Path | None = None
    data_dir: Path | None = None
    out: Path | None = None
    formats: tuple[str, ...] = FORMATS
    paper: str = "a4"
    fail_on: tuple[str, ...] = ()

    @staticmethod
    def check_inits(items: Any) -> tuple[str, ...]:
        """Validate initializer names (``keep`` or a registered one, with parameters); return their labels."""
        if isinstance(items, str) or not items:
            raise UsageError("give the initializations to audit as a list, e.g. ('keep', 'he')" if items
                             else "no initializer given")
        labels = tuple(_check_init(str(item)) for item in items)
        unique_labels(list(labels))
        return labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "inits", self.check_inits(self.inits))
        _positive("--batches", self.batches)
        _positive("--batch-size", self.batch_size, 2)
        _positive("--seed", self.seed, 0)
        _at_most("--seed", self.seed, MAX_SEED)
        for name, value, choices in (("--inputs", self.inputs, AUDIT_INPUTS),
                                     ("--input-dtype", self.input_dtype, INPUT_DTYPES),
                                     ("--loss", self.loss, AUDIT_LOSSES), ("paper size", self.paper, PAPERS)):
            _choice(name, value, choices)
        if self.dtype is not None:
            _choice("--dtype", self.dtype, TRAIN_DTYPES)
        _device(self.device)
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _sample_shape(self.input_shape))
        extra = tuple((_sample_shape(shape), str(dtype)) for shape, dtype in self.extra_inputs)
        for _, dtype in extra:
            _choice("--input-dtype", dtype, INPUT_DTYPES)
        object.__setattr__(self, "extra_inputs", extra)
        if extra and (self.input_shape is None or self.inputs != "normal"):
            raise UsageError("several inputs are generated with --inputs normal only, each with its --input-shape")
        if (self.inputs == "file") != (self.inputs_file is not None):
            raise UsageError("--inputs takes normal, mnist or the path of a file saved with torch.save")
        if self.inputs == "file" and self.input_shape is not None:
            raise UsageError("--inputs FILE gives the batch itself: drop --input-shape")
        if self.inputs == "mnist":
            if self.input_dtype != "float":
                raise UsageError("--inputs mnist gives float images; drop --input-dtype long")
            if self.input_shape is not None and math.prod(self.input_shape) != 784:
                raise UsageError(f"--inputs mnist: --input-shape {','.join(map(str, self.input_shape))} does not "
                                 "hold the 784 pixels of an MNIST image (use 1,28,28 or 784)")
        if self.vocab is not None:
            _positive("--vocab", self.vocab)
        for fmt in self.formats:
            _choice("format", fmt, FORMATS)
        _check_names(self.fail_on)

    @property
    def input_specs(self) -> tuple[tuple[tuple[int, ...], str], ...]:
        """Each generated positional input's sample shape and dtype, the first one's included."""
        first = () if self.input_shape is None else ((self.input_shape, self.input_dtype),)
        return first + self.extra_inputs

    @property
    def specs(self) -> tuple[InitSpec | None, ...]:
        """One per ``inits`` label: the InitSpec to apply, None for ``keep``."""
        return tuple(None if label == KEEP else InitSpec.parse(label) for label in self.inits)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe view for summary.json and the report's provenance."""
        data = asdict(self)
        for key in ("input_shape", "inits", "formats", "fail_on"):
            data[key] = list(data[key]) if data[key] is not None else None
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        data["out"] = str(self.out) if self.out else None
        data["extra_inputs"] = [[list(shape), dtype] for shape, dtype in self.extra_inputs]
        data["inputs_file"] = str(self.inputs_file) if self.inputs_file else None
        return data


# -- fix ---------------------------------------------------------------------------------------------------
FIX_METHODS: tuple[str, ...] = ("theory", "lsuv")


@dataclass(frozen=True)
class FixConfig:
    """One ``initdiag fix``: the audit (``audit``: inputs, loss, seed; its ``inits`` are ``keep``), the repair
    ``method`` ("theory" from the structure and the theory engine, "lsuv" data-driven), at most ``rounds`` of
    audit and repair (theory), LSUV's ``tol`` (relative, on the output variance against ``target_var``) and
    ``max_iter`` per layer and its optional ``orthogonal`` pre-initialization, and the verification: the original
    and the repaired model trained ``verify_steps`` steps (0: none) with Adam at ``verify_lr``. ``save``: where
    the CLI writes the repaired ``state_dict``."""

    audit: AuditConfig = field(default_factory=AuditConfig)
    method: str = "theory"
    rounds: int = 4
    tol: float = 0.1
    target_var: float = 1.0
    max_iter: int = 10
    orthogonal: bool = False
    verify_steps: int = 20
    verify_lr: float = 1e-3
    save: Path | None = None

    def __post_init__(self) -> None:
        _choice("--method", self.method, FIX_METHODS)
        _positive("--rounds", self.rounds)
        _positive("--max-iter", self.max_iter)
        _positive("--verify-steps", self.verify_steps, 0)
        for name, value in (("--tol", self.tol), ("--target-var", self.target_var), ("--verify-lr", self.verify_lr)):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number (got {value})")
        if self.audit.inits != (KEEP,):
            raise UsageError("fix audits the model as it is: its audit takes no --init")

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("audit", "save")}
        return {**data, "audit": self.audit.to_json(), "save": str(self.save) if self.save else None}

