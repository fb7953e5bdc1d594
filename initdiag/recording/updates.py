"""The weights a training step used, read after its backward pass, and the update the optimizer made to them.

A recorded step notes each weight layer's weight as its forward runs (:meth:`StepWeights.add`); once the
backward pass has accumulated every ``.grad``, the recorder reduces each weight and its gradient and, when
updates are recorded, keeps a copy of the weight (:meth:`StepWeights.take`). At the model's next forward,
whatever ran in between (the optimizer's step, in any loop), the change ``W_{t+1} - W_t`` is the update of
step ``t`` (:meth:`StepWeights.updates`): one copy of the recorded weights per recorded step, on their
device, into a buffer per weight kept from step to step (a fresh tensor per step cost more than the copy itself:
32 against 20 us for the seed CNN's five weights in a hot loop), and one subtraction into that buffer, with no
host sync.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .rows import LayerState

__all__ = ["StepWeights"]


class StepWeights:
    """This step's weights (to read after backward) and the copies of the last recorded step's weights."""

    def __init__(self, updates: bool) -> None:
        self.record_updates = updates
        self.pending: list[tuple[LayerState, torch.Tensor]] = []
        self.queued = False
        self._copies: list[tuple[LayerState, torch.Tensor, torch.Tensor]] = []
        self._copied_at: tuple[int, int] = (-1, 0)
        self._buffers: dict[int, torch.Tensor] = {}  # layer code -> the buffer its copies go to

    def reset(self) -> None:
        """A new step: nothing noted yet."""
        self.pending = []
        self.queued = False

    def add(self, layer: LayerState, weight: torch.Tensor) -> None:
        self.pending.append((layer, weight))

    def take(self, step: int, epoch: int) -> list[tuple[LayerState, torch.Tensor]]:
        """The weights noted this step (emptied); with updates recorded, a copy of each is kept as ``W_t``."""
        taken, self.pending = self.pending, []
        self.queued = False
        if self.record_updates and taken:
            with torch.no_grad():
                self._copies = [(layer, w, self._copy(layer, w)) for layer, w in taken]
            self._copied_at = (step, epoch)
        return taken

    def _copy(self, layer: LayerState, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` copied into the layer's buffer (made anew when the weight's shape, dtype or device moved).

        The buffer is free again when the copy is: its update has been reduced, or staged (copied), by the time
        the next recorded step copies into it, and on a device the writes are ordered on the stream."""
        w = weight.detach()
        buffer = self._buffers.get(layer.code)
        if buffer is None or buffer.shape != w.shape or buffer.dtype != w.dtype or buffer.device != w.device:
            buffer = self._buffers[layer.code] = torch.empty_like(w, memory_format=torch.contiguous_format)
        return buffer.copy_(w)

    def updates(self) -> Iterator[tuple[LayerState, torch.Tensor, int, int]]:
        """``(layer, W_now - W_t, t, epoch)`` for the weights copied at recorded step ``t`` (then forgotten)."""
        copies, self._copies = self._copies, []
        step, epoch = self._copied_at
        with torch.no_grad():
            for layer, weight, before in copies:
                if weight.shape == before.shape:
                    yield layer, torch.sub(weight.detach(), before, out=before), step, epoch  # into the copy

    def clear(self) -> None:
        self.reset()
        self._copies = []
        self._buffers = {}
