"""The local backend: an experiment's runs in turn, or in parallel worker processes; each saved as it ends.

Every run is seeded by its own seed only (initial weights, batch order), so a run gives the same
result whether it runs alone, in turn with others, or in a worker process, as long as it runs with
the same number of threads (a different thread count changes the floating-point results in the last
bits). With ``jobs > 1`` the cores are split between the workers (two one-thread processes train two
models faster than one two-thread process). The jobs and threads are decided from
the whole plan, not from the runs left to do, so ``--resume`` runs each remaining run with the thread
count it would have had without the interruption, and gets the same numbers.

Processes that train keep freed memory in their heap for reuse (:func:`initdiag.memory.keep_heap`):
otherwise every training step faults its activation buffers back in.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from ..config import ExperimentConfig
from ..data import MnistData
from ..errors import Interrupted
from ..experiment import assemble, resolve_device, run_one
from ..initializers import InitSpec
from ..jsonable import run_name
from ..memory import keep_heap, shared_with_forks
from ..progress import MultiProgress, NullProgress, Progress, QueueProgress
from ..results import ExperimentResult, RunResult
from ..store import RunStore

__all__ = ["ExperimentInterrupted", "Task", "available_cores", "default_jobs", "execute", "plan", "run_experiment",
           "threads_per_run"]

Task = tuple[InitSpec, int]

# Set in the parent before forking (workers inherit it without pickling), or by the spawn initializer.
_WORKER: dict[str, Any] = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def plan(config: ExperimentConfig) -> list[Task]:
    """Every initializer x seed, in the order of the report."""
    return [(spec, seed) for spec in config.initializers for seed in config.run_seeds]


def default_jobs(n_runs: int, device: torch.device) -> int:
    """One job per core (at most one per run) on the CPU; one on a GPU."""
    if device.type != "cpu":
        return 1
    return max(1, min(n_runs, available_cores()))


def threads_per_run(jobs: int) -> int | None:
    """Torch threads of each run with ``jobs`` workers: the cores split between them; None (torch's own
    default) with one job."""
    return None if jobs <= 1 else max(1, available_cores() // jobs)


def execute(config: ExperimentConfig, data: MnistData, tasks: Sequence[Task], *, jobs: int,
            device: torch.device, progress: Progress | None = None,
            on_done: Callable[[RunResult], None] | None = None, threads: int | None = None) -> list[RunResult]:
    """Run ``tasks``; call ``on_done`` with each finished run (in completion order); return them in
    task order. An interrupt propagates after the workers are stopped; finished runs were already
    handed to ``on_done``.

    ``threads``: torch threads per run (default :func:`threads_per_run` of ``min(jobs, len(tasks))``);
    a run done in this process (one job, or one task) uses them too, restored afterwards.
    """
    progress = progress or NullProgress()
    on_done = on_done or (lambda run: None)
    keep_heap()  # also for forked workers, which inherit it
    if threads is None:
        threads = threads_per_run(min(jobs, len(tasks)))
    if jobs <= 1 or len(tasks) <= 1:
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            results = []
            for spec, seed in tasks:
                run = run_one(config, spec, seed, data, progress, device)
                on_done(run)
                results.append(run)
            return results
        finally:
            torch.set_num_threads(before)
    return _parallel(config, data, tasks, jobs, device, progress, on_done,
                     threads or max(1, available_cores() // min(jobs, len(tasks))))


def _parallel(config: ExperimentConfig, data: MnistData, tasks: Sequence[Task], jobs: int, device: torch.device,
              progress: Progress, on_done: Callable[[RunResult], None], threads: int) -> list[RunResult]:
    jobs = min(jobs, len(tasks))
    use_fork = device.type == "cpu" and "fork" in mp.get_all_start_methods()
    if use_fork:  # the optimizer imports torch._dynamo (~870 modules, 2-3 s) on first use: once, inherited
        import torch._dynamo
    ctx: Any = mp.get_context("fork") if use_fork else torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    multi = MultiProgress(progress)
    listener = threading.Thread(target=_listen, args=(queue, multi), daemon=True)
    listener.start()
    _WORKER.update(data=data)
    done: dict[str, RunResult] = {}
    # forked workers (one per run) share the parent's pages: their collections leave its objects alone
    with shared_with_forks() if use_fork else contextlib.nullcontext():
        pool = ctx.Pool(jobs, initializer=_init_worker,
                        initargs=(threads, queue, None if use_fork else data), maxtasksperchild=1)
        try:
            args = [(config, spec, seed, str(device)) for spec, seed in tasks]
            for run in pool.imap_unordered(_work, args):
                on_done(run)
                done[run.name] = run
            pool.close()
            pool.join()
        finally:
            pool.terminate()
            queue.put(None)
            listener.join(timeout=5)
            _WORKER.clear()
    return [done[run_name(spec.label, seed)] for spec, seed in tasks]


def _listen(queue: Any, multi: MultiProgress) -> None:
    while True:
        try:
            event = queue.get()
        except (EOFError, OSError):
            return
        if event is None:
            return
        multi.handle(event)


def _init_worker(threads: int, queue: Any, data: MnistData | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(threads)
    keep_heap()  # spawned workers start with the default heap settings
    _WORKER["queue"] = queue
    if data is not None:
        _WORKER["data"] = data


def _work(args: tuple[ExperimentConfig, InitSpec, int, str]) -> RunResult:
    config, spec, seed, device = args
    return run_one(config, spec, seed, _WORKER["data"], QueueProgress(_WORKER["queue"]), torch.device(device))


class ExperimentInterrupted(Interrupted):
    """Raised by :func:`run_experiment` on Ctrl-C/SIGTERM; ``result`` holds the finished runs and names
    the missing ones (``result.missing``), for a partial report."""

    def __init__(self, result: ExperimentResult, exit_code: int) -> None:
        super().__init__(exit_code)
        self.result = result


def run_experiment(config: ExperimentConfig, data: MnistData, progress: Progress | None = None,
                   argv: Sequence[str] | None = None, store: RunStore | None = None) -> ExperimentResult:
    """Run every initializer x seed (in parallel with ``config.jobs`` workers) and compare accuracies.

    With a ``store``, runs already saved there are reused (``--resume``) and each new run is saved
    as it ends. On an interrupt, raises :class:`ExperimentInterrupted` carrying the partial result.
    """
    device = resolve_device(config.device)
    tasks = plan(config)
    finished: dict[str, RunResult] = store.load_runs() if store is not None else {}
    todo = [(spec, seed) for spec, seed in tasks if run_name(spec.label, seed) not in finished]
    earlier = sum(run.seconds for run in finished.values())
    if finished and progress is not None:
        progress.message(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} runs already finished")
    jobs = min(config.jobs or default_jobs(len(tasks), device), len(tasks))  # from the whole plan (resume)
    threads = threads_per_run(jobs)
    started = datetime.now(UTC)
    start = time.perf_counter()

    def keep(run: RunResult) -> None:
        finished[run.name] = run
        if store is not None:
            store.save_run(run)

    def result(missing: Sequence[str] = ()) -> ExperimentResult:
        runs = [finished[n] for n in (run_name(s.label, seed) for s, seed in tasks) if n in finished]
        return assemble(config, data, runs, started, earlier + time.perf_counter() - start, argv, device, missing)

    try:
        execute(config, data, todo, jobs=jobs, device=device, progress=progress, on_done=keep, threads=threads)
    except KeyboardInterrupt as exc:
        missing = [n for n in (run_name(s.label, seed) for s, seed in tasks) if n not in finished]
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        raise ExperimentInterrupted(result(missing), code) from None
    return result()
