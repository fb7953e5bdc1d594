"""Direct hook dispatch inside ``nn.Sequential`` while a :class:`~initdiag.recorder.Recorder` is attached.

A module with any hook takes torch's generic path on every call (``Module._call_impl``: a closure,
hook lists built and walked); on the CPU that costs about as much per module as the recorder's own
work. While recording, each plain ``nn.Sequential`` of the model (exactly that class, so its
``forward`` is known) becomes a :class:`RecordingSequential`, whose ``forward`` is the same loop, but:

* a child whose only hook is the recorder's forward hook: its ``forward``, then that hook, called
  directly, which is what ``Module.__call__`` would do;
* a child without hooks: its ``forward``, called directly;
* a weight layer and the ``nn.ReLU`` after it that the recorder pairs (each with only the recorder's
  hook): both go to ``Recorder.run_pair``, which records the two from one read of the layer's output;
* any other child (the user's hooks, backward hooks, a compiled module), and every child while global
  module hooks exist or under tracing or compiling: called as usual.

The class is restored when the recorder detaches, and pickling or copying during recording gives a plain
``nn.Sequential``.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.fx import _symbolic_trace
from torch.nn.modules import module as _nn_module

__all__ = ["RecordingSequential", "global_hooks", "release", "take_over", "traced", "tracing", "use_dispatch"]

_GLOBAL_NAMES = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called",
                 "_global_backward_hooks", "_global_backward_pre_hooks")
# torch's hooks on every module (unknown name: a non-empty placeholder, so direct dispatch stays off)
_GLOBAL_HOOKS = tuple(getattr(_nn_module, name, {None: None}) for name in _GLOBAL_NAMES)


def global_hooks() -> bool:
    """True when a hook registered for all modules (``register_module_forward_hook``, ...) exists."""
    return any(_GLOBAL_HOOKS)


Hook = Callable[[nn.Module, Any, Any], None]


class Owner(Protocol):
    """What a recorder gives :class:`RecordingSequential`: its model, the hooks it may call directly
    (``id(module) -> (handle id, hook)``), its pairs (``id(layer) -> the ReLU after it``) and how it runs
    one, and its step start."""

    model: nn.Module
    direct_hooks: dict[int, tuple[int, Hook]]
    pairs: dict[int, nn.Module]

    def run_pair(self, mod: nn.Module, mod_hook: Hook, relu: nn.Module, relu_hook: Hook, x: Any) -> Any: ...

    def _on_root_forward(self, module: nn.Module, args: Any) -> None: ...


_OWNERS: dict[int, Owner] = {}  # id(sequential) -> the recorder that took it over
_ENABLED = True


def use_dispatch(enabled: bool) -> bool:
    """Switch direct dispatch on or off for recorders attached from now on (for comparisons: off, every
    hook goes through torch and no pair is recorded as one); returns the previous setting."""
    global _ENABLED
    was, _ENABLED = _ENABLED, enabled
    return was


_FX_TLS = getattr(_symbolic_trace, "_is_fx_tracing_tls", None)  # what is_fx_symbolic_tracing() reads


def traced() -> bool:
    """True under torch.jit.trace or torch.fx.symbolic_trace: shapes and outputs are traced values or
    proxies, not numbers."""
    if torch._C._get_tracing_state() is not None:
        return True
    return getattr(_FX_TLS, "flag", False) if _FX_TLS is not None else _symbolic_trace.is_fx_symbolic_tracing()


def tracing() -> bool:
    """True under :func:`traced` or torch.compile, which must see every module call."""
    return traced() or torch.compiler.is_compiling()


class RecordingSequential(nn.Sequential):
    """``nn.Sequential`` while a recorder owns it: same children, same results (see the module
    docstring). Only :func:`take_over` creates one, by changing the class of an existing instance."""

    def forward(self, input: Any) -> Any:
        owner = _OWNERS.get(id(self))
        if owner is not None and self is owner.model:  # the root's step starts here, not in a pre-hook
            owner._on_root_forward(self, (input,))
        if owner is None or global_hooks() or tracing():
            for module in self:
                input = module(input)
            return input
        direct, pairs = owner.direct_hooks, owner.pairs
        children = list(self._modules.values())
        i, n = 0, len(children)
        while i < n:
            module = children[i]
            i += 1
            if (module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
                    or module._compiled_call_impl is not None):  # not _plain(module), inline: once per child
                input = module(input)
                continue
            if not module._forward_hooks:
                input = module.forward(input)
                continue
            entry = _only_hook(module, direct)
            if entry is None:
                input = module(input)
                continue
            relu = pairs.get(id(module))
            if relu is not None and i < n and children[i] is relu and _plain(relu):
                relu_entry = _only_hook(relu, direct)
                if relu_entry is not None:
                    i += 1
                    input = owner.run_pair(module, entry[1], relu, relu_entry[1], input)
                    continue
            output = module.forward(input)
            entry[1](module, (input,), output)
            input = output
        return input

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle and copy as the plain ``nn.Sequential`` it is outside recording (``copyreg``'s generic
        reconstructor: the pickle names only the standard library and torch)."""
        reduced = super().__reduce_ex__(protocol)
        if isinstance(reduced, tuple) and len(reduced) >= 2:
            reduced = (copyreg._reconstructor, (nn.Sequential, object, None), *reduced[2:])  # type: ignore[attr-defined]
        return reduced


RecordingSequential.__name__ = RecordingSequential.__qualname__ = "Sequential"  # repr unchanged


def _plain(module: nn.Module) -> bool:
    """True when ``Module.__call__`` would only run ``module``'s forward hooks around its ``forward``: no
    forward pre-hooks, no backward hooks, not compiled."""
    return not (module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
                or module._compiled_call_impl is not None)


def _only_hook(module: nn.Module, direct: dict[int, tuple[int, Hook]]) -> tuple[int, Hook] | None:
    """The recorder's forward hook on ``module`` when it is the only one, else None."""
    entry = direct.get(id(module))
    hooks = module._forward_hooks
    return entry if entry is not None and len(hooks) == 1 and entry[0] in hooks else None


def take_over(owner: Owner) -> list[nn.Sequential]:
    """Make every plain ``nn.Sequential`` in ``owner.model`` that no other recorder owns a
    :class:`RecordingSequential` owned by ``owner``; returns them (for :func:`release`)."""
    taken: list[nn.Sequential] = []
    if not _ENABLED:
        return taken
    for module in owner.model.modules():
        if type(module) is nn.Sequential and id(module) not in _OWNERS:
            module.__class__ = RecordingSequential
            _OWNERS[id(module)] = owner
            taken.append(module)
    return taken


def release(taken: list[nn.Sequential]) -> None:
    """Undo :func:`take_over`."""
    for module in taken:
        _OWNERS.pop(id(module), None)
        if type(module) is RecordingSequential:
            module.__class__ = nn.Sequential  # type: ignore[assignment]
