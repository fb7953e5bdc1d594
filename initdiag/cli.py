"""Command line: ``initdiag report``, ``audit``, ``sweep``, ``list``. ``main(argv) -> exit code``.

Every option is declared once (:mod:`initdiag.options`); each command lists the options it takes (with its own
default where the commands differ, e.g. ``--init``). Exit codes: 0 success; 2 bad usage or input (one line,
no traceback; ``--debug`` shows it); 3 a ``--fail-on`` check failed (the report is written first);
130/143 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .config import (
    AuditConfig,
    ExperimentConfig,
    SweepConfig,
    parse_audit_inits,
    parse_fail_on,
    parse_formats,
    parse_input_shape,
    sweep_models,
)
from .errors import InitDiagError, Interrupted, OutputError, UsageError
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS, parse_init_list
from .jsonable import file_name
from .models import MODELS, ModelSpec
from .options import OPTIONS, build_parser
from .vocab import Status

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "OPTIONS", "build_parser", "main"]

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
    shape = parse_input_shape(args.input_shape) if args.input_shape is not None else None
    if shape is None and args.inputs != "mnist":
        raise UsageError("--input-shape is required (one sample's shape, e.g. 3,224,224) unless --inputs mnist")
    kwargs = {}
    if args.kwargs is not None:
        try:
            kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--kwargs is not valid JSON ({exc.msg} at column {exc.colno}): {args.kwargs}") from None
        if not isinstance(kwargs, dict):
            raise UsageError(f"--kwargs must be a JSON object such as '{{\"num_classes\": 10}}', not {args.kwargs}")
    return AuditConfig(
        target=args.target, input_shape=shape, inits=parse_audit_inits(args.init), batches=args.batches,
        batch_size=args.batch_size, inputs=args.inputs, input_dtype=args.input_dtype, vocab=args.vocab,
        loss=args.loss, seed=args.seed, device=args.device, model_kwargs=kwargs, data_dir=args.data_dir,
        out=args.out, formats=parse_formats(args.format), paper=args.paper, fail_on=parse_fail_on(args.fail_on),
    )


def prepare_out_dir(out: Path | None, model: str) -> Path:
    """Create (if needed) and check the output directory before any long work starts."""
    if out is None:
        out = Path("reports") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".initdiag-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
    return out


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows as aligned columns, the first a heading underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths).rstrip() + "\n")


def _cmd_list(out: TextIO) -> int:
    out.write("Models:\n")
    for name, text in MODELS.items():
        out.write(f"  {name:<16} {text}\n")
    out.write("\nInitializers (biases zero unless stated):\n")
    for name, init in INITIALIZERS.items():
        params = ", ".join(f"{k}={v:g}" for k, v in init.defaults.items())
        out.write(f"  {name:<16} {init.summary}\n  {'':<16} {init.formula}"
                  + (f"   [parameters: {params}]" if params else "") + "\n")
    out.write(f"\nDefault set: {','.join(DEFAULT_INITIALIZERS)}\n")
    from .checks import CHECKS

    out.write("\nChecks (--fail-on takes a check's name or one of its outcomes):\n")
    for check in CHECKS:
        outcomes = [o for o in check.outcomes if o != "healthy"]
        out.write(f"  {check.name:<16} {check.title}" + (f"   [outcomes: {', '.join(outcomes)}]" if outcomes else "")
                  + "\n")
    return EXIT_OK


RESUME_KEEPS = ("resume", "jobs", "debug", "command")
"""Options that may accompany --resume; every other setting comes from the interrupted run."""


def _resume_config(args: argparse.Namespace) -> tuple[ExperimentConfig, list[str]]:
    from .store import RunStore

    _only_resume(args, "report")
    plan = RunStore(args.resume).load_plan()
    config = dataclasses.replace(plan.config, out=args.resume, jobs=args.jobs or plan.config.jobs)
    return config, list(plan.argv)


def _only_resume(args: argparse.Namespace, command: str) -> None:
    """--resume takes every setting from the directory: any other option given is a UsageError."""
    defaults = vars(build_parser().parse_args([command]))
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in RESUME_KEEPS and v != defaults.get(k)]
    if changed:
        raise UsageError(f"--resume takes its settings from {args.resume}; drop {', '.join(changed)}")


def _wrote(paths: dict[str, Path], out_dir: Path, out: TextIO) -> None:
    out.write(f"\nReport written to {out_dir}/ ({', '.join(p.name for p in paths.values())})\n")
    if "html" in paths:
        out.write(f"Open {paths['html']}\n")


def _gate(failed: set[str], err: TextIO) -> int:
    """Exit code 3 and one line when a ``--fail-on`` check failed, else 0."""
    if failed:
        err.write(f"initdiag: --fail-on: failed checks: {', '.join(sorted(failed))}\n")
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .backends import ExperimentInterrupted, run_experiment
    from .data import load_mnist
    from .progress import Progress
    from .report import write_report
    from .store import RunStore

    if args.resume is not None:
        config, argv = _resume_config(args)
        out_dir = prepare_out_dir(args.resume, config.model.name)
    else:
        config = config_from_args(args)
        out_dir = prepare_out_dir(config.out, config.model.name)
    store = RunStore(out_dir)
    if args.resume is None:
        store.save_plan(config, argv)
    data = load_mnist(config.data_dir, config.dataset, config.limit_train)
    if data.provenance.notice:
        err.write(f"initdiag: notice: {data.provenance.notice}\n")
    err.write(f"initdiag: data: {data.provenance.name} from {data.provenance.source} "
              f"({data.provenance.train_size} train / {data.provenance.test_size} test images)\n")
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
    paths = write_report(result, out_dir, config.formats, config.paper)
    if args.tensorboard is not None:
        from .integrations.tensorboard import write_tensorboard
        for run in result.runs:
            write_tensorboard(run.frame, args.tensorboard / file_name(run.name), run.verdicts)
    out.write("\n")
    rows = [("initializer", "seed", "test accuracy", "test loss", "status", "verdicts")]
    rows += [(run.label, str(run.seed), f"{run.test_accuracy:.4f}", f"{run.test_loss:.4f}", run.status,
              ", ".join(sorted({v.outcome for v in run.verdicts if v.status == Status.FAIL})) or "-")
             for run in result.runs]
    _table(rows, out)
    _wrote(paths, out_dir, out)
    if args.tensorboard is not None:
        out.write(f"TensorBoard: tensorboard --logdir {args.tensorboard}\n")
    return _gate(result.failed(config.fail_on), err)


def _cmd_audit(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .audit import run_audit
    from .audit.run import seed_global_rngs
    from .audit.weights import forward_gain
    from .models import load_model_ref

    config = audit_config_from_args(args)
    seed_global_rngs(config.seed)  # the model's own weights are drawn as it is built: --seed covers them
    model = load_model_ref(config.target, config.model_kwargs)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.target.rpartition(":")[2]) or "model"
    out_dir = prepare_out_dir(config.out, f"audit-{name}")
    result = run_audit(model, config, command=shlex.join(["initdiag", *argv]))
    if result.inputs.notice:
        err.write(f"initdiag: notice: {result.inputs.notice}\n")
    paths = result.write(out_dir, config.formats, config.paper)
    out.write(f"Audited {config.target} with {result.inputs.description}.\n\n")
    rows = [("initialization", "forward gain", "fails", "warns", "")]
    for run in result.runs:
        gain = forward_gain(run.verdicts)
        fails = list(dict.fromkeys(f"{v.outcome} ({v.signal})" if v.signal in ("forward", "backward") else v.outcome
                                   for v in run.verdicts if v.status == Status.FAIL))
        rows.append((run.label, f"{gain:.3g}" if gain == gain else "-", ", ".join(fails) or "-",
                     str(sum(v.status == Status.WARN for v in run.verdicts)),
                     "<- recommended" if run.label == result.recommendation.initializer else ""))
    _table(rows, out)
    out.write(f"\nRecommendation: {result.recommendation.evidence}\n")
    _wrote(paths, out_dir, out)
    return _gate(result.failed(config.fail_on), err)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(EXIT_TERMINATED)


def _sweep_config(args: argparse.Namespace) -> SweepConfig:
    models = sweep_models(args.model, args.depth, args.width, args.activation)
    return SweepConfig(config_from_args(args, models[0]), models, args.backend, args.ray_address)


def _cmd_sweep(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .backends.sweep import SweepInterrupted, run_sweep
    from .data import load_mnist
    from .progress import Progress
    from .report.sweep import write_sweep_report
    from .results import cell_key
    from .store import RunStore

    if args.resume is not None:
        _only_resume(args, "sweep")
        config, saved_argv = RunStore(args.resume).load_sweep()
        argv, out_dir = list(saved_argv), prepare_out_dir(args.resume, "sweep")
    else:
        config = _sweep_config(args)
        out_dir = prepare_out_dir(config.base.out, "sweep")
        RunStore(out_dir).save_sweep(config, argv)
    base = config.base
    data = load_mnist(base.data_dir, base.dataset, base.limit_train)
    if data.provenance.notice:
        err.write(f"initdiag: notice: {data.provenance.notice}\n")
    err.write(f"initdiag: sweep: {len(config.models)} cells x {len(base.initializers)} initializers x {base.seeds} "
              f"seeds = {config.runs} runs on {config.backend}\n")
    try:
        result = run_sweep(config, data, out_dir, progress=Progress(err), argv=argv, resume=args.resume is not None)
    except SweepInterrupted as exc:
        if any(cell.runs for cell in exc.result.cells):
            write_sweep_report(exc.result, out_dir, base.formats, base.paper)
        err.write(f"\ninitdiag: interrupted: {len(exc.result.missing)} run(s) missing\n"
                  f"initdiag: continue with: initdiag sweep --resume {out_dir}\n")
        return exc.exit_code
    paths = write_sweep_report(result, out_dir, base.formats, base.paper)
    rows = [("cell", "initializer", "seeds", "mean accuracy", "failed checks")]
    for cell in result.cells:
        for label, summary in cell.accuracy.items():
            runs = [r for r in cell.runs if r.label == label]
            rows.append((cell_key(cell.config.model), label, str(len(runs)), f"{summary['mean']:.4f}",
                         ", ".join(sorted({c for r in runs for c in r.failed})) or "-"))
    out.write("\n")
    _table(rows, out)
    _wrote(paths, out_dir, out)
    return _gate(result.failed(base.fail_on), err)


_RUNNERS: dict[str, Callable[[argparse.Namespace, Sequence[str], TextIO, TextIO], int]] = {
    "report": _cmd_report, "audit": _cmd_audit, "sweep": _cmd_sweep,
}


def _asked_for_version(argv: Sequence[str]) -> bool:
    """Whether argparse's ``--version`` (options.py) answered ``argv``: the first top-level option that
    stops the parse is ``--version`` or an abbreviation of it, not ``--help``."""
    for word in argv:
        if not word.startswith("--") or len(word) < 3:
            return False
        if "--version".startswith(word) or "--help".startswith(word):
            return "--version".startswith(word)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out, err = sys.stdout, sys.stderr
    debug = "--debug" in argv
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(out)
            return EXIT_USAGE
        if args.command == "list":
            return _cmd_list(out)
        return _RUNNERS[args.command](args, argv, out, err)
    except InitDiagError as exc:
        if debug:
            traceback.print_exc(file=err)
        err.write(f"initdiag: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        err.write("\ninitdiag: interrupted\n")
        return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
    except SystemExit as exc:  # --help / --version: argparse printed them and exits
        if exc.code in (0, None) and _asked_for_version(argv):
            from .recording.moments import kernel_status  # only here: --version stays fast

            out.write(f"{kernel_status()}\n")
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
