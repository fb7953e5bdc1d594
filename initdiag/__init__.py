"""initdiag: diagnose the weight initialization of PyTorch models with statistics."""

from __future__ import annotations

__version__ = "0.1.0"

from .audit import AuditResult, audit  # the function: `initdiag.audit(...)`
from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError
from .initializers import INITIALIZERS, InitSpec, apply_initializer
from .memory import keep_heap
from .recorder import Recorder

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
    "__version__",
    "apply_initializer",
    "audit",
    "keep_heap",
]
