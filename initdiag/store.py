"""Finished runs kept on disk as they end, so an interrupted experiment loses nothing and can resume.

Layout inside the report directory::

    .initdiag/plan.json           the ExperimentConfig and the command line that started it
    .initdiag/runs/<run>.json     one finished run: its scalars, history, layers, analysis (verdicts, theory)
    .initdiag/runs/<run>.npz      and its arrays: predictions, losses, gradient norms, the tidy frame

Nothing read back can execute code: JSON, and ``.npz`` archives read with ``allow_pickle=False`` (every
array is numeric or fixed-width text; a frame's text columns are stored as integer codes plus their
categories). Everything is validated on load: a damaged or foreign file is a :class:`UsageError` naming
the file (one line, exit code 2). Each ``.json`` carries the SHA-256 of its ``.npz``, so the two halves of a
run cannot be mixed up.

Files are written to a temporary name in the same directory, flushed and fsynced, then renamed with
``os.replace``, so a crash or a full disk never leaves a half-written file under its final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checks import RunAnalysis
from .config import ExperimentConfig
from .errors import OutputError, UsageError
from .initializers import InitSpec
from .jsonable import file_name, json_safe
from .results import RunResult
from .series import CATEGORICAL, FRAME_COLUMNS, empty_frame
from .structure import Structure
from .structure.layers import LayerInfo
from .sweep_config import SweepConfig
from .training import EpochStats

__all__ = ["STATE_DIR", "Plan", "RunStore", "atomic_write"]

STATE_DIR = ".initdiag"
FORMAT = "initdiag-store"
FORMAT_VERSION = 2


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory (created with the
    usual mode, 0o666 less the umask), fsynced, then ``os.replace``d; OutputError on failure, and no
    temporary file is left behind whatever happens."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Plan:
    """What an experiment directory was started with (for ``--resume``)."""

    config: ExperimentConfig
    argv: tuple[str, ...]
    fingerprints: Mapping[str, Any] = field(default_factory=dict)
    """Per model reference, the files its import runs and their SHA-256 (:mod:`initdiag.trust`)."""


class _Bad(Exception):
    """A stored file is not what initdiag wrote (the message says what is wrong)."""


def _header(kind: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind}


def _read_json(path: Path, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Bad(f"not readable as JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") != kind:
        raise _Bad(f"not an initdiag {kind} file")
    if data.get("version") != FORMAT_VERSION:
        raise _Bad(f"written by another version of initdiag (store version {data.get('version')!r})")
    return data


def _frame_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for column in FRAME_COLUMNS:
        values = frame[column]
        if column in CATEGORICAL:
            cat = values.astype("category")
            arrays[f"frame.{column}.codes"] = cat.cat.codes.to_numpy(np.int32)
            arrays[f"frame.{column}.categories"] = np.asarray([str(c) for c in cat.cat.categories], dtype=np.str_)
        else:
            arrays[f"frame.{column}"] = values.to_numpy(np.float64 if column == "value" else np.int64)
    return arrays


def _frame_from(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(arrays["frame.value"])
    if n == 0:
        return empty_frame()
    data: dict[str, Any] = {}
    for column in FRAME_COLUMNS:
        if column in CATEGORICAL:
            codes, categories = arrays[f"frame.{column}.codes"], arrays[f"frame.{column}.categories"]
            if codes.shape != (n,) or codes.dtype.kind != "i" or categories.dtype.kind != "U" or (
                    n and (codes.min() < 0 or codes.max() >= len(categories))):
                raise _Bad(f"frame column '{column}' is malformed")
            data[column] = pd.Categorical.from_codes(codes, categories=list(categories))
        else:
            values = arrays[f"frame.{column}"]
            if values.shape != (n,) or values.dtype.kind not in "if":
                raise _Bad(f"frame column '{column}' is malformed")
            data[column] = values
    return pd.DataFrame(data, columns=list(FRAME_COLUMNS))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _load_npz(path: Path, sha256: str) -> dict[str, np.ndarray]:
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise _Bad(f"its arrays {path.name} cannot be read ({exc.strerror or exc})") from None
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise _Bad(f"its arrays {path.name} do not match it (a different or damaged file)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _Bad(f"its arrays {path.name} are not a valid .npz archive ({exc})") from None


def _number(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Bad(f"{x!r} is not a number")
    return float(x)


def _run_json(run: RunResult, sha256: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        **_header("run"), "arrays": sha256, "name": run.name, "initializer": run.spec.label, "seed": run.seed,
        "history": [asdict(e) for e in run.history], "test_accuracy": run.test_accuracy,
        "test_loss": run.test_loss, "layers": [asdict(la) for la in run.layers],
        "analysis": run.analysis.to_json(),
        "structure": None if run.structure is None else run.structure.to_json(),
        "diverged_step": run.diverged_step, "seconds": run.seconds,
    }
    return json_safe(data)


def _run_from(data: dict[str, Any], arrays: dict[str, np.ndarray]) -> RunResult:
    try:
        missing = {"predictions", "step_losses", "grad_norms", "frame.value"} - set(arrays)
        if missing:
            raise _Bad(f"its arrays lack {', '.join(sorted(missing))}")
        layers = tuple(LayerInfo(**{**la, "weight_shape": None if la["weight_shape"] is None
                                    else tuple(int(d) for d in la["weight_shape"])}) for la in data["layers"])
        history = tuple(EpochStats(int(e["epoch"]), _number(e["train_loss"]), _number(e["test_loss"]),
                                   _number(e["test_accuracy"]), _number(e["seconds"])) for e in data["history"])
        step = data["diverged_step"]
        return RunResult(
            name=str(data["name"]), spec=InitSpec.parse(str(data["initializer"])), seed=int(data["seed"]),
            history=history, test_accuracy=_number(data["test_accuracy"]), test_loss=_number(data["test_loss"]),
            predictions=arrays["predictions"].astype(np.int64), step_losses=arrays["step_losses"].astype(np.float64),
            frame=_frame_from(arrays), layers=layers,
            analysis=RunAnalysis.from_json(data.get("analysis", data)),
            diverged_step=None if step is None else int(step), seconds=_number(data["seconds"]),
            grad_norms=arrays["grad_norms"].astype(np.float64),
            structure=None if data["structure"] is None else Structure.from_json(data["structure"]),
        )
    except _Bad:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError, UsageError) as exc:
        raise _Bad(f"malformed run record ({type(exc).__name__}: {exc})") from None


class RunStore:
    """Finished runs of one experiment, kept under ``<out_dir>/.initdiag``."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / STATE_DIR
        self.runs_dir = self.root / "runs"

    def save_plan(self, config: ExperimentConfig, argv: Sequence[str],
                  fingerprints: Mapping[str, Any] | None = None) -> None:
        """Start a new experiment here: runs saved by an earlier one (other settings, perhaps) are removed
        first, so that only ``--resume`` ever reuses saved runs. ``fingerprints``: of the model references."""
        if self.runs_dir.is_dir():
            for path in [*self.runs_dir.glob("*.json"), *self.runs_dir.glob("*.npz"), *self.runs_dir.glob("*.pkl")]:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise OutputError(f"cannot remove the earlier run {path}: {exc.strerror or exc}") from None
        data = {**_header("plan"), "config": config.to_json(), "argv": list(argv),
                "fingerprints": dict(fingerprints or {})}
        atomic_write(self.root / "plan.json", json.dumps(json_safe(data), indent=1) + "\n")

    def load_plan(self) -> Plan:
        """The plan this directory was started with; UsageError (one line) when there is none or it is damaged."""
        config, argv, prints = self._load_started("plan.json", "plan", "report", ExperimentConfig.from_json)
        return Plan(config, argv, prints)

    def _load_started(self, file: str, kind: str, what: str,
                      parse: Any) -> tuple[Any, tuple[str, ...], dict[str, Any]]:
        """The configuration (read by ``parse``), command line and model fingerprints of ``file``; UsageError
        (one line) when there is none or it is damaged."""
        path = self.root / file
        if not path.is_file():
            raise UsageError(f"--resume: {self.root.parent} is not an initdiag {what} directory (no {path})")
        try:
            data = _read_json(path, kind)
            argv, prints = data.get("argv"), data.get("fingerprints", {})
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise _Bad("its command line is malformed")
            if not isinstance(prints, dict):
                raise _Bad("its model fingerprints are malformed")
            try:
                config = parse(data.get("config"))
            except (ValueError, TypeError, KeyError, UsageError) as exc:
                raise _Bad(f"its configuration is malformed ({exc})") from None
        except _Bad as exc:
            raise UsageError(f"--resume: cannot use {path}: {exc}") from None
        return config, tuple(argv), prints

    def save_sweep(self, config: SweepConfig, argv: Sequence[str],
                   fingerprints: Mapping[str, Any] | None = None) -> None:
        """Start a new sweep here (``.initdiag/sweep.json``; each cell keeps its runs in its own store)."""
        data = {**_header("sweep"), "config": config.to_json(), "argv": list(argv),
                "fingerprints": dict(fingerprints or {})}
        atomic_write(self.root / "sweep.json", json.dumps(json_safe(data), indent=1) + "\n")

    def load_sweep(self) -> tuple[SweepConfig, tuple[str, ...], dict[str, Any]]:
        """The sweep this directory was started with, its command line and model fingerprints; UsageError (one
        line) when there is none or it is damaged."""
        return self._load_started("sweep.json", "sweep", "sweep", SweepConfig.from_json)

    def has_runs(self) -> bool:
        """Whether a finished run is saved here (worth a ``--resume``)."""
        return self.runs_dir.is_dir() and any(self.runs_dir.glob("*.json"))

    def save_run(self, run: RunResult) -> None:
        """Save a finished run: its arrays first, then the record that names their checksum."""
        arrays = {"predictions": np.asarray(run.predictions, np.int64),
                  "step_losses": np.asarray(run.step_losses, np.float64),
                  "grad_norms": np.asarray(run.grad_norms, np.float64), **_frame_arrays(run.frame)}
        payload = _npz_bytes(arrays)
        base = self.runs_dir / file_name(run.name)
        atomic_write(base.with_suffix(".npz"), payload)
        record = _run_json(run, hashlib.sha256(payload).hexdigest())
        atomic_write(base.with_suffix(".json"), json.dumps(record, allow_nan=False) + "\n")

    def load_runs(self) -> dict[str, RunResult]:
        """Finished runs by name; UsageError (one line, naming the file) for a damaged or foreign one."""
        runs: dict[str, RunResult] = {}
        if not self.runs_dir.is_dir():
            return runs
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                data = _read_json(path, "run")
                if not isinstance(data.get("arrays"), str):
                    raise _Bad("it names no arrays")
                run = _run_from(data, _load_npz(path.with_suffix(".npz"), data["arrays"]))
            except _Bad as exc:
                raise UsageError(f"--resume: cannot use the saved run {path}: {exc}") from None
            runs[run.name] = run
        return runs
