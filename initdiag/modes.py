"""Every module's train/eval mode, saved and put back: how initdiag leaves a user's model as it found it."""

from __future__ import annotations

from types import TracebackType

from torch import nn

__all__ = ["Modes", "preserve_modes"]


class Modes:
    """The ``training`` flag of every module of a model at one moment; :meth:`restore` sets them back.

    A context manager: leaving the ``with`` block restores the flags, also when the block raises.
    """

    def __init__(self, model: nn.Module) -> None:
        self._saved = [(m, m.training) for m in model.modules()]

    def restore(self) -> None:
        """Set every saved module's ``training`` flag back (idempotent; submodules added since are left alone)."""
        for module, training in self._saved:
            module.training = training

    def __enter__(self) -> Modes:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


def preserve_modes(model: nn.Module) -> Modes:
    """Save every module's train/eval mode now; ``with preserve_modes(model): ...`` restores them on the way out
    (in ``finally``), and a caller that saves in one callback and restores in another calls ``.restore()``."""
    return Modes(model)
