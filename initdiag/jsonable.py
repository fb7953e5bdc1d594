"""Plain JSON values from initdiag's results (numpy scalars and arrays to Python, NaN/Inf to null), a run's name,
and names made safe for file names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["file_name", "finite", "json_safe", "run_name"]


def run_name(label: str, seed: int) -> str:
    """A run's name, ``label/seedN``: the key runs are stored, resumed and reported under."""
    return f"{label}/seed{seed}"


def file_name(name: str) -> str:
    """``name`` as a file or directory name: every run of characters other than ``A-Za-z0-9._=-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None."""
    if x is None or isinstance(x, (str, bytes)):
        return None
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts: mappings with string keys,
    tuples/arrays as lists, numpy scalars as Python numbers, NaN/Inf as None, paths as strings,
    dataclasses as dicts; anything else as its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite(value)
    if isinstance(value, PurePath):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return json_safe(asdict(value))
    return str(value)
