"""Command line: ``initdiag report``, ``initdiag audit``, ``initdiag list``. ``main(argv) -> exit code``.

Every option is declared once in :data:`OPTIONS`; each command lists the options it takes (with its own
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .config import (
    AUDIT_INPUTS,
    AUDIT_LOSSES,
    INPUT_DTYPES,
    AuditConfig,
    ExperimentConfig,
    parse_audit_inits,
    parse_fail_on,
    parse_formats,
    parse_input_shape,
)
from .errors import InitDiagError, Interrupted, OutputError, UsageError
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS, parse_init_list
from .models import ACTIVATIONS, MODELS, ModelSpec
from .vocab import FORMATS, PAPERS, Status, __version__

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "OPTIONS", "build_parser", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so main() controls the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One command-line option: its flag and argparse settings (``default`` may differ per command)."""

    flag: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)


OPTIONS: dict[str, Option] = {o.flag.lstrip("-").replace("-", "_"): o for o in (
    Option("target", "the model: 'package.module:name' or 'path/to/file.py:name' (a class, a zero-argument "
                     "factory or an nn.Module instance)"),
    Option("--model", f"model: {', '.join(MODELS)} (default %(default)s)", {"default": "cnn"}),
    Option("--depth", "deep-mlp: number of Linear layers (default %(default)s)", {"type": _int, "default": 10}),
    Option("--width", "deep-mlp: units per hidden layer (default %(default)s)", {"type": _int, "default": 256}),
    Option("--activation", f"deep-mlp: {'|'.join(ACTIVATIONS)} (default %(default)s)", {"default": "relu"}),
    Option("--init", "comma-separated initializations, parameters after a colon, e.g. "
                     "'zeros,random:std=0.05,xavier,he' (`initdiag list` shows them; an audit also takes 'keep', "
                     "the model as given) (default %(default)s)"),
    Option("--epochs", "training epochs (default %(default)s)", {"type": _int, "default": 5}),
    Option("--batch-size", "samples per batch (default %(default)s)", {"type": _int}),
    Option("--lr", "Adam learning rate (default %(default)s)", {"type": _float, "default": 1e-3}),
    Option("--seed", "first seed: weights, batch order, inputs and labels (default %(default)s)",
           {"type": _int, "default": 0}),
    Option("--seeds", "repeat each initializer with N seeds (default %(default)s)", {"type": _int, "default": 1}),
    Option("--limit-train", "use the first N training images (quick runs)",
           {"type": _int, "default": None, "metavar": "N"}),
    Option("--record-every", "record statistics every K-th training step, the first included (default "
                             "%(default)s; the loss is checked every step regardless)",
           {"type": _int, "default": 10, "metavar": "K"}),
    Option("--dataset", "mnist (found or downloaded) or mnist-sample (bundled)", {"default": "mnist"}),
    Option("--data-dir", "directory with the four MNIST IDX files (plain or .gz; also DIR/MNIST/raw)",
           {"type": Path, "default": None}),
    Option("--out", "output directory (default reports/<model>-<time>)", {"type": Path, "default": None}),
    Option("--format", "outputs to write (default %(default)s)", {"default": ",".join(FORMATS)}),
    Option("--paper", f"PDF paper size: {', '.join(PAPERS)} (default %(default)s)", {"default": "a4"}),
    Option("--device", "auto (CUDA when present), cpu or cuda (default %(default)s)"),
    Option("--jobs", "runs in parallel worker processes (default: one per core on the CPU, 1 on a GPU)",
           {"type": _int, "default": None, "metavar": "N"}),
    Option("--resume", "continue an interrupted report in DIR with its original settings",
           {"type": Path, "default": None, "metavar": "DIR"}),
    Option("--fail-on", "exit with code 3 when a run fails one of these checks (comma-separated)",
           {"default": "", "metavar": "CHECKS"}),
    Option("--input-shape", "one sample's shape without the batch dimension, e.g. 3,224,224 (required unless "
                            "--inputs mnist)", {"default": None, "metavar": "C,H,W"}),
    Option("--batches", "batches to push through (default %(default)s)", {"type": _int, "default": 4}),
    Option("--inputs", f"{'|'.join(AUDIT_INPUTS)}: standard normal or MNIST training images (default %(default)s)",
           {"default": "normal"}),
    Option("--input-dtype", f"{'|'.join(INPUT_DTYPES)}: long gives token ids in [0, --vocab) for models that start "
                            "with an Embedding (default %(default)s)", {"default": "float"}),
    Option("--vocab", "token ids for --input-dtype long (default: the first Embedding's size)",
           {"type": _int, "default": None, "metavar": "N"}),
    Option("--loss", f"{'|'.join(AUDIT_LOSSES)}: auto is cross-entropy against random labels for (batch, classes) "
                     "outputs, else mean squared output (default %(default)s)", {"default": "auto"}),
    Option("--kwargs", "keyword arguments for the class or factory, a JSON object, e.g. '{\"num_classes\": 10}'",
           {"default": None, "metavar": "JSON"}),
    Option("--debug", "show tracebacks for known errors", {"action": "store_true", "default": argparse.SUPPRESS}),
)}
"""Every option, declared once, by its argparse destination."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its help, the options it takes (name -> its own default where the commands differ)."""

    help: str
    description: str
    options: dict[str, Any]


_OWN = object()
"""No per-command default: the option's own."""

COMMANDS: dict[str, Command] = {
    "report": Command(
        "train a model once per initializer on MNIST and write the report",
        "Train a model once per initializer on MNIST while recording per-layer statistics; check them; write "
        "report.html, report.pdf, summary.json, series.csv.",
        {"model": _OWN, "depth": _OWN, "width": _OWN, "activation": _OWN, "init": ",".join(DEFAULT_INITIALIZERS),
         "epochs": _OWN, "batch_size": 64, "lr": _OWN, "seed": _OWN, "seeds": _OWN, "limit_train": _OWN,
         "record_every": _OWN, "dataset": _OWN, "data_dir": _OWN, "out": _OWN, "format": _OWN, "paper": _OWN,
         "device": "auto", "jobs": _OWN, "resume": _OWN, "fail_on": _OWN, "debug": _OWN}),
    "audit": Command(
        "diagnose the initialization of your own model (a few batches, no training)",
        "Push a few batches through a copy of a model, forward and backward, with the recorder and checks of "
        "`report`; compare initializations; write the report.",
        {"target": _OWN, "input_shape": _OWN, "init": "keep", "batches": _OWN, "batch_size": 16, "inputs": _OWN,
         "input_dtype": _OWN, "vocab": _OWN, "loss": _OWN, "kwargs": _OWN, "seed": _OWN, "device": "cpu",
         "data_dir": _OWN, "out": _OWN, "format": _OWN, "paper": _OWN, "fail_on": _OWN, "debug": _OWN}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initdiag", description="Diagnose the weight initialization of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"initdiag {__version__}")
    parser.add_argument("--debug", action="store_true", help=OPTIONS["debug"].help)
    sub = parser.add_subparsers(dest="command", metavar="{report,audit,list}", parser_class=_Parser)
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.help, description=command.description)
        for dest, default in command.options.items():
            option = OPTIONS[dest]
            settings = dict(option.settings)
            if default is not _OWN:
                settings["default"] = default
            cmd.add_argument(option.flag, help=option.help, **settings)
    sub.add_parser("list", help="list models and initializers with their formulas")
    return parser


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Validate the ``report`` arguments into an ExperimentConfig (UsageError on bad input)."""
    model = ModelSpec(args.model, depth=args.depth, width=args.width, activation=args.activation)
    return ExperimentConfig(
        model=model, initializers=parse_init_list(args.init), seed=args.seed, seeds=args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit_train=args.limit_train,
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
    return EXIT_OK


RESUME_KEEPS = ("resume", "jobs", "debug", "command")
"""Options that may accompany --resume; every other setting comes from the interrupted run."""


def _resume_config(args: argparse.Namespace) -> tuple[ExperimentConfig, list[str]]:
    from .store import RunStore

    defaults = vars(build_parser().parse_args(["report"]))
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in RESUME_KEEPS and v != defaults.get(k)]
    if changed:
        raise UsageError(f"--resume takes its settings from {args.resume}; drop {', '.join(changed)}")
    plan = RunStore(args.resume).load_plan()
    config = dataclasses.replace(plan.config, out=args.resume, jobs=args.jobs or plan.config.jobs)
    return config, list(plan.argv)


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
    from .checks import failed_checks
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
    out.write("\n")
    rows = [("initializer", "seed", "test accuracy", "test loss", "status", "verdicts")]
    rows += [(run.label, str(run.seed), f"{run.test_accuracy:.4f}", f"{run.test_loss:.4f}", run.status,
              ", ".join(sorted({v.check for v in run.verdicts if v.status == Status.FAIL})) or "-")
             for run in result.runs]
    _table(rows, out)
    _wrote(paths, out_dir, out)
    return _gate(failed_checks(v for run in result.runs for v in run.verdicts) & set(config.fail_on), err)


def _cmd_audit(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .audit import run_audit
    from .audit.weights import forward_gain
    from .models import load_model_ref

    config = audit_config_from_args(args)
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
        fails = list(dict.fromkeys(f"{v.check} ({v.signal})" if v.signal in ("forward", "backward") else v.check
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


_RUNNERS: dict[str, Callable[[argparse.Namespace, Sequence[str], TextIO, TextIO], int]] = {
    "report": _cmd_report, "audit": _cmd_audit,
}


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
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
