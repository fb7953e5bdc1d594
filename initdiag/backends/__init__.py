"""Where an experiment's runs execute: local worker processes (and, for sweeps, a Ray cluster)."""

from __future__ import annotations

from .local import ExperimentInterrupted, available_cores, default_jobs, execute, plan, run_experiment, threads_per_run

__all__ = ["ExperimentInterrupted", "available_cores", "default_jobs", "execute", "plan", "run_experiment",
           "threads_per_run"]
