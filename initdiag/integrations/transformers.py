"""initdiag inside a Hugging Face ``Trainer``: ``InitDiagCallback``, a ``transformers.TrainerCallback``.

::

    from initdiag.integrations.transformers import InitDiagCallback
    with InitDiagCallback(out="reports/bert", every=10) as diag:
        Trainer(model=model, args=args, train_dataset=data, callbacks=[diag]).train()

The model comes from the event's keyword arguments. At its first training forward the model is audited on
that batch's inputs (the checks of ``initdiag audit``, on a copy); from the next step on the recorder
records every ``every``-th forward (transformers' own layer types such as ``Conv1D`` are layers: the
structure is discovered, not listed), the loss of each forward is read from the model's output (``.loss``),
weight gradients are read in ``on_pre_optimizer_step`` (after clipping), and at the end of training the
report is written where ``state.is_world_process_zero``. ``fail_on`` names checks that, failing at
initialization, stop training (``control.should_training_stop``). transformers has no event for a training
that raises: used as a context manager (above) the callback takes its hooks off and restores every module's
train/eval mode then too; :meth:`close` does the same by hand.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import UsageError
from .session import MAX_STEPS, Sink, TrainingSession, dashboard_sinks, settings_text, trainer_dtype

__all__ = ["InitDiagCallback"]

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the extra is not installed
    raise UsageError("initdiag.integrations.transformers needs transformers: "
                     "pip install 'initdiag[transformers]'") from None

_INPUT_KEYS = ("input_ids", "pixel_values", "inputs_embeds", "input_values", "input_features")


def _model_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    if args and isinstance(args[0], torch.Tensor):
        return (args[0],)
    for key in _INPUT_KEYS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return (kwargs[key],)
    raise UsageError("cannot find the model's input among the Trainer's batch keys "
                     f"({', '.join(kwargs) or 'none'}); pass input_fn=lambda args, kwargs: ... to the callback")


class InitDiagCallback(TrainerCallback):
    """The audit at the first batch, the recorder during training, the report at the end (module docstring)."""

    def __init__(self, out: str | Path = "reports/transformers", every: int = 10,
                 formats: Sequence[str] = ("html", "json"), fail_on: Sequence[str] = (),
                 tensorboard: str | Path | None = None, wandb: bool = False,
                 input_fn: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None = None,
                 max_steps: int | None = MAX_STEPS, stream_to: str | Path | None = None) -> None:
        self.session = TrainingSession(out, every, formats, fail_on, label="transformers", grads_at="optimizer",
                                       max_steps=max_steps, stream_to=stream_to)
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self.wandb = wandb
        self.input_fn = input_fn or _model_input
        self.written: dict[str, Path] = {}
        self._handles: list[RemovableHandle] = []
        self._sinks: list[Sink] = []
        self._stop: str | None = None
        self._dtype: str | None = None

    # -- Trainer events -----------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None or not state.is_world_process_zero or self.session.started:
            return
        try:
            self.session.steps_per_epoch = len(train_dataloader) if train_dataloader is not None else None
        except TypeError:
            self.session.steps_per_epoch = None
        self.session.save_modes(model)
        self.session.settings = settings_text({
            k: getattr(args, k, None) for k in (
                "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_grad_norm", "weight_decay", "warmup_steps", "warmup_ratio",
                "lr_scheduler_type", "optim", "fp16", "bf16", "seed")})
        self._dtype = trainer_dtype("bf16" if getattr(args, "bf16", False) else "16" if getattr(args, "fp16", False)
                                    else None)
        self._handles.append(model.register_forward_pre_hook(self._first_forward, with_kwargs=True))

    def _first_forward(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not torch.is_grad_enabled():
            return
        self._remove_handles()  # before the audit copies the model: the copy must not carry our hooks
        self._stop = self.session.begin(model, self.input_fn(args, kwargs), dtype=self._dtype)
        if self.session.recorder is not None:
            self.session.recorder.joined_forward()  # this forward is step 0: record it and note its loss
        self._handles.append(model.register_forward_hook(self._loss_of))
        self._sinks = dashboard_sinks(self.tensorboard, self.wandb)
        if self._stop is not None:
            print(self._stop, file=sys.stderr)

    def _loss_of(self, model: nn.Module, args: Any, output: Any) -> None:
        recorder = self.session.recorder
        if torch.is_grad_enabled() and recorder is not None and recorder.step >= 0:  # losses[i] is step i
            loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
            self.session.loss(loss if isinstance(loss, torch.Tensor) else None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._stop is not None:
            control.should_training_stop = True

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session.recorder is not None and self.session.recorder.active:
            self.session.recorder.before_optimizer_step()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session.recorder is not None and self.session.recorder.active:
            self.session.publish(self._sinks)

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     **kwargs: Any) -> None:
        self._remove_handles()
        if model is None or not self.session.started:
            self.close()
            return
        try:
            self.written = self.session.finish(model, write=state.is_world_process_zero, sinks=self._sinks)
        finally:
            self.close()

    # -- cleanup ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Hooks off, modes restored, dashboards closed (idempotent)."""
        self._remove_handles()
        self.session.close()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> InitDiagCallback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _remove_handles(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
