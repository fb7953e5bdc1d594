"""What a ``--resume`` may run: only code the command line names, or code whose fingerprint the plan recorded.

A results folder gets handed around (attached to a review, copied from a cluster), and its
``.initdiag/plan.json`` names the model (``file.py:Net`` or ``pkg.mod:factory``). Resuming from it must not
import whatever that name resolves to now. When a run starts, :func:`fingerprint` records for each model
reference the files its import executes first (the file itself, or each module of a dotted path) with their
SHA-256; :func:`check_resume` lets a resume import a reference only when the user names it again (``--model``),
or when every recorded file still has its recorded digest and none lies inside the results folder itself.
Locating a module for the check uses :class:`importlib.machinery.PathFinder`, which executes nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from .errors import UsageError
from .models import is_reference

__all__ = ["check_resume", "fingerprint", "fingerprints"]

Fingerprint = list[dict[str, str]]
"""``[{"path": absolute path, "sha256": hex digest}, ...]``: the files importing a reference executes first."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(ref: str) -> list[Path] | None:
    """The files importing ``ref`` executes first, found without executing any; None when not found."""
    module, _, _ = ref.rpartition(":")
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module)
        return [path.resolve()] if path.is_file() else None
    files: list[Path] = []
    search: Sequence[str] | None = None
    for part in module.split("."):
        spec: ModuleSpec | None = PathFinder.find_spec(part, search)
        if spec is None:
            spec = importlib.util.find_spec(part) if search is None else None  # built-in / frozen top level
            if spec is None:
                return None
        if spec.origin and Path(spec.origin).is_file():
            files.append(Path(spec.origin).resolve())
        search = list(spec.submodule_search_locations or [])
    return files


def fingerprint(ref: str) -> Fingerprint | None:
    """The fingerprint of a model reference as it resolves now (None if it does not)."""
    files = _files(ref)
    return None if files is None else [{"path": str(p), "sha256": _sha256(p)} for p in files]


def fingerprints(names: Iterable[str]) -> dict[str, Fingerprint]:
    """The fingerprint of each model reference among ``names`` (zoo names need none)."""
    out: dict[str, Fingerprint] = {}
    for name in names:
        if is_reference(name):
            found = fingerprint(name)
            if found is not None:
                out[name] = found
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_resume(names: Iterable[str], recorded: Mapping[str, object], given: Iterable[str],
                 results: Path) -> None:
    """UsageError (one line) unless each model reference among ``names`` (the plan's models) is named again in
    ``given`` (the command line's ``--model``) or matches its ``recorded`` fingerprint, with no file inside
    the ``results`` folder."""
    given = set(given)
    folder = results.resolve()
    for name in names:
        if not is_reference(name) or name in given:
            continue
        again = f"give --model {name} to run it (a resume runs no code the command line does not name)"
        expected = recorded.get(name)
        if not isinstance(expected, list) or not expected:
            raise UsageError(f"--resume: the plan names the model {name} and records no fingerprint of it; {again}")
        now = _files(name) or []
        for path in now:
            if _inside(path, folder):
                raise UsageError(f"--resume: the plan's model {name} resolves to {path}, inside the results folder "
                                 f"itself: refused; {again}")
        want = [(str(e.get("path")), str(e.get("sha256"))) for e in expected if isinstance(e, dict)]
        have = [(str(p), _sha256(p)) for p in now]
        if want != have:
            raise UsageError(f"--resume: the model {name} is not the code the run started with (its files or their "
                             f"SHA-256 differ from the plan's fingerprint); {again}")
