"""The ``report``, ``audit`` and ``sweep`` commands (:func:`initdiag.cli.main` parses, then calls one), the
settings they validate from the parsed options, and their output folders.

Each validates its settings before any work (impossible ones, like ``--device cuda`` without CUDA, fail at
once), loads its data before it creates the output folder, and removes a folder it created when it fails
before producing a result (:func:`removed_on_failure`). An interrupt keeps what finished and
prints the ``--resume`` command, whether it comes during training or while the report is written. A resume
runs no model code the command line does not name (:mod:`initdiag.trust`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .config import (
    AUDIT_INPUTS,
    KEEP,
    AuditConfig,
    ExperimentConfig,
    parse_audit_inits,
    parse_fail_on,
    parse_formats,
    parse_input_shape,
)
from .errors import Interrupted, OutputError, UsageError
from .initializers import parse_init_list
from .jsonable import file_name
from .models import ModelSpec
from .options import build_parser
from .sweep_config import SweepConfig, sweep_models
from .vocab import Status

__all__ = ["EXIT_CHECK_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "RESUME_KEEPS",
           "audit_config_from_args", "check_out_dir", "cmd_audit", "cmd_report", "cmd_sweep", "config_from_args",
           "default_out_dir", "prepare_out_dir", "print_table", "removed_on_failure", "wrote"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def config_from_args(args: argparse.Namespace, model: ModelSpec | None = None) -> ExperimentConfig:
    """Validate the ``report`` arguments (``sweep``'s, with ``model`` one of its cells) into an ExperimentConfig
    (UsageError on bad input)."""
    if model is None:
        model = ModelSpec(args.model, depth=args.depth, width=args.width, activation=args.activation)
    return ExperimentConfig(
        model=model, initializers=parse_init_list(args.init), seed=args.seed, seeds=args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        limit_train=args.limit_train,
        record_every=args.record_every, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
        formats=parse_formats(args.format), device=args.device, fail_on=parse_fail_on(args.fail_on), jobs=args.jobs,
        paper=args.paper,
    )


def audit_config_from_args(args: argparse.Namespace) -> AuditConfig:
    """Validate the ``audit`` arguments into an AuditConfig (UsageError on bad input)."""
    shapes = [parse_input_shape(text) for text in args.input_shape or ()]
    dtypes = list(args.input_dtype or ["float"])
    saved = str(args.inputs).endswith((".pt", ".pth")) or Path(args.inputs).is_file()
    kind, file = ("file", Path(args.inputs)) if saved and args.inputs not in AUDIT_INPUTS else (args.inputs, None)
    if not shapes and kind == "normal":
        raise UsageError("--input-shape is required (one sample's shape, e.g. 3,224,224) unless --inputs mnist or "
                         "--inputs FILE.pt")
    if len(dtypes) not in (1, max(len(shapes), 1)):
        raise UsageError(f"give --input-dtype once for all inputs or once per --input-shape ({len(shapes)}), "
                         f"not {len(dtypes)} times")
    dtypes = dtypes * len(shapes) if len(dtypes) == 1 and shapes else dtypes
    kwargs = {}
    if args.kwargs is not None:
        try:
            kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--kwargs is not valid JSON ({exc.msg} at column {exc.colno}): {args.kwargs}") from None
        if not isinstance(kwargs, dict):
            raise UsageError(f"--kwargs must be a JSON object such as '{{\"num_classes\": 10}}', not {args.kwargs}")
    return AuditConfig(
        target=args.target, input_shape=shapes[0] if shapes else None,
        inits=parse_audit_inits(getattr(args, "init", KEEP)),
        extra_inputs=tuple(zip(shapes[1:], dtypes[1:], strict=True)), inputs_file=file, batches=args.batches,
        batch_size=args.batch_size, inputs=kind, input_dtype=dtypes[0], vocab=args.vocab,
        loss=args.loss, dtype=args.dtype, seed=args.seed, device=args.device, model_kwargs=kwargs,
        data_dir=args.data_dir,
        out=args.out, formats=parse_formats(args.format), paper=args.paper, fail_on=parse_fail_on(args.fail_on),
    )


def default_out_dir(model: str) -> Path:
    """``reports/<model>-<time>``: where a command writes when ``--out`` is not given."""
    return Path("reports") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_out_dir(out: Path) -> None:
    """OutputError now, before any work and creating nothing, when ``out`` could not be created or written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a directory")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write to output directory {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to output directory {out}: {existing} is not writable")


def prepare_out_dir(out: Path | None, model: str) -> Path:
    """Create (if needed) and check the output directory."""
    if out is None:
        out = default_out_dir(model)
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".initdiag-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
    return out


@contextmanager
def removed_on_failure(out: Path, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Run a command that writes into ``out``: if it fails with an error (not an interrupt, whose partial results
    are kept for ``--resume``) and ``out`` did not exist before, remove ``out`` again unless ``keep()`` (finished
    runs worth resuming): a failed command leaves no folder behind."""
    existed = out.exists()
    try:
        yield
    except Exception:
        if not existed and out.is_dir() and not keep():
            shutil.rmtree(out, ignore_errors=True)
        raise


RESUME_KEEPS = ("resume", "jobs", "debug", "command", "model")
"""Options that may accompany --resume (``--model`` only to name the plan's model again); every other setting
comes from the interrupted run."""


def print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows as aligned columns, the first a heading underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths).rstrip() + "\n")


def _only_resume(args: argparse.Namespace, command: str) -> list[str]:
    """--resume takes every setting from the directory: any other option given is a UsageError. Returns the
    models ``--model`` names again (to be checked against the plan's)."""
    defaults = vars(build_parser().parse_args([command]))
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in RESUME_KEEPS and v != defaults.get(k)]
    if changed:
        raise UsageError(f"--resume takes its settings from {args.resume}; drop {', '.join(changed)}")
    if args.model == defaults["model"]:
        return []
    return [m.strip() for m in str(args.model).split(",") if m.strip()]


def _trusted(plan_models: Sequence[str], named: list[str], recorded: dict[str, object], results: Path) -> None:
    """UsageError unless ``named`` (``--model`` given again) is the plan's, or the plan's model references
    still match their recorded fingerprints (:func:`initdiag.trust.check_resume`)."""
    from .trust import check_resume

    if named and set(named) != set(plan_models):
        raise UsageError(f"--resume: --model {','.join(named)} is not the plan's model ({','.join(plan_models)})")
    check_resume(plan_models, recorded, named, results)


def _resume_config(args: argparse.Namespace) -> tuple[ExperimentConfig, list[str]]:
    from .store import RunStore

    named = _only_resume(args, "report")
    plan = RunStore(args.resume).load_plan()
    _trusted([plan.config.model.name], named, dict(plan.fingerprints), args.resume)
    config = dataclasses.replace(plan.config, out=args.resume, jobs=args.jobs or plan.config.jobs)
    return config, list(plan.argv)


def wrote(paths: dict[str, Path], out_dir: Path, out: TextIO) -> None:
    out.write(f"\nReport written to {out_dir}/ ({', '.join(p.name for p in paths.values())})\n")
    if "html" in paths:
        out.write(f"Open {paths['html']}\n")


def _gate(failed: set[str], err: TextIO) -> int:
    """Exit code 3 and one line when a ``--fail-on`` check failed, else 0."""
    if failed:
        err.write(f"initdiag: --fail-on: failed checks: {', '.join(sorted(failed))}\n")
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _late_interrupt(exc: KeyboardInterrupt, command: str, out_dir: Path, err: TextIO, finished: bool) -> int:
    """Ctrl-C or SIGTERM outside training (while the checks run or the report is written): the finished runs
    are saved in the store; say how to go on from them."""
    what = ("every run finished and is kept" if finished else "the runs finished so far are kept")
    err.write(f"\ninitdiag: interrupted: {what} in {out_dir}/\n"
              f"initdiag: continue with: initdiag {command} --resume {out_dir}\n")
    return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED


def cmd_report(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``initdiag report``."""
    if args.resume is not None:
        config, argv = _resume_config(args)
        out_dir = args.resume
    else:
        config = config_from_args(args)
        out_dir = config.out if config.out is not None else default_out_dir(config.model.name)
    check_out_dir(out_dir)
    from .experiment import resolve_device

    resolve_device(config.device)  # --device cuda without CUDA fails now, before the data loads
    from .backends import ExperimentInterrupted, run_experiment
    from .data import load_mnist
    from .progress import Progress
    from .report import write_report
    from .store import RunStore
    from .trust import fingerprints

    data = load_mnist(config.data_dir, config.dataset, config.limit_train)
    if data.provenance.notice:
        err.write(f"initdiag: notice: {data.provenance.notice}\n")
    err.write(f"initdiag: data: {data.provenance.name} from {data.provenance.source} "
              f"({data.provenance.train_size} train / {data.provenance.test_size} test images)\n")
    store = RunStore(out_dir)
    with removed_on_failure(out_dir, keep=store.has_runs):
        prepare_out_dir(out_dir, config.model.name)
        if args.resume is None:
            store.save_plan(config, argv, fingerprints([config.model.name]))
        try:
            result = run_experiment(config, data, Progress(err), argv=argv, store=store)
        except ExperimentInterrupted as exc:
            partial = exc.result
            paths = write_report(partial, out_dir, config.formats, config.paper) if partial.runs else {}
            err.write(f"\ninitdiag: interrupted: {len(partial.runs)} finished run(s) kept, missing: "
                      f"{', '.join(partial.missing)}\n")
            if paths:
                err.write(f"initdiag: partial report written to {out_dir}/ (it says what is missing)\n")
            err.write(f"initdiag: continue with: initdiag report --resume {out_dir}\n")
            return exc.exit_code
        except KeyboardInterrupt as exc:  # between runs' training: while a run's checks ran
            return _late_interrupt(exc, "report", out_dir, err, finished=False)
        try:
            paths = write_report(result, out_dir, config.formats, config.paper)
        except KeyboardInterrupt as exc:
            return _late_interrupt(exc, "report", out_dir, err, finished=True)
    if args.tensorboard is not None:
        from .integrations.tensorboard import write_tensorboard
        for run in result.runs:
            write_tensorboard(run.frame, args.tensorboard / file_name(run.name), run.verdicts)
    out.write("\n")
    rows = [("initializer", "seed", "test accuracy", "test loss", "status", "verdicts")]
    rows += [(run.label, str(run.seed), f"{run.test_accuracy:.4f}", f"{run.test_loss:.4f}", run.status,
              ", ".join(sorted({v.outcome for v in run.verdicts if v.status == Status.FAIL})) or "-")
             for run in result.runs]
    print_table(rows, out)
    wrote(paths, out_dir, out)
    if args.tensorboard is not None:
        out.write(f"TensorBoard: tensorboard --logdir {args.tensorboard}\n")
    return _gate(result.failed(config.fail_on), err)


def cmd_audit(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``initdiag audit``: the folder is created only once the audit has a result to write."""
    config = audit_config_from_args(args)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.target.rpartition(":")[2]) or "model"
    out_dir = config.out if config.out is not None else default_out_dir(f"audit-{name}")
    check_out_dir(out_dir)
    from .audit import run_audit
    from .audit.run import seed_global_rngs
    from .audit.weights import forward_gain
    from .experiment import resolve_device
    from .models import load_model_ref

    resolve_device(config.device)
    seed_global_rngs(config.seed)  # the model's own weights are drawn as it is built: --seed covers them
    model = load_model_ref(config.target, config.model_kwargs)
    result = run_audit(model, config, command=shlex.join(["initdiag", *argv]))
    if result.inputs.notice:
        err.write(f"initdiag: notice: {result.inputs.notice}\n")
    with removed_on_failure(out_dir):
        prepare_out_dir(out_dir, f"audit-{name}")
        paths = result.write(out_dir, config.formats, config.paper)
    out.write(f"Audited {config.target} with {result.inputs.description}.\n\n")
    rows = [("initialization", "forward gain", "fails", "warns", "")]
    advice = result.recommendation
    for run in result.runs:
        gain = forward_gain(run.verdicts)
        fails = list(dict.fromkeys(f"{v.outcome} ({v.signal})" if v.signal in ("forward", "backward") else v.outcome
                                   for v in run.verdicts if v.status == Status.FAIL))
        rows.append((run.label, f"{gain:.3g}" if gain == gain else "-", ", ".join(fails) or "-",
                     str(sum(v.status == Status.WARN for v in run.verdicts)),
                     "<- equal" if run.label in advice.equal else
                     "<- recommended" if run.label == advice.initializer else ""))
    print_table(rows, out)
    kept = [f"  {run.label}: {run.kept_text()}\n" for run in result.runs if run.kept]
    if kept:
        out.write("\nNot re-initialized (kept as they were):\n" + "".join(kept))
    out.write(f"\nRecommendation: {advice.evidence}\n")
    wrote(paths, out_dir, out)
    return _gate(result.failed(config.fail_on), err)


def _sweep_config(args: argparse.Namespace) -> SweepConfig:
    models = sweep_models(args.model, args.depth, args.width, args.activation)
    return SweepConfig(config_from_args(args, models[0]), models, args.backend, args.ray_address)


def _sweep_resume(args: argparse.Namespace) -> tuple[SweepConfig, list[str]]:
    from .store import RunStore

    named = _only_resume(args, "sweep")
    config, saved_argv, prints = RunStore(args.resume).load_sweep()
    _trusted(list(dict.fromkeys(m.name for m in config.models)), named, prints, args.resume)
    return config, list(saved_argv)


def cmd_sweep(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``initdiag sweep``."""
    if args.resume is not None:
        config, argv = _sweep_resume(args)
        out_dir = args.resume
    else:
        config = _sweep_config(args)
        out_dir = config.base.out if config.base.out is not None else default_out_dir("sweep")
    check_out_dir(out_dir)
    from .backends.sweep import SweepInterrupted, run_sweep
    from .data import load_mnist
    from .experiment import resolve_device
    from .progress import Progress
    from .report.sweep import write_sweep_report
    from .results import cell_key
    from .store import RunStore
    from .trust import fingerprints

    base = config.base
    resolve_device(base.device)
    data = load_mnist(base.data_dir, base.dataset, base.limit_train)
    if data.provenance.notice:
        err.write(f"initdiag: notice: {data.provenance.notice}\n")
    with removed_on_failure(out_dir, keep=lambda: any(out_dir.glob("**/.initdiag/runs/*.json"))):
        prepare_out_dir(out_dir, "sweep")
        if args.resume is None:
            RunStore(out_dir).save_sweep(config, argv, fingerprints(m.name for m in config.models))
        err.write(f"initdiag: sweep: {len(config.models)} cells x {len(base.initializers)} initializers x "
                  f"{base.seeds} seeds = {config.runs} runs on {config.backend}\n")
        try:
            result = run_sweep(config, data, out_dir, progress=Progress(err), argv=argv,
                               resume=args.resume is not None)
        except SweepInterrupted as exc:
            if any(cell.runs for cell in exc.result.cells):
                write_sweep_report(exc.result, out_dir, base.formats, base.paper)
            err.write(f"\ninitdiag: interrupted: {len(exc.result.missing)} run(s) missing\n"
                      f"initdiag: continue with: initdiag sweep --resume {out_dir}\n")
            return exc.exit_code
        except KeyboardInterrupt as exc:
            return _late_interrupt(exc, "sweep", out_dir, err, finished=False)
        try:
            paths = write_sweep_report(result, out_dir, base.formats, base.paper)
        except KeyboardInterrupt as exc:
            return _late_interrupt(exc, "sweep", out_dir, err, finished=True)
    rows = [("cell", "initializer", "seeds", "mean accuracy", "failed checks")]
    for cell in result.cells:
        for label, summary in cell.accuracy.items():
            runs = [r for r in cell.runs if r.label == label]
            rows.append((cell_key(cell.config.model), label, str(len(runs)), f"{summary['mean']:.4f}",
                         ", ".join(sorted({c for r in runs for c in r.failed})) or "-"))
    out.write("\n")
    print_table(rows, out)
    wrote(paths, out_dir, out)
    return _gate(result.failed(base.fail_on), err)
