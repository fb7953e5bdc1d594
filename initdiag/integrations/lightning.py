"""initdiag inside a Lightning fit: ``InitDiagCallback``, a ``lightning.pytorch.Callback``.

::

    from initdiag.integrations.lightning import InitDiagCallback
    trainer = lightning.Trainer(callbacks=[InitDiagCallback(out="reports/fit", every=10)])
    trainer.fit(module, loader)

At the first training batch the module is audited on that batch's inputs (the checks of ``initdiag audit``,
on a copy); from then on the recorder records every ``every``-th training step (a step is one forward of the
module with grad enabled: ``self(x)`` in ``training_step``) and the recorded ``var`` series go to the
trainer's loggers at each epoch's end; at the end of the fit the report (the audit at initialization, the
training-phase verdicts, the series) is written on global rank 0 only. ``fail_on`` names checks that, failing
at initialization, stop the fit (``trainer.should_stop``) with one line. Hooks come off and every module's
train/eval mode is restored also when the fit raises. Works with ``pytorch_lightning`` as well: the callback
is an instance of each package's ``Callback`` that is installed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .session import (
    MAX_STEPS,
    LoggerSink,
    Sink,
    TrainingSession,
    dashboard_sinks,
    first_tensors,
    optimizer_settings,
    settings_text,
    trainer_dtype,
)

__all__ = ["InitDiagCallback"]


def _callback_base() -> type:
    """The ``Callback`` to derive from: Lightning's, pytorch_lightning's, or one of both when both are installed
    (so that either package's Trainer accepts the callback); a one-line UsageError when neither is."""
    bases: list[type] = []
    try:
        import lightning.pytorch as lp
        bases.append(lp.Callback)
    except ImportError:
        pass
    try:
        import pytorch_lightning as pl
        bases.append(pl.Callback)
    except ImportError:
        pass
    if not bases:
        raise UsageError("initdiag.integrations.lightning needs Lightning: pip install 'initdiag[lightning]'")
    if len(bases) == 1:
        return bases[0]

    class Callbacks(*bases):  # type: ignore[misc]
        """A ``Callback`` of both packages."""

    return Callbacks


if TYPE_CHECKING:
    from lightning.pytorch import Callback as _Callback
else:
    _Callback = _callback_base()


class InitDiagCallback(_Callback):
    """initdiag inside a Lightning fit: the audit at the first training batch, the recorder during training,
    the report at the end (see the module docstring)."""

    def __init__(self, out: str | Path = "reports/lightning", every: int = 10,
                 formats: Sequence[str] = ("html", "json"), fail_on: Sequence[str] = (),
                 tensorboard: str | Path | None = None, wandb: bool = False,
                 input_fn: Callable[[Any], Any] | None = None, log_to_loggers: bool = True,
                 max_steps: int | None = MAX_STEPS, stream_to: str | Path | None = None) -> None:
        self.session = TrainingSession(out, every, formats, fail_on, label="lightning", max_steps=max_steps,
                                       stream_to=stream_to)
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self.wandb = wandb
        self.input_fn = input_fn or first_tensors
        self.log_to_loggers = log_to_loggers
        self.written: dict[str, Path] = {}
        self._sinks: list[Sink] = []
        self._active = False

    # -- Lightning hooks --------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and not self.session.started:
            self.session.save_modes(pl_module)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.session.started or not trainer.is_global_zero:
            return
        self._active = True
        batches = getattr(trainer, "num_training_batches", None)
        if isinstance(batches, int) or (isinstance(batches, float) and math.isfinite(batches)):
            self.session.steps_per_epoch = int(batches)
        optimizers = getattr(trainer, "optimizers", None) or [None]
        self.session.settings = settings_text({
            "max_epochs": getattr(trainer, "max_epochs", None), "max_steps": getattr(trainer, "max_steps", None),
            "batches_per_epoch": self.session.steps_per_epoch, "precision": getattr(trainer, "precision", None),
            "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", None),
            "gradient_clip_val": getattr(trainer, "gradient_clip_val", None),
            **optimizer_settings(optimizers[0]), "devices": getattr(trainer, "num_devices", None),
            "strategy": type(getattr(trainer, "strategy", None)).__name__ if hasattr(trainer, "strategy") else None})
        stop = self.session.begin(pl_module, self.input_fn(batch), seed=0,
                                  dtype=trainer_dtype(getattr(trainer, "precision", None)))
        self._sinks = self._make_sinks(trainer)
        if stop is not None:
            print(stop, file=sys.stderr)
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._active:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            self.session.loss(loss)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._active:
            self.session.publish(self._sinks)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        self._active = False
        try:
            self.written = self.session.finish(pl_module, write=True, sinks=self._sinks)
        finally:
            self._close_sinks()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._active = False
        self.session.close()
        self._close_sinks()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.session.close()

    # -- sinks ------------------------------------------------------------------------------------------
    def _make_sinks(self, trainer: Any) -> list[Sink]:
        sinks: list[Sink] = []
        if self.log_to_loggers:
            sinks += [LoggerSink(logger.log_metrics) for logger in getattr(trainer, "loggers", None) or ()]
        return sinks + dashboard_sinks(self.tensorboard, self.wandb)

    def _close_sinks(self) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()
