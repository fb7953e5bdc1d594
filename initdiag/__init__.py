"""initdiag: diagnose the weight initialization of PyTorch models with statistics."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError  # noqa: E402
from .initializers import INITIALIZERS, InitSpec, apply_initializer  # noqa: E402
from .recorder import Recorder  # noqa: E402

__all__ = [
    "INITIALIZERS",
    "DataError",
    "InitDiagError",
    "InitSpec",
    "ModelLoadError",
    "OutputError",
    "Recorder",
    "UsageError",
    "__version__",
    "apply_initializer",
]
