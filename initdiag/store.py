"""Finished runs kept on disk as they end, so an interrupted experiment loses nothing and can resume.

Layout inside the report directory::

    .initdiag/plan.pkl            the ExperimentConfig and the command line that started it
    .initdiag/runs/<run>.pkl      one pickled RunResult per finished run, written atomically

Files are written to a temporary name in the same directory, flushed and fsynced, then renamed with
``os.replace``, so a crash or a full disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutputError, UsageError

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .experiment import RunResult

__all__ = ["Plan", "RunStore", "atomic_write"]

STATE_DIR = ".initdiag"
FORMAT_VERSION = 1


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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


@dataclass(frozen=True)
class Plan:
    """What an experiment directory was started with (for ``--resume``)."""

    version: int
    config: ExperimentConfig
    argv: tuple[str, ...]


class RunStore:
    """Finished runs of one experiment, kept under ``<out_dir>/.initdiag``."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / STATE_DIR
        self.runs_dir = self.root / "runs"

    def save_plan(self, config: ExperimentConfig, argv: Sequence[str]) -> None:
        """Start a new experiment here: runs saved by an earlier one (other settings, perhaps) are
        removed first, so that only ``--resume`` ever reuses saved runs."""
        if self.runs_dir.is_dir():
            for path in self.runs_dir.glob("*.pkl"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise OutputError(f"cannot remove the earlier run {path}: {exc.strerror or exc}") from None
        atomic_write(self.root / "plan.pkl", pickle.dumps(Plan(FORMAT_VERSION, config, tuple(argv))))

    def load_plan(self) -> Plan:
        path = self.root / "plan.pkl"
        if not path.is_file():
            raise UsageError(f"--resume: {path.parent.parent} is not an initdiag report directory (no {path})")
        try:
            plan = pickle.loads(path.read_bytes())
        except Exception as exc:
            raise UsageError(f"--resume: cannot read {path}: {type(exc).__name__}: {exc}") from None
        if not isinstance(plan, Plan) or plan.version != FORMAT_VERSION:
            raise UsageError(f"--resume: {path} was written by another version of initdiag")
        return plan

    def save_run(self, run: RunResult) -> None:
        atomic_write(self.runs_dir / f"{_safe(run.name)}.pkl", pickle.dumps(run, protocol=pickle.HIGHEST_PROTOCOL))

    def load_runs(self) -> dict[str, RunResult]:
        """Finished runs by name; unreadable files (e.g. from another version) are skipped."""
        runs: dict[str, RunResult] = {}
        if not self.runs_dir.is_dir():
            return runs
        for path in sorted(self.runs_dir.glob("*.pkl")):
            try:
                run = pickle.loads(path.read_bytes())
            except Exception:
                continue
            runs[run.name] = run
        return runs
