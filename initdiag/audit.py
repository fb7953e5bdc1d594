"""``audit``: diagnose the initialization of any PyTorch model with a few batches, without training.

The same chain as ``initdiag report`` without the long training: a few batches of inputs go through a
copy of the model, forward and backward, under the same :class:`~initdiag.recorder.Recorder`; the same
checks turn the statistics into verdicts; the same report is written (its "audit" variant)::

    result = initdiag.audit(model, input_shape=(3, 32, 32), inits=("keep", "he"))
    result.verdicts, result.frame, result.passed, result.recommendation
    result.write("reports/my-net", formats=("html", "json"))

The user's model is never changed: each initialization is audited on ``copy.deepcopy(model)`` (or, when
the model cannot be deep-copied, on the model itself, restored bit for bit in ``finally``), in train mode,
under a forked and seeded global RNG. No optimizer step is taken, so every batch sees the same weights:
the checks read each statistic averaged over the batches (:func:`pool_batches`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ._audit_inputs import AuditInputs, Inputs, first_embedding, make_inputs, working_copy
from ._audit_weights import LayerWeight, Recommendation, layer_weights, looks_pytorch_default, recommend
from .checks import RunEvidence, Status, Verdict, check_run, failed_checks, theory_rows
from .config import KEEP, AuditConfig, parse_audit_inits
from .errors import ModelLoadError, UsageError
from .experiment import RunResult, environment, resolve_device
from .initializers import Initializer, InitSpec, apply_initializer, weight_layers
from .recorder import FRAME_COLUMNS, LayerInfo, Recorder, main_weight

__all__ = [
    "AuditInputs",
    "AuditResult",
    "AuditRun",
    "KeptSpec",
    "LayerWeight",
    "Recommendation",
    "audit",
    "looks_pytorch_default",
    "make_inputs",
    "pool_batches",
    "run_audit",
    "working_copy",
]


@dataclass(frozen=True)
class KeptSpec(InitSpec):
    """``keep``: the model's own weights, told to the checks' theory by the measured second moment
    ``mean(W^2)`` of each Conv/Linear weight shape (averaged over layers of the same shape).

    ``name`` is "pytorch-default" when every Conv/Linear layer looks default-initialized (the theory then
    notes the biases), else "keep"; ``label`` is always "keep".
    """

    second_moments: tuple[tuple[tuple[int, ...], float], ...] = ()

    @property
    def initializer(self) -> Initializer:
        moments = dict(self.second_moments)
        return Initializer(KEEP, "the model's own initialization", "as given: measured mean(W^2)", None,
                           lambda shape, params: moments.get(tuple(shape), math.nan))

    @property
    def label(self) -> str:
        return KEEP


@dataclass(frozen=True)
class AuditRun(RunResult):
    """One audited initialization: a :class:`RunResult` without training (``history`` and ``predictions``
    empty, accuracies NaN), whose ``frame`` holds the statistics averaged over the batches (what the checks
    read, at step 0), ``series`` every batch, and ``weights`` each weight layer against its activation."""

    weights: tuple[LayerWeight, ...] = ()
    series: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def failed(self) -> tuple[str, ...]:
        """The ``--fail-on`` names this run fails."""
        return tuple(sorted(failed_checks(self.verdicts)))


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found: one :class:`AuditRun` per audited initialization, and the recommendation."""

    config: AuditConfig
    model: str
    inputs: AuditInputs
    runs: tuple[AuditRun, ...]
    recommendation: Recommendation
    started: datetime
    seconds: float
    command: str
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Every run's verdicts, run by run."""
        return tuple(v for run in self.runs for v in run.verdicts)

    @property
    def passed(self) -> bool:
        """True when no verdict of any run is ``fail``."""
        return not any(v.status == Status.FAIL for v in self.verdicts)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """Every run's statistics, batch by batch (``step`` = batch), as one tidy DataFrame."""
        frames = [run.series for run in self.runs if not run.series.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(FRAME_COLUMNS))

    def failed(self, checks: Sequence[str]) -> set[str]:
        """The names among ``checks`` (``--fail-on`` names) that some run fails."""
        return failed_checks(self.verdicts) & set(checks)

    def write(self, out_dir: str | Path, formats: Sequence[str] = ("html", "pdf", "json", "csv"),
              paper: str = "a4") -> dict[str, Path]:
        """Write the report (report.html, report.pdf, summary.json, series.csv) into ``out_dir``."""
        from .report import write_audit_report

        return write_audit_report(self, Path(out_dir), formats, paper)


# -- running -------------------------------------------------------------------------------------------------
def _floating(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() and output.numel() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _floating(item)]
    return []


def _loss(output: Any, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy against random labels (classes on dim 1) for (batch, classes) outputs under "auto", or
    under "ce"; otherwise the sum over the output's floating-point tensors of their mean squared value."""
    tensors = _floating(output)
    if not tensors:
        raise ModelLoadError(f"the model returned a {type(output).__name__} without a floating-point tensor to "
                             "take a loss of")
    first = tensors[0]
    logits = isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2
    if mode == "ce" or (mode == "auto" and logits):
        if first.dim() < 2 or first.shape[1] < 2:
            raise UsageError(f"--loss ce needs (batch, classes, ...) outputs; the model returned shape "
                             f"{tuple(first.shape)}")
        labels = torch.randint(0, first.shape[1], (first.shape[0], *first.shape[2:]), generator=gen)
        return F.cross_entropy(first.float(), labels.to(first.device))
    return torch.stack([t.float().square().mean() for t in tensors]).sum()


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rejected(model: nn.Module, args: Inputs, cfg: AuditConfig, exc: Exception) -> ModelLoadError:
    shapes = ", ".join(str(tuple(a.shape)) for a in args)
    given = (f" (batch {cfg.batch_size} x input shape {','.join(map(str, cfg.input_shape))})"
             if cfg.input_shape else "")
    hint = ""
    if args[0].is_floating_point() and first_embedding(model) is not None:
        hint = "; the model has an nn.Embedding: for token ids use --input-dtype long"
    return ModelLoadError(f"the model rejected an input of shape {shapes}{given}: {_first_line(exc)}{hint}")


def _record(work: nn.Module, label: str, batches: Sequence[Inputs], cfg: AuditConfig,
            device: torch.device) -> tuple[pd.DataFrame, tuple[LayerInfo, ...], np.ndarray]:
    """Each batch forward and backward under the Recorder (step = batch); labels from a seeded generator."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    recorder = Recorder(work, every=1, run=label, initializer=label, seed=cfg.seed)
    losses: list[float] = []
    with recorder, torch.enable_grad():
        for batch in batches:
            # a copy that requires grad (dL/dy also before the first weight), never the caller's tensor
            args = tuple(a.detach().to(device).requires_grad_(True).clone() if a.is_floating_point()
                         else a.to(device) for a in batch)
            try:
                output = work(*args)
            except Exception as exc:
                raise _rejected(work, args, cfg, exc) from exc
            loss = _loss(output, cfg.loss, gen)
            losses.append(float(loss.detach()))
            if loss.requires_grad:
                try:
                    loss.backward()
                except Exception as exc:
                    raise ModelLoadError(f"the backward pass through the model failed: {_first_line(exc)}") from exc
            work.zero_grad(set_to_none=True)
    return recorder.frame(), tuple(recorder.layers()), np.asarray(losses, dtype=np.float64)


def pool_batches(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, kind, stat): the value averaged over the batches (steps), at step 0.

    The weights do not change between batches (no optimizer step), so the per-batch values estimate the
    same quantity and their mean is the better estimate; ``dead_frac`` takes the minimum instead (a unit
    dead for every input is dead in every batch). A NaN in any batch stays NaN.
    """
    if frame.empty:
        return frame
    keys = ["layer", "depth", "module", "kind", "stat"]
    groups = frame.groupby(keys, observed=True, sort=False)["value"]
    pooled = groups.mean().reset_index()
    low = groups.min().to_numpy()
    has_nan = frame["value"].isna().groupby([frame[k] for k in keys], observed=True, sort=False).any().to_numpy()
    values = pooled["value"].to_numpy(np.float64).copy()
    dead = (pooled["stat"].astype(str) == "dead_frac").to_numpy()
    values[dead] = low[dead]
    values[has_nan] = np.nan
    first = frame.iloc[0]
    n = len(pooled)
    return pd.DataFrame({
        "run": pd.Categorical([first["run"]] * n), "initializer": pd.Categorical([first["initializer"]] * n),
        "seed": np.full(n, int(first["seed"]), np.int64), "epoch": np.zeros(n, np.int64),
        "step": np.zeros(n, np.int64), "phase": pd.Categorical(["train"] * n),
        "layer": pd.Categorical(pooled["layer"].astype(str), categories=list(frame["layer"].cat.categories)),
        "depth": pooled["depth"].to_numpy(np.int64), "module": pd.Categorical(pooled["module"].astype(str)),
        "kind": pd.Categorical(pooled["kind"].astype(str)), "stat": pd.Categorical(pooled["stat"].astype(str)),
        "value": values,
    }, columns=list(FRAME_COLUMNS))


def _snapshot(model: nn.Module, layers: Sequence[LayerInfo]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each recorded weight layer's weight and matching bias (for the symmetry check), by module name."""
    names = {la.module_name for la in layers if la.role == "weight"}
    snap: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, module in model.named_modules():
        key = name or type(module).__name__
        weight = main_weight(module)
        if key not in names or weight is None or weight.dim() < 2:
            continue
        bias = next((b for b in (getattr(module, attr, None) for attr in ("bias", "in_proj_bias", "bias_ih_l0"))
                     if isinstance(b, torch.Tensor)), None)
        snap[key] = (weight.detach().float().cpu().numpy().copy(),
                     None if bias is None else bias.detach().float().cpu().numpy().copy())
    return snap


def _kept_spec(model: nn.Module) -> KeptSpec:
    layers = [m for _, m in weight_layers(model)]
    moments: dict[tuple[int, ...], list[float]] = {}
    for m in layers:
        weight: torch.Tensor = m.weight
        moments.setdefault(tuple(weight.shape), []).append(float(weight.detach().double().square().mean()))
    default = bool(layers) and all(looks_pytorch_default(m) for m in layers)
    return KeptSpec("pytorch-default" if default else KEEP,
                    second_moments=tuple((k, float(np.mean(v))) for k, v in moments.items()))


def _audit_one(model: nn.Module, label: str, spec: InitSpec | None, cfg: AuditConfig,
               batches: Sequence[Inputs], device: torch.device) -> AuditRun:
    start = time.perf_counter()
    cuda = [device.index] if device.type == "cuda" and device.index is not None else []
    with torch.random.fork_rng(devices=cuda), working_copy(model, device) as work:
        torch.default_generator.manual_seed(cfg.seed)  # not torch.manual_seed: it would seed every GPU
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(cfg.seed)
        if spec is not None:
            apply_initializer(work, spec, cfg.seed)
        series, layers, losses = _record(work, label, batches, cfg, device)
        weights = layer_weights(work, layers, reinitialized=spec is not None)
        snapshot = _snapshot(work, layers)
        run_spec = spec if spec is not None else _kept_spec(work)
    frame = pool_batches(series)
    evidence = RunEvidence(run=label, spec=run_spec, frame=frame, layers=layers, weights_init=snapshot,
                           weights_final={}, losses=losses)
    verdicts = check_run(evidence, rng_seed=cfg.seed)
    bad = np.flatnonzero(~np.isfinite(losses))
    return AuditRun(
        name=label, spec=run_spec, seed=cfg.seed, history=(), test_accuracy=math.nan, test_loss=math.nan,
        predictions=np.zeros(0, np.int64), step_losses=losses, frame=frame, layers=layers, verdicts=verdicts,
        theory=theory_rows(evidence), diverged_step=int(bad[0]) if len(bad) else None,
        seconds=time.perf_counter() - start, weights=weights, series=series,
    )


def run_audit(model: nn.Module, config: AuditConfig, example_input: Any = None,
              command: str | None = None) -> AuditResult:
    """Audit ``model`` as ``config`` says (see :func:`audit`); ``command`` is recorded in the report."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"audit needs an nn.Module, not {type(model).__name__}")
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    started, start = datetime.now(UTC), time.perf_counter()
    batches, inputs = make_inputs(model, config, example_input)
    runs = tuple(_audit_one(model, label, spec, config, batches, device)
                 for label, spec in zip(config.inits, config.specs, strict=True))
    advice = recommend([(r.label, r.verdicts, r.layers, r.weights) for r in runs])
    return AuditResult(config=config, model=config.target, inputs=inputs, runs=runs, recommendation=advice,
                       started=started, seconds=time.perf_counter() - start,
                       command=command or _api_command(config), environment=environment(device))


def _api_command(cfg: AuditConfig) -> str:
    defaults = AuditConfig()
    given = [f"{k}={getattr(cfg, k)!r}" for k in ("input_shape", "inits", "batches", "batch_size", "inputs",
                                                  "input_dtype", "vocab", "loss", "seed", "device")
             if getattr(cfg, k) != getattr(defaults, k)]
    return f"initdiag.audit({', '.join([cfg.target, *given])})"


def audit(model: nn.Module, example_input: Any = None, *, input_shape: Sequence[int] | None = None,
          inits: Sequence[str] = (KEEP,), batches: int = 4, batch_size: int = 16, inputs: str = "normal",
          input_dtype: str = "float", vocab: int | None = None, loss: str = "auto", seed: int = 0,
          device: str = "cpu", data_dir: str | Path | None = None) -> AuditResult:
    """Diagnose the initialization of ``model``: a few batches forward and backward, no training.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (parameters, buffers, train/eval mode,
            ``requires_grad``, hooks, the global RNG state).
        example_input: one batch (batch dimension first), or a tuple of the model's positional arguments;
            used instead of generated inputs.
        input_shape: one sample's shape, without the batch dimension, for generated inputs.
        inits: ``"keep"`` (the model as it is) and/or initializers (``"he"``, ``"random:std=0.05"``, ...),
            each applied to a copy (Conv/Linear weights) and audited side by side.
        batches, batch_size: how many generated batches of how many samples.
        inputs: ``"normal"`` (standard normal; token ids with ``input_dtype="long"``) or ``"mnist"``.
        vocab: token ids are drawn from ``[0, vocab)`` (default: the first Embedding's size).
        loss: ``"auto"`` (cross-entropy against random labels for (batch, classes) outputs, else the mean
            of squared outputs), ``"ce"`` or ``"mse"``.
        seed: seeds the inputs, the labels, the initializers and the forked global RNG (dropout).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        data_dir: MNIST directory for ``inputs="mnist"``.

    Returns an :class:`AuditResult`: ``runs``, ``verdicts``, ``frame``, ``passed``, ``recommendation`` and
    ``write(out_dir)``. Bad arguments raise :class:`~initdiag.errors.UsageError`; a model that fails on the
    input raises :class:`~initdiag.errors.ModelLoadError` with the shape given and the model's error.
    """
    config = AuditConfig(
        target=type(model).__name__, input_shape=tuple(input_shape) if input_shape is not None else None,
        inits=parse_audit_inits(inits) if isinstance(inits, str) else tuple(inits),
        batches=batches, batch_size=batch_size, inputs=inputs, input_dtype=input_dtype, vocab=vocab, loss=loss,
        seed=seed, device=device, data_dir=Path(data_dir) if data_dir is not None else None,
    )
    return run_audit(model, config, example_input)
