"""initdiag: diagnose the weight initialization of PyTorch models with statistics.

The names below load on first use (PEP 562), so that ``initdiag --help`` and usage errors answer without
importing torch (``audit`` itself imports the audit's machinery when called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .audit import audit
from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError
from .vocab import __version__

if TYPE_CHECKING:
    from .audit import AuditResult
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
    "AuditResult": ".results", "Verdict": ".checks", "INITIALIZERS": ".initializers",
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

