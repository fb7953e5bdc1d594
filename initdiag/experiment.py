"""One training run of the experiment (an initializer x seed), recorded and checked; the experiment's result.

:func:`run_one` builds the model, initializes it, trains it under the recorder with probes before and after,
and runs the checks; :func:`assemble` collects finished runs into an :class:`~initdiag.results.ExperimentResult`
with the comparisons between initializers.
"""

from __future__ import annotations

import math
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .checks import RunEvidence, Verdict, accuracy_summary, analyze, compare_accuracies
from .config import ExperimentConfig
from .data import MnistData
from .errors import UsageError
from .initializers import InitSpec, apply_initializer
from .jsonable import run_name
from .memory import release_heap
from .models import build_model
from .progress import NullProgress, Progress
from .recording import (
    Recorder,
    Weights,
    input_groups,
    norm_gains,
    snapshot_grads,
    snapshot_weights,
    weight_moments,
    zero_parameters,
)
from .results import ExperimentResult, RunResult
from .structure import discover
from .structure.layers import weight_layers
from .training import prepare_model, to_batch, train, uses_channels_last
from .vocab import CheckName, Status, __version__

__all__ = ["assemble", "diverged_step", "environment", "lookahead", "resolve_device", "run_one", "theory_variances"]

def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, str]:
    """Versions and machine facts for the report's provenance."""
    env = {
        "initdiag": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": str(torch.get_num_threads()) + " threads",
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def theory_variances(model: nn.Module, spec: InitSpec) -> dict[str, float]:
    """Conv/Linear module name -> the Var(W) that ``spec``'s formula gives for its weight (what the theory
    overlay uses for a named initializer)."""
    init, params = spec.initializer, spec.resolved
    return {name: init.variance(tuple(module.weight.shape), params) for name, module in weight_layers(model)}


def lookahead(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Weights, dict[str, bool]]:
    """One look ahead at the first training step: each weight's gradient on ``(x, y)`` (cross-entropy) and the
    zero parameters with whether they learn (:func:`~initdiag.checks.zero_parameters`). Leaves the model as it
    was: gradients cleared, buffers (BatchNorm statistics) restored, the RNG forked (dropout)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [x.device.index or 0] if x.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            F.cross_entropy(model(x), y).backward()
        grads = snapshot_grads(model, {name or type(m).__name__ for name, m in model.named_modules()})
        return grads, zero_parameters(model)
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def run_one(config: ExperimentConfig, spec: InitSpec, seed: int, data: MnistData,
            progress: Progress | None = None, device: torch.device | None = None) -> RunResult:
    """Build the model, initialize it with ``spec`` and ``seed``, train it under the recorder, check it."""
    progress = progress or NullProgress()
    device = device or resolve_device(config.device)
    name = run_name(spec.label, seed)
    start = time.perf_counter()
    with _too_large(name, config):
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; no CUDA generator is touched
            # what the initializer does not redraw (a user model's embeddings, recurrent layers, own parameters)
            # is drawn as the model is built: from the run's seed, so every run of a report or sweep repeats
            torch.random.default_generator.manual_seed(seed)
            model = build_model(config.model)
        apply_initializer(model, spec, seed)
        prepare_model(model, device)
        weights_init = snapshot_weights(model)
        probe_x = to_batch(data.test_x[: config.probe_size], device, uses_channels_last(model))
        structure = discover(model, probe_x)
        grads_init, zero = lookahead(model, probe_x, data.test_y[: config.probe_size].to(device))
        weight_vars = {**weight_moments(model, structure), **theory_variances(model, spec)}
        release_heap()  # the look-ahead's probe batch (forward and backward): the steps need a fraction of it
        recorder = Recorder(model, every=config.record_every, run=name, initializer=spec.label, seed=seed,
                            structure=structure)
        with recorder:
            with recorder.probe("init"), torch.no_grad():
                model(probe_x)
            outcome = train(
                model, data.train_x, data.train_y, data.test_x, data.test_y,
                epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                optimizer=config.optimizer, seed=seed, device=device,
                eval_batch_size=config.eval_batch_size, progress=progress, label=name,
                on_epoch_start=lambda e: setattr(recorder, "epoch", e),
            )
            with recorder.probe("final"), torch.no_grad():
                model(probe_x)
    frame = recorder.frame()
    layers = tuple(recorder.layers())
    evidence = RunEvidence(run=name, initializer=spec.label, frame=frame, layers=layers, weights_init=weights_init,
                           weights_final=snapshot_weights(model), losses=outcome.step_losses,
                           grad_norms=outcome.grad_norms, weight_vars=weight_vars,
                           default_init=spec.name == "pytorch-default", structure=structure, grads_init=grads_init,
                           zero_params=zero, norm_gains=norm_gains(model, structure),
                           steps_per_epoch=math.ceil(len(data.train_x) / config.batch_size),
                           input_groups=input_groups(model))
    analysis = analyze(evidence, seed=seed)
    return RunResult(
        name=name, spec=spec, seed=seed, history=outcome.history, test_accuracy=outcome.test_accuracy,
        test_loss=outcome.test_loss, predictions=outcome.predictions, step_losses=outcome.step_losses,
        frame=frame, layers=layers, analysis=analysis,
        diverged_step=diverged_step(analysis.verdicts, outcome.diverged_step), seconds=time.perf_counter() - start,
        grad_norms=outcome.grad_norms, structure=structure,
    )


def diverged_step(verdicts: Sequence[Verdict], stopped_at: int | None) -> int | None:
    """The step at which a run diverged: the earlier of where training stopped (non-finite loss or gradient
    norm) and where the ``diverged`` verdict found the first non-finite value (a statistic can overflow
    before the loss does; the initialization probe counts as step 0). None when neither happened, so a
    run's status is "diverged" exactly when it stopped early or its ``diverged`` check failed."""
    steps = [max(0, int(step)) for v in verdicts if v.check == CheckName.DIVERGED and v.status == Status.FAIL
             and (step := v.effect.get("step")) is not None]
    if stopped_at is not None:
        steps.append(stopped_at)
    return min(steps) if steps else None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


@contextmanager
def _too_large(name: str, config: ExperimentConfig) -> Iterator[None]:
    """Turn "the model or a batch does not fit" (sizes such as --width 1000000) into one-line UsageErrors."""
    advice = "use a smaller --width, --depth or --batch-size"
    try:
        yield
    except MemoryError:
        raise UsageError(f"{name}: {config.model.label} does not fit in memory; {advice}") from None
    except RuntimeError as exc:
        text = str(exc)
        if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text
                or "out of memory" in text.lower()):
            raise
        raise UsageError(f"{name}: {config.model.label} does not fit in memory ({_first_line(exc)}); "
                         f"{advice}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        if "overflow" not in str(exc).lower():
            raise
        raise UsageError(f"{name}: {config.model.label} is too large to build ({_first_line(exc)}); "
                         f"{advice}") from None


def assemble(config: ExperimentConfig, data: MnistData, runs: Sequence[RunResult], started: datetime,
             seconds: float, argv: Sequence[str] | None, device: torch.device,
             missing: Sequence[str] = ()) -> ExperimentResult:
    """Collect finished runs into an ExperimentResult, with the cross-run accuracy comparisons."""
    labels = data.test_y.numpy()
    predictions: dict[str, list[np.ndarray]] = {}
    accuracies: dict[str, list[float]] = {}
    for run in runs:
        predictions.setdefault(run.label, []).append(run.predictions)
        accuracies.setdefault(run.label, []).append(run.test_accuracy)
    comparisons = compare_accuracies(predictions, labels, accuracies) if len(predictions) > 1 else ()
    command = shlex.join(["initdiag", *(sys.argv[1:] if argv is None else argv)])
    return ExperimentResult(
        config=config, provenance=data.provenance, runs=tuple(runs), comparisons=tuple(comparisons),
        accuracy=accuracy_summary(accuracies), test_labels=labels, started=started, seconds=seconds,
        command=command, environment=environment(device), missing=tuple(missing),
    )
