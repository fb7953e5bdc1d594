"""Command line: ``initdiag report``, ``audit``, ``sweep``, ``list``. ``main(argv) -> exit code``.

Every option is declared once (:mod:`initdiag.options`); each command lists the options it takes (with its own
default where the commands differ, e.g. ``--init``). Exit codes: 0 success; 2 bad usage or input (one line,
no traceback; ``--debug`` shows it); 3 a ``--fail-on`` check failed (the report is written first);
130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .config import (
    AuditConfig,
    ExperimentConfig,
    parse_audit_inits,
    parse_fail_on,
    parse_formats,
    parse_input_shape,
)
from .errors import InitDiagError, Interrupted, OutputError, UsageError
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS, parse_init_list
from .models import MODELS, ModelSpec
from .options import OPTIONS, build_parser
from .vocab import BUILTIN_CHECKS

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
    out.write("\nChecks (--fail-on takes a check's name or one of its outcomes):\n")
    for check in BUILTIN_CHECKS:
        outcomes = [o for o in check.outcomes if o != "healthy"]
        out.write(f"  {check.name:<16} {check.title}" + (f"   [outcomes: {', '.join(outcomes)}]" if outcomes else "")
                  + "\n")
    return EXIT_OK


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(EXIT_TERMINATED)


def _run_command(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``report``, ``audit`` or ``sweep`` (:mod:`initdiag.commands`, imported only once the options parsed)."""
    from . import commands

    runners: dict[str, Callable[[argparse.Namespace, Sequence[str], TextIO, TextIO], int]] = {
        "report": commands.cmd_report, "audit": commands.cmd_audit, "sweep": commands.cmd_sweep,
    }
    return runners[args.command](args, argv, out, err)


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
        return _run_command(args, argv, out, err)
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
