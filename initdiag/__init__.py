"""initdiag: diagnose the weight initialization of PyTorch models with statistics."""

from __future__ import annotations

from .audit import AuditResult, audit
from .checks import Verdict
from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError
from .initializers import INITIALIZERS, InitSpec, apply_initializer
from .recording import Recorder
from .vocab import __version__

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
