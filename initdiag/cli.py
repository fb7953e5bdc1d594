"""Command line: ``initdiag report``, ``audit``, ``fix``, ``sweep``, ``compare``, ``list``. ``main(argv) -> exit code``.

Every option is declared once (:mod:`initdiag.options`); each command lists the options it takes (with its own
default where the commands differ, e.g. ``--init``). Exit codes: 0 success; 2 bad usage or input (one line,
no traceback; ``--debug`` shows it); 3 a ``--fail-on`` check failed (the report is written first);
130/143 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from .commands import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    audit_config_from_args,
    cmd_audit,
    cmd_report,
    cmd_sweep,
    config_from_args,
    prepare_out_dir,
)
from .errors import InitDiagError, Interrupted
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS
from .models import MODELS
from .options import OPTIONS, build_parser
from .vocab import BUILTIN_CHECKS

__all__ = ["EXIT_CHECK_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "EXIT_USAGE", "OPTIONS",
           "audit_config_from_args", "build_parser", "config_from_args", "main", "prepare_out_dir"]

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


def _cmd_fix(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .repair.command import cmd_fix  # only here: the CLI parses without torch

    return cmd_fix(args, argv, out, err)


def _cmd_compare(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .compare_render import cmd_compare  # only here: the other commands need not load it

    return cmd_compare(args, argv, out, err)


_RUNNERS: dict[str, Callable[[argparse.Namespace, Sequence[str], TextIO, TextIO], int]] = {
    "report": cmd_report, "audit": cmd_audit, "fix": _cmd_fix, "sweep": cmd_sweep, "compare": _cmd_compare,
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


def run() -> int:
    """The ``initdiag`` console script and ``python -m initdiag``: :func:`main`, then the objects alive at the end
    are frozen (``gc.freeze``) so that the interpreter's shutdown does not traverse them again in its last
    garbage collections (what torch, pandas, matplotlib and WeasyPrint loaded: ~0.6 s of every command's exit
    on a 2-core CPU, ~1.5 s after a report). Exit handlers, flushes and reference-counted destructors run as
    before; objects in reference cycles are freed with the process, as for any object alive at exit. Not in
    :func:`main` itself, which tests and programs call in a process that goes on."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
