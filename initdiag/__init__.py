"""initdiag: diagnose the weight initialization of PyTorch models with statistics.

The names below load on first use (PEP 562), so that ``initdiag --help`` and usage errors answer without
importing torch (``audit`` itself imports the audit's machinery when called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .audit import audit
from .errors import DataError, InitDiagError, ModelLoadError, OutputError, UsageError
from .lazy import lazy_getattr
from .repair import fix
from .vocab import __version__

if TYPE_CHECKING:
    from .audit import AuditResult
    from .checks import Verdict
    from .initializers import INITIALIZERS, InitSpec, apply_initializer
    from .recording import Recorder
    from .results import FixResult

__all__ = [
    "INITIALIZERS",
    "AuditResult",
    "DataError",
    "FixResult",
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
    "fix",
]

_LAZY = {
    "AuditResult": ".results", "FixResult": ".results", "Verdict": ".checks", "INITIALIZERS": ".initializers",
    "InitSpec": ".initializers", "apply_initializer": ".initializers", "Recorder": ".recording",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

