"""initdiag: diagnose the weight initialization of PyTorch models with statistics.

The names below load on first use (PEP 562), so that ``initdiag --help`` and usage errors answer without
importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError
from .vocab import __version__

if TYPE_CHECKING:
    from .audit import AuditResult, audit
    from .checks import Verdict
    from .initializers import INITIALIZERS, InitSpec, apply_initializer
    from .recording import Recorder

__all__ = [
    "INITIALIZERS",
    "AuditResult",
    "DataError",
    "InitDiagError",
    "InitSpec",
    "ModelLoadError",
    "OutputError",
    "Recorder",
    "UsageError",
    "Verdict",
    "__version__",
    "apply_initializer",
    "audit",
]

_LAZY = {
    "AuditResult": ".audit", "audit": ".audit", "Verdict": ".checks", "INITIALIZERS": ".initializers",
    "InitSpec": ".initializers", "apply_initializer": ".initializers", "Recorder": ".recording",
}


def __getattr__(name: str) -> Any:
    """Load the public name ``name`` from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'initdiag' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module: importing the submodule ``initdiag.audit`` binds it as an attribute of the package,
    which would hide the function ``initdiag.audit``; the function keeps the name, as it did when it was
    imported eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
