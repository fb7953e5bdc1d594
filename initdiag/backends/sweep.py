"""A sweep: every model cell x initializer x seed, on local worker processes or Ray, each run saved as it ends.

Layout inside the sweep's directory::

    .initdiag/sweep.json          the SweepConfig and the command line that started it
    cells/<cell>/.initdiag/runs/  each cell's finished runs (the store of ``initdiag report``)

A run is saved by the driver the moment it comes back, under its cell, before anything else happens, so an
interrupted sweep resumes with ``--resume DIR`` and runs only what is missing, and a run Ray retried after its
worker died is still saved once (by its name). Every run is seeded by its own seed and runs with the same
torch thread count on either backend (``threads``, from the whole plan), so both give the same numbers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..config import ExperimentConfig
from ..data import MnistData
from ..errors import Interrupted
from ..experiment import assemble, environment, resolve_device
from ..initializers import InitSpec
from ..jsonable import run_name
from ..progress import NullProgress, Progress
from ..results import RunResult, SweepResult, cell_key
from ..store import RunStore
from ..sweep_config import SweepConfig
from ..vocab import Backend
from .local import available_cores, execute, plan

__all__ = ["SweepInterrupted", "cell_stores", "run_sweep", "sweep_threads"]


class SweepInterrupted(Interrupted):
    """Raised by :func:`run_sweep` on Ctrl-C/SIGTERM; ``result`` holds the finished runs (``missing`` names the
    others), for a partial report."""

    def __init__(self, result: SweepResult, exit_code: int) -> None:
        super().__init__(exit_code)
        self.result = result


def cell_stores(config: SweepConfig, out_dir: Path) -> list[RunStore]:
    """Each cell's store, in grid order."""
    return [RunStore(Path(out_dir) / "cells" / cell_key(cell.model)) for cell in config.cells()]


def sweep_threads(config: SweepConfig) -> int:
    """Torch threads per run, on either backend: the machine's cores split between ``--jobs`` runs (default:
    one per core, so 1 thread each), decided from the whole plan so a resumed sweep matches."""
    cores = available_cores()
    jobs = min(config.base.jobs or cores, config.runs)
    return max(1, cores // max(1, jobs))


def _name(key: str, run: str) -> str:
    return f"{key}/{run}"


def run_sweep(config: SweepConfig, data: MnistData, out_dir: Path, *, progress: Progress | None = None,
              argv: Sequence[str] | None = None, resume: bool = False) -> SweepResult:
    """Run the grid (runs already saved in ``out_dir`` are reused with ``resume``), save each run as it ends,
    and collect a :class:`SweepResult`. On an interrupt, raises :class:`SweepInterrupted` with the partial one."""
    progress = progress or NullProgress()
    device = resolve_device(config.base.device)
    cells = config.cells()
    stores = cell_stores(config, out_dir)
    finished: list[dict[str, RunResult]] = [s.load_runs() if resume else {} for s in stores]
    keys = [cell_key(c.model) for c in cells]
    todo = [(i, spec, seed) for i, cell in enumerate(cells) for spec, seed in plan(cell)
            if run_name(spec.label, seed) not in finished[i]]
    if resume and len(todo) < config.runs:
        progress.message(f"resuming: {config.runs - len(todo)} of {config.runs} runs already finished")
    threads = sweep_threads(config)
    started, start = datetime.now(UTC), time.perf_counter()
    earlier = sum(run.seconds for runs in finished for run in runs.values())
    address: list[str] = []

    def keep(index: int, run: RunResult) -> None:
        if run.name in finished[index]:  # a retried task that had already come back: counted once
            return
        stores[index].save_run(run)
        finished[index][run.name] = run

    def result() -> SweepResult:
        results, missing = [], []
        seconds = earlier + time.perf_counter() - start
        for i, cell in enumerate(cells):
            names = [run_name(spec.label, seed) for spec, seed in plan(cell)]
            absent = [n for n in names if n not in finished[i]]
            missing += [_name(keys[i], n) for n in absent]
            runs = [finished[i][n] for n in names if n in finished[i]]
            results.append(assemble(cell, data, runs, started, seconds, argv, device, absent))
        env = {**environment(device), "backend": config.backend, **({"ray": address[0]} if address else {})}
        return SweepResult(config=config, cells=tuple(results), backend=config.backend, started=started,
                           seconds=seconds, command=results[0].command, environment=env, missing=tuple(missing))

    try:
        if config.backend == Backend.RAY:
            from .ray import run_on_ray
            by_key = {keys[i]: i for i in range(len(cells))}
            tasks = [(_name(keys[i], run_name(spec.label, seed)), cells[i], spec, seed) for i, spec, seed in todo]
            address.append(run_on_ray(tasks, data, threads=threads, device=device, address=config.ray_address,
                                      on_done=lambda key, run: keep(by_key[key.split("/", 1)[0]], run),
                                      progress=progress))
        else:
            _local(cells, todo, data, threads, device, progress, keep)
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        raise SweepInterrupted(result(), code) from None
    return result()


def _local(cells: Sequence[ExperimentConfig], todo: Sequence[tuple[int, InitSpec, int]], data: MnistData,
           threads: int, device: torch.device, progress: Progress, keep: Callable[[int, RunResult], None]) -> None:
    """Cell by cell on local worker processes (``--jobs`` of them, ``threads`` torch threads each)."""
    for index, cell in enumerate(cells):
        tasks = [(spec, seed) for i, spec, seed in todo if i == index]
        if not tasks:
            continue
        jobs = max(1, available_cores() // threads)
        execute(cell, data, tasks, jobs=jobs, device=device, progress=progress,
                on_done=functools.partial(keep, index), threads=threads)
