"""initdiag attached to someone else's training: the audit at the first batch, the recorder during training,
the training-phase verdicts and the report at the end. What the Lightning and Hugging Face callbacks drive.

A :class:`TrainingSession` knows nothing of a framework; a callback calls, in this order::

    session.begin(model, example_input)   # first training batch: audit (on a copy), then attach the recorder
    session.loss(loss)                    # after each training step (a tensor: no host sync)
    session.publish(sinks)                # now and then: new per-layer rows to the dashboards
    session.finish(model, write=rank0)    # end of fit: hooks off, checks, report
    session.close()                       # always (finally / on exception): hooks off, modes restored

The user's model is never altered: the audit works on a copy, the recorder only adds hooks that come off in
:meth:`close` (also when the fit raises), and the train/eval mode of every module at :meth:`begin` is
restored when the session ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..audit import run_audit
from ..checks import CHECKS, RunAnalysis, RunEvidence, Verdict, analyze, failed_checks
from ..config import KEEP, AuditConfig, parse_fail_on
from ..errors import UsageError
from ..modes import Modes, preserve_modes
from ..recording import Recorder, Weights, input_groups, snapshot_weights
from ..results import AuditResult, TrainingResult, TrainingRun
from ..structure.layers import LayerInfo
from ..vocab import FORMATS, Kind, Stat
from ._series import SeriesCursor, StepValues

__all__ = ["LOGGED", "Sink", "TrainingSession", "dashboard_sinks", "first_tensors", "trainer_dtype"]

LOGGED: frozenset[tuple[str, str]] = frozenset({(Kind.FORWARD, Stat.VAR), (Kind.BACKWARD, Stat.VAR),
                                                (Kind.WEIGHT_GRAD, Stat.VAR), (Kind.UPDATE, Stat.VAR)})
"""(kind, stat) series sent to a framework's own logger (the dashboards get every series)."""


class Sink(Protocol):
    """Where new rows go: :class:`~initdiag.integrations.tensorboard.TensorBoardSink`, ``WandbSink``, or a
    framework's logger wrapped by :class:`LoggerSink`."""

    def log(self, frame: pd.DataFrame) -> int: ...

    def text(self, verdicts: Sequence[Verdict]) -> None: ...

    def close(self) -> None: ...


class LoggerSink:
    """A framework logger's ``log_metrics(metrics: dict, step: int)`` as a :class:`Sink` of the
    :data:`LOGGED` series (Lightning's loggers; anything with that method)."""

    def __init__(self, log_metrics: Callable[[dict[str, float], int], Any]) -> None:
        self._log_metrics = log_metrics
        self._cursor = SeriesCursor()

    def log(self, frame: pd.DataFrame) -> int:
        keep = pd.Series(list(zip(frame["kind"].astype(str), frame["stat"].astype(str), strict=True)),
                         index=frame.index).isin(LOGGED) if len(frame) else pd.Series(dtype=bool)
        batches: list[StepValues] = self._cursor.take(frame[keep] if len(frame) else frame)
        for batch in batches:
            self._log_metrics({t: v for t, v in zip(batch.tags, batch.values, strict=True) if math.isfinite(v)},
                              batch.step)
        return sum(len(b.values) for b in batches)

    def text(self, verdicts: Sequence[Verdict]) -> None:
        """Loggers have no common text API: the verdicts go to the report and the dashboards."""

    def close(self) -> None:
        """The framework owns its logger."""


def dashboard_sinks(tensorboard: Path | None, wandb: bool) -> list[Sink]:
    """The dashboards a callback writes to: TensorBoard event files in ``tensorboard``, and the active W&B run
    when ``wandb`` (none when no run is active). The optional packages are imported only when asked for."""
    sinks: list[Sink] = []
    if tensorboard is not None:
        from .tensorboard import TensorBoardSink
        sinks.append(TensorBoardSink(tensorboard))
    if wandb:
        from .wandb import WandbSink, active_run
        if active_run() is not None:
            sinks.append(WandbSink())
    return sinks


def first_tensors(batch: Any) -> tuple[torch.Tensor, ...]:
    """The model's inputs in a training batch: a tensor; the first element of a tuple/list ``(x, y)``; a
    dict's ``input_ids`` (or ``pixel_values``, ``x``, ``input``), else its first tensor."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch:
        return first_tensors(batch[0])
    if isinstance(batch, dict):
        for key in ("input_ids", "pixel_values", "inputs_embeds", "x", "input", "inputs"):
            if isinstance(batch.get(key), torch.Tensor):
                return (batch[key],)
        found = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        if found:
            return (found[0],)
    raise UsageError(f"cannot find the model's input in a training batch of type {type(batch).__name__}; "
                     "pass input_fn=lambda batch: ... to the callback")


def settings_text(values: Mapping[str, Any]) -> dict[str, str]:
    """The settings a callback read, as text, the unset ones (None) left out."""
    return {k: (f"{v:g}" if isinstance(v, float) else str(v)) for k, v in values.items() if v is not None}


def optimizer_settings(optimizer: Any) -> dict[str, Any]:
    """An optimizer's class and its first parameter group's learning rate and weight decay."""
    if optimizer is None:
        return {}
    groups = getattr(optimizer, "param_groups", None) or [{}]
    return {"optimizer": type(optimizer).__name__, "lr": groups[0].get("lr"),
            "weight_decay": groups[0].get("weight_decay")}


def trainer_dtype(precision: Any) -> str | None:
    """The half dtype a trainer's precision setting computes in: Lightning's ``"16-mixed"``/``"bf16-mixed"``/
    ``"16-true"``/``16``, the Hugging Face Trainer's ``fp16``/``bf16`` flags as ``"16"``/``"bf16"``; None else."""
    text = str(precision).lower()
    if text.startswith("bf16"):
        return "bfloat16"
    return "float16" if text.startswith("16") or text in ("fp16", "half") else None


MAX_STEPS = 2048
"""Recorded steps a callback keeps by default: the first 256 one by one, then thinned evenly (a 12-layer GPT-2
records ~760 rows per step: at most ~1.6 M rows, whatever the run's length)."""


class TrainingSession:
    """The audit at initialization, the recording during training and the report at the end (module docstring).

    Args:
        out: where the report goes (created at the end, on the process that writes).
        every: record every ``every``-th training step.
        formats: report files (``html``, ``pdf``, ``json``, ``csv``).
        fail_on: check names that, failing in the audit at initialization, stop the fit.
        label: the framework, for the report's command line.
        grads_at: when the recorder reads weight gradients (:class:`~initdiag.Recorder`'s ``grads_at``).
        max_steps: the recorded steps kept, the first ones all, then thinned evenly so the series, its CSV
            and the report stay bounded in a long training (:mod:`~initdiag.recording.thinning`); None: all.
        stream_to: a directory (one per process) that receives every recorded step as Parquet parts while
            training runs (:mod:`~initdiag.recording.sink`); the report reads them back, thinned to
            ``max_steps``.
    """

    def __init__(self, out: str | Path, every: int = 10, formats: Sequence[str] = ("html", "json"),
                 fail_on: Iterable[str] = (), label: str = "training", grads_at: str = "backward",
                 max_steps: int | None = MAX_STEPS, stream_to: str | Path | None = None) -> None:
        if every < 1:
            raise UsageError(f"every must be >= 1 (got {every})")
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise UsageError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
        self.out = Path(out)
        self.every = every
        self.formats = tuple(formats)
        self.fail_on = parse_fail_on(",".join(fail_on)) if not isinstance(fail_on, str) else parse_fail_on(fail_on)
        self.label = label
        self.grads_at = grads_at
        self.max_steps, self.stream_to = max_steps, stream_to
        self.audit: AuditResult | None = None
        self.recorder: Recorder | None = None
        self.analysis = RunAnalysis()
        """The training-phase analysis, after :meth:`finish`."""
        self.verdicts: tuple[Verdict, ...] = ()
        """The training-phase verdicts, after :meth:`finish`."""
        self.written: dict[str, Path] = {}
        self._loss_buffer: torch.Tensor | None = None
        self._loss_count = 0
        self._modes: Modes | None = None
        self._weights_init: Weights = {}
        self._started = datetime.now(UTC)
        self._start = time.perf_counter()
        self.steps_per_epoch: int | None = None
        self.settings: dict[str, str] = {}
        """The framework's settings of this training (optimizer, learning rate, epochs, precision, ...), as the
        callback read them: the report's provenance shows them."""

    @property
    def started(self) -> bool:
        return self.audit is not None

    def begin(self, model: nn.Module, example_input: Any, seed: int = 0, dtype: str | None = None) -> str | None:
        """Audit ``model`` on ``example_input`` (the first training batch's inputs), then start recording;
        ``dtype`` ("float16", "bfloat16"): the precision the trainer computes in (the ``precision`` check's).

        Returns the line that says why training should stop (a ``fail_on`` check failed at initialization),
        else None."""
        if self.audit is not None:
            raise RuntimeError("the session has already begun")
        if self._modes is None:
            self.save_modes(model)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        config = AuditConfig(target=type(model).__name__, inits=(KEEP,), seed=seed, device=str(device), dtype=dtype)
        self.audit = run_audit(model, config, example_input, command=f"{self.label} (initdiag callback)")
        run = self.audit.runs[0]
        self._weights_init = snapshot_weights(model)
        self.recorder = Recorder(model, every=self.every, run=self.label, initializer=KEEP, seed=seed,
                                 structure=run.structure, grads_at=self.grads_at, max_steps=self.max_steps,
                                 stream_to=self.stream_to)
        self.recorder.__enter__()
        failed = sorted(self.audit.failed(self.fail_on))
        if not failed:
            return None
        why = "; ".join(v.message.split(". ")[0] for v in run.verdicts if failed_checks([v], failed))
        return f"initdiag: the initialization fails {', '.join(failed)}: {why}"

    def save_modes(self, model: nn.Module) -> None:
        """Remember every module's train/eval mode now (before the framework switches to training): what
        the session restores when it ends."""
        self._modes = preserve_modes(model)

    def loss(self, value: torch.Tensor | float | None) -> None:
        """Note the training loss of one step, copied into one buffer on its device (no sync; doubled when
        full): a tensor kept per step would pin, between the step's freed activations, memory the allocator
        can then not return (a 12-layer GPT-2 grew ~30 KiB per step that way)."""
        if value is None:
            return
        t = value.detach().reshape(-1)[:1] if isinstance(value, torch.Tensor) else torch.tensor([float(value)])
        buf, n = self._loss_buffer, self._loss_count
        if buf is None or n == len(buf) or buf.device != t.device:
            grown = torch.empty(max(1024, 2 * n), dtype=torch.float32, device=t.device)
            if buf is not None and n:
                grown[:n].copy_(buf[:n].to(t.device))
            buf = self._loss_buffer = grown
        buf[n:n + 1].copy_(t)
        self._loss_count = n + 1

    def frame(self) -> pd.DataFrame:
        """Everything recorded during training so far (the recorder's tidy frame)."""
        if self.recorder is None:
            raise RuntimeError("the session has not begun")
        return self.recorder.frame()

    def publish(self, sinks: Iterable[Sink]) -> None:
        """Send the rows recorded since the last call to each sink."""
        sinks = list(sinks)
        if sinks and self.recorder is not None:
            frame = self.recorder.frame()
            for sink in sinks:
                sink.log(frame)

    def losses(self) -> np.ndarray:
        """The training loss of every noted step (float64)."""
        if self._loss_buffer is None or not self._loss_count:
            return np.zeros(0)
        return self._loss_buffer[:self._loss_count].cpu().double().numpy()

    def finish(self, model: nn.Module, write: bool = True, sinks: Iterable[Sink] = ()) -> dict[str, Path]:
        """Stop recording, judge the training (``unstable``, ``stalled``, ``update_ratio``, ``dead_growth``,
        ``diverged``) and, when ``write``, write the report into ``out``. Returns the files written."""
        if self.audit is None or self.recorder is None:
            self.close()
            return {}
        self.recorder.__exit__(None, None, None)
        sinks = list(sinks)
        self.publish(sinks)
        frame, layers = self.recorder.frame(), tuple(self.recorder.layers())
        init = self.audit.runs[0]
        losses = self.losses()
        ev = RunEvidence(run=self.label, initializer=KEEP, frame=frame, layers=layers,
                         weights_init=self._weights_init, weights_final=snapshot_weights(model), losses=losses,
                         structure=init.structure, steps_per_epoch=self.steps_per_epoch,
                         input_groups=input_groups(model))
        self.analysis = analyze(ev, checks=[c for c in CHECKS if c.during_training], theory=False)
        self.verdicts = self.analysis.verdicts
        for sink in sinks:
            sink.text((*init.verdicts, *self.verdicts))
        self._restore_modes()
        if write:
            self.written = self.record(frame, layers, losses).write(self.out, self.formats)
        return self.written

    def record(self, frame: pd.DataFrame, layers: tuple[LayerInfo, ...], losses: np.ndarray) -> TrainingResult:
        """The report's data: the audit at initialization, then the training (every recorded step, the loss of
        every step, the training-phase verdicts)."""
        assert self.audit is not None
        init = self.audit.runs[0]
        seconds = time.perf_counter() - self._start
        run = TrainingRun(name=self.label, label=self.label, seed=init.seed, frame=frame, layers=layers,
                          analysis=self.analysis, losses=losses, seconds=seconds, structure=init.structure,
                          steps_per_epoch=self.steps_per_epoch)
        return TrainingResult(audit=self.audit, training=run, framework=self.label, started=self._started,
                              seconds=seconds, command=self.audit.command, environment=dict(self.audit.environment),
                              settings=dict(self.settings))

    def close(self) -> None:
        """Hooks off and modes restored, whatever happened (idempotent)."""
        if self.recorder is not None and self.recorder.active:
            self.recorder.__exit__(None, None, None)
        self._restore_modes()

    def _restore_modes(self) -> None:
        if self._modes is not None:
            self._modes.restore()
