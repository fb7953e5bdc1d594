"""The Ray backend: each run one Ray task on a local Ray instance or a running cluster.

Ray is an existing distributed engine: it schedules the tasks on the CPUs (and GPUs) of every machine that
joined the cluster, moves the data set through its object store once (``ray.put``; each task reads it from
the store of its node), and retries a task whose worker process dies (``max_retries``). The driver gets
the runs back as they finish (``ray.wait``) and hands each to ``on_done`` once, so the sweep's store
saves it at once and a resumed sweep skips it.

A task runs :func:`initdiag.experiment.run_one` exactly as a local worker does, with the same torch thread
count, so a sweep gives the same numbers on either backend. ``import initdiag`` does not import Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..config import ExperimentConfig
from ..data import MnistData
from ..errors import UsageError
from ..experiment import run_one
from ..initializers import InitSpec
from ..memory import keep_heap
from ..progress import NullProgress, Progress
from ..results import RunResult
from .local import available_cores

__all__ = ["GPU_PER_RUN", "MAX_RETRIES", "RayTask", "run_on_ray"]

RayTask = tuple[str, ExperimentConfig, InitSpec, int]
"""(key, the cell's config, initializer, seed)."""

MAX_RETRIES = 3
"""Times Ray re-runs a task whose worker process died (a machine lost, a process killed)."""
GPU_PER_RUN = 0.5
"""Fraction of a GPU each run requests with ``--device cuda`` (two small runs share a GPU)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs Ray: pip install 'initdiag[ray]'") from None
    return ray


def _task(config: ExperimentConfig, spec: InitSpec, seed: int, data: MnistData, threads: int,
          device: str) -> RunResult:
    """One run inside a Ray worker (``data`` arrives from the object store)."""
    torch.set_num_threads(threads)
    keep_heap()
    return run_one(config, spec, seed, data, NullProgress(), torch.device(device))


def run_on_ray(tasks: Sequence[RayTask], data: MnistData, *, threads: int, device: torch.device,
               address: str | None, on_done: Callable[[str, RunResult], None],
               progress: Progress | None = None) -> str:
    """Run ``tasks`` as Ray tasks; ``on_done(key, run)`` for each, in completion order. Returns the address of
    the Ray instance used. ``address`` None starts a local instance sized to this machine (and stops it
    afterwards); ``auto`` or ``host:port`` joins a running cluster."""
    ray = _ray()
    progress = progress or NullProgress()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address is None:
                ray.init(num_cpus=available_cores(), include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise UsageError(f"--ray-address {address}: cannot join a Ray cluster there ({exc})") from None
    info = ray.get_runtime_context().gcs_address
    pending: dict[Any, str] = {}
    try:
        if not tasks:
            return str(info)
        data_ref = ray.put(data)  # once; every task reads it from its node's object store
        gpus = GPU_PER_RUN if device.type == "cuda" else 0
        remote = ray.remote(_task).options(num_cpus=threads, num_gpus=gpus, max_retries=MAX_RETRIES)
        for key, config, spec, seed in tasks:
            pending[remote.remote(config, spec, seed, data_ref, threads, str(device))] = key
        progress.message(f"ray: {len(tasks)} tasks on {info} ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        start = time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                run = ray.get(ref)
                on_done(key, run)
                progress.message(f"[{key}] done on Ray: test accuracy {run.test_accuracy:.4f} "
                                 f"({time.perf_counter() - start:.0f} s, {len(pending)} left)")
        return str(info)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
