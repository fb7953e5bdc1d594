"""Every closed set of names initdiag uses, listed once, and the package version.

The recorder, the checks, the report, the store and the CLI all spell these names through the enums
below (a ``StrEnum`` compares equal to its string, so the tidy frame and ``summary.json`` hold plain
strings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "FORMATS",
    "HEALTHY",
    "PAPERS",
    "ActivationFamily",
    "ActivationName",
    "AuditInputKind",
    "Backend",
    "CheckName",
    "Device",
    "Family",
    "Format",
    "InputDtype",
    "Kind",
    "LossMode",
    "Need",
    "NormKind",
    "Optimizer",
    "Outcome",
    "Paper",
    "Phase",
    "ResultKind",
    "Role",
    "RunStatus",
    "Signal",
    "Stat",
    "Status",
    "__version__",
]

__version__ = "0.2.0"


class Kind(StrEnum):
    """What a recorded statistic describes."""

    FORWARD = "forward"
    """A layer's output."""
    BACKWARD = "backward"
    """The gradient of the loss with respect to a layer's output, dL/dy."""
    WEIGHT = "weight"
    WEIGHT_GRAD = "weight_grad"
    UPDATE = "update"
    """A training step's change of a layer's weight, W_{t+1} - W_t (row ``step`` = t)."""


class Stat(StrEnum):
    """Recorded statistics (formulas in :mod:`initdiag.recording.rows`)."""

    VAR = "var"
    MEAN_SQ = "mean_sq"
    ZERO_FRAC = "zero_frac"
    DEAD_FRAC = "dead_frac"
    SAT_FRAC = "sat_frac"


class Phase(StrEnum):
    """When a row or a verdict was taken."""

    TRAIN = "train"
    """A training step (``step`` counts them from 0)."""
    INIT = "init"
    """The probe before training (an evaluation batch), or a verdict about initialization."""
    FINAL = "final"
    """The probe after training."""
    TRAINING = "training"
    """A verdict about the whole of training (divergence)."""


class Role(StrEnum):
    """What a recorded call site is."""

    WEIGHT = "weight"
    ACTIVATION = "activation"
    BLOCK = "block"
    """A residual block's output: the residual stream (and ``<block>:in``, the stream entering the first)."""


class ActivationName(StrEnum):
    """Activation families: elementwise nonlinearities the structure recognizes, as modules or functions."""

    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    PRELU = "prelu"
    ELU = "elu"
    SELU = "selu"
    CELU = "celu"
    GELU = "gelu"
    SILU = "silu"
    MISH = "mish"
    SOFTPLUS = "softplus"
    TANH = "tanh"
    HARDTANH = "hardtanh"
    SIGMOID = "sigmoid"
    HARDSIGMOID = "hardsigmoid"
    HARDSWISH = "hardswish"
    SOFTSIGN = "softsign"
    LINEAR = "linear"
    """No nonlinearity between a layer and the next."""
    MODULE = "module"
    """An elementwise module of the model's own that no family name describes (evaluated as it is)."""
    OTHER = "other"
    """An elementwise torch function outside the families (e.g. ``exp``), evaluated by name."""


class ActivationFamily(StrEnum):
    """What kind of nonlinearity an activation is (each one's: :data:`initdiag.structure.activations.ACTIVATIONS`)."""

    RECTIFIER = "rectifier"
    """Exactly zero below 0, so a unit can be dead: relu, relu6."""
    LEAKY = "leaky"
    """Piecewise linear through 0 with a (fixed, random or learned) slope below: leaky_relu, prelu."""
    SMOOTH = "smooth"
    """ReLU-like, unbounded above, curved or smoothed near 0: elu, celu, gelu, silu, mish, softplus, hardswish."""
    SELF_NORMALIZING = "self_normalizing"
    """selu: a fixed point of unit variance under LeCun init (Klambauer et al. 2017)."""
    SATURATING = "saturating"
    """Bounded: tanh, hardtanh, sigmoid, hardsigmoid, softsign."""
    LINEAR = "linear"
    UNKNOWN = "unknown"
    """An elementwise module or function outside the families (``module``, ``other``)."""


class Signal(StrEnum):
    """Which signal a verdict is about."""

    FORWARD = "forward"
    BACKWARD = "backward"
    WEIGHTS = "weights"


class CheckName(StrEnum):
    """The built-in checks, as registered (:data:`initdiag.checks.CHECKS`); each is a ``--fail-on`` name."""

    SIGNAL = "signal"
    """Variance of each chain of weight layers, forward and backward (outcome: an :class:`Outcome`)."""
    STREAM = "stream"
    """Variance of the residual stream across blocks, forward and backward (outcome: an :class:`Outcome`)."""
    SYMMETRY = "symmetry"
    """Neurons of a layer are identical (or nearer to duplicates than independent random rows)."""
    DEAD = "dead"
    """ReLU-family units that output 0 for every input of the evaluation batch."""
    SATURATION = "saturation"
    """tanh/sigmoid outputs pinned at their bounds."""
    GATES = "gates"
    """Gates of recurrent layers (LSTM/GRU/RNN) pinned at their activation's bounds at initialization."""
    DIVERGED = "diverged"
    """NaN/Inf in the loss or in a recorded statistic."""
    UNSTABLE = "unstable"
    """The training loss rose well above its starting value while staying finite."""
    STALLED = "stalled"
    """The training loss did not fall over the first epoch."""
    UPDATE_RATIO = "update_ratio"
    """A layer's step updates are far outside the usual size against its weight (||dW|| / ||W||)."""
    DEAD_GROWTH = "dead_growth"
    """The fraction of dead ReLU units grew during training."""
    OUTPUT_SCALE = "output_scale"
    """The logits at initialization far from chance (their spread over the classes, the loss against log C)."""
    BRANCH_SCALE = "branch_scale"
    """A residual branch adds far more variance than the stream it joins (the skip path is overwritten)."""
    ATTENTION_ENTROPY = "attention_entropy"
    """Softmax attention near one-hot at initialization (entropy collapse: its gradients vanish)."""
    CORRELATION = "correlation"
    """Different inputs (or tokens) mapped to nearly the same representation with depth."""
    PRECISION = "precision"
    """Activations or gradients outside the range of the dtype the model trains in (float16, bfloat16)."""


class Outcome(StrEnum):
    """What the signal and stream checks found (``Verdict.outcome``); each but ``healthy`` is also a
    ``--fail-on`` name. Other checks' outcome is their own name when they warn or fail, else ``healthy``."""

    VANISHING = "vanishing"
    """The signal shrinks by ``change_factor`` or more across the layers."""
    EXPLODING = "exploding"
    """The same, growing (or overflowing to inf)."""
    NO_SIGNAL = "no_signal"
    """A layer's output (or dL/dy) does not vary over the batch: nothing propagates."""
    HEALTHY = "healthy"
    """Nothing found."""


HEALTHY = Outcome.HEALTHY.value
"""The outcome of a verdict that found nothing."""


class Family(StrEnum):
    """Columns of the report's verdict summary; every verdict belongs to one."""

    SIGNAL = "signal"
    SYMMETRY = "symmetry"
    DEAD = "dead"
    SATURATION = "saturation"
    DIVERGED = "diverged"
    SCALE = "scale"
    """Output scale and branch scale: sizes that normalization hides from the variance checks."""
    ATTENTION = "attention"
    CORRELATION = "correlation"
    PRECISION = "precision"
    TRAINING = "training"
    """The verdicts about training itself: unstable, stalled, update_ratio, dead_growth (a grid column only
    for runs that trained)."""


class Need(StrEnum):
    """Evidence a registered check reads (``Check.needs``); a check whose needs a run lacks is not run."""

    FRAME = "frame"
    """The recorded statistics per layer (forward, backward, weights)."""
    STRUCTURE = "structure"
    """The model's structure: chains, normalizations, residual blocks."""
    WEIGHTS = "weights"
    """The weights (and gradients) at initialization."""
    FINAL_WEIGHTS = "final_weights"
    """The weights after training."""
    LOSSES = "losses"
    """The loss of each step (or audited batch)."""
    TRAINING = "training"
    """Optimizer steps were taken: the run trained."""


class Status(StrEnum):
    """Badge of a verdict: only ``fail`` counts for ``--fail-on``."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class ResultKind(StrEnum):
    """What a result is (``summary.json``'s ``kind``); the report's sections follow from it."""

    EXPERIMENT = "experiment"
    """``initdiag report``: initializers x seeds trained on MNIST."""
    AUDIT = "audit"
    """``initdiag audit``: a few batches forward and backward, no training."""
    TRAINING = "training"
    """Someone else's training with initdiag attached (the callbacks)."""
    SWEEP = "sweep"
    """``initdiag sweep``: many experiments over a grid."""
    FIX = "fix"
    """``initdiag fix``: an audit, a repair of what it flagged, the audit of the repaired model."""


class RunStatus(StrEnum):
    """How a training run ended."""

    OK = "ok"
    DIVERGED = "diverged"


class NormKind(StrEnum):
    """Normalization layers the structure recognizes."""

    BATCH = "batch"
    LAYER = "layer"
    GROUP = "group"
    INSTANCE = "instance"
    RMS = "rms"
    OTHER = "other"


class Format(StrEnum):
    """Files a report can write."""

    HTML = "html"
    PDF = "pdf"
    JSON = "json"
    CSV = "csv"
    MD = "md"


FORMATS: tuple[str, ...] = tuple(Format)
"""Every format, in canonical order (``--format`` default)."""


class Paper(StrEnum):
    A4 = "a4"
    LETTER = "letter"


PAPERS: tuple[str, ...] = tuple(Paper)


class Device(StrEnum):
    """``--device`` choices (``cuda:N`` is accepted too)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Optimizer(StrEnum):
    """``--optimizer`` of ``report``: Adam (the seed experiment's) or SGD with momentum 0.9 (He et al. 2015)."""

    ADAM = "adam"
    SGD = "sgd"


class Backend(StrEnum):
    """``--backend`` of ``sweep``: worker processes on this machine, or tasks on a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"


class AuditInputKind(StrEnum):
    """``--inputs`` of an audit."""

    NORMAL = "normal"
    MNIST = "mnist"
    FILE = "file"
    """Tensors saved with ``torch.save`` (``--inputs FILE.pt``; ``AuditConfig.inputs_file``)."""


class InputDtype(StrEnum):
    """``--input-dtype`` of an audit: float inputs, or token ids."""

    FLOAT = "float"
    LONG = "long"


class LossMode(StrEnum):
    """``--loss`` of an audit."""

    AUTO = "auto"
    CE = "ce"
    MSE = "mse"


@dataclass(frozen=True)
class CheckInfo:
    """What ``initdiag list`` and ``--fail-on`` know of a built-in check without importing the checks (which
    load torch, scipy and pandas): its name, title and outcomes. The check classes take theirs from here."""

    name: CheckName
    title: str
    outcomes: tuple[Outcome, ...] = ()


_SIGNAL_OUTCOMES = (Outcome.VANISHING, Outcome.EXPLODING, Outcome.NO_SIGNAL, Outcome.HEALTHY)
BUILTIN_CHECKS: tuple[CheckInfo, ...] = (
    CheckInfo(CheckName.SIGNAL, "Signal propagation along chains of weight layers (vanishing / exploding / no signal)",
              _SIGNAL_OUTCOMES),
    CheckInfo(CheckName.STREAM, "Residual stream across blocks (vanishing / exploding / no signal)", _SIGNAL_OUTCOMES),
    CheckInfo(CheckName.SYMMETRY, "Identical and near-duplicate neurons"),
    CheckInfo(CheckName.DEAD, "Dead ReLU units (0 for every input)"),
    CheckInfo(CheckName.SATURATION, "Saturated tanh/sigmoid units"),
    CheckInfo(CheckName.GATES, "Saturated gates of recurrent layers"),
    CheckInfo(CheckName.OUTPUT_SCALE, "Logits and loss at initialization against chance"),
    CheckInfo(CheckName.BRANCH_SCALE, "Residual branches against the stream they join"),
    CheckInfo(CheckName.ATTENTION_ENTROPY, "Attention entropy at initialization (collapse to one-hot)"),
    CheckInfo(CheckName.CORRELATION, "Inputs and tokens made alike with depth (correlation map, rank collapse)"),
    CheckInfo(CheckName.PRECISION, "Headroom of activations and gradients in float16 / bfloat16"),
    CheckInfo(CheckName.DIVERGED, "Divergence (NaN/Inf anywhere)"),
    CheckInfo(CheckName.UNSTABLE, "Unstable training loss"),
    CheckInfo(CheckName.STALLED, "Stalled first epoch"),
    CheckInfo(CheckName.UPDATE_RATIO, "Update-to-weight ratio"),
    CheckInfo(CheckName.DEAD_GROWTH, "Dead units appearing during training"),
)
"""The built-in checks in the order the analysis runs them (:data:`initdiag.checks.CHECKS` registers each)."""


def fail_on_names(checks: Iterable[tuple[str, Iterable[str]]] | None = None) -> tuple[str, ...]:
    """Every name ``--fail-on`` accepts for ``checks`` (``(name, outcomes)`` each; default the built-in
    ones): each check's name, then its outcomes (``healthy`` excluded)."""
    pairs = [(c.name, c.outcomes) for c in BUILTIN_CHECKS] if checks is None else [(n, tuple(o)) for n, o in checks]
    names = [str(n) for n, _ in pairs] + [str(o) for _, outs in pairs for o in outs]
    return tuple(dict.fromkeys(n for n in names if n != HEALTHY))
