"""Command line: ``initdiag report``, ``initdiag audit``, ``initdiag list``. ``main(argv) -> exit code``.

Exit codes: 0 success; 2 bad usage or input (one line, no traceback; ``--debug`` shows it);
3 a ``--fail-on`` check failed (the report is written first); 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .config import FORMATS, PAPERS, AuditConfig, ExperimentConfig, parse_formats
from .errors import InitDiagError, Interrupted, OutputError, UsageError, did_you_mean
from .initializers import DEFAULT_INITIALIZERS, INITIALIZERS, parse_init_list
from .models import ACTIVATIONS, MODELS, ModelSpec

if TYPE_CHECKING:
    from .audit import AuditResult

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initdiag", description="Diagnose the weight initialization of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"initdiag {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for known errors")
    sub = parser.add_subparsers(dest="command", metavar="{report,audit,list}", parser_class=_Parser)

    rep = sub.add_parser("report", help="train a model once per initializer on MNIST and write the report",
                         description="Train a model once per initializer on MNIST while recording per-layer "
                                     "statistics; check them; write report.html, report.pdf, summary.json, "
                                     "series.csv.")
    rep.add_argument("--model", default="cnn", help=f"model: {', '.join(MODELS)} (default cnn)")
    rep.add_argument("--depth", type=_int, default=10, help="deep-mlp: number of Linear layers (default 10)")
    rep.add_argument("--width", type=_int, default=256, help="deep-mlp: units per hidden layer (default 256)")
    rep.add_argument("--activation", default="relu", help=f"deep-mlp: {'|'.join(ACTIVATIONS)} (default relu)")
    rep.add_argument("--init", default=",".join(DEFAULT_INITIALIZERS),
                     help="comma-separated initializers, parameters after a colon, e.g. "
                          "'zeros,random:std=0.05,xavier,he' (default %(default)s; see `initdiag list`)")
    rep.add_argument("--epochs", type=_int, default=5, help="training epochs (default 5)")
    rep.add_argument("--batch-size", type=_int, default=64, help="training batch size (default 64)")
    rep.add_argument("--lr", type=_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    rep.add_argument("--seed", type=_int, default=0, help="first seed (default 0)")
    rep.add_argument("--seeds", type=_int, default=1, help="repeat each initializer with N seeds (default 1)")
    rep.add_argument("--limit-train", type=_int, default=None, metavar="N",
                     help="use the first N training images (quick runs)")
    rep.add_argument("--record-every", type=_int, default=10, metavar="K",
                     help="record statistics every K-th training step, the first included (default 10: the "
                          "heatmaps show at most 200 steps; the loss is checked every step regardless)")
    rep.add_argument("--dataset", default="mnist", help="mnist (found or downloaded) or mnist-sample (bundled)")
    rep.add_argument("--data-dir", type=Path, default=None,
                     help="directory with the four MNIST IDX files (plain or .gz; also DIR/MNIST/raw)")
    rep.add_argument("--out", type=Path, default=None, help="output directory (default reports/<model>-<time>)")
    rep.add_argument("--format", default=",".join(FORMATS), help="outputs to write (default %(default)s)")
    rep.add_argument("--paper", default="a4", help=f"PDF paper size: {', '.join(PAPERS)} (default a4)")
    rep.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default auto)")
    rep.add_argument("--jobs", type=_int, default=None, metavar="N",
                     help="runs in parallel worker processes (default: one per core on the CPU, 1 on a GPU)")
    rep.add_argument("--resume", type=Path, default=None, metavar="DIR",
                     help="continue an interrupted report in DIR with its original settings")
    rep.add_argument("--fail-on", default="", metavar="CHECKS",
                     help="exit with code 3 when any run fails one of these checks (comma-separated)")

    _add_audit_parser(sub)
    for command in (rep, sub.choices["audit"]):  # --debug also after the subcommand (main() reads argv for it)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks for known errors")
    sub.add_parser("list", help="list models and initializers with their formulas")
    return parser


def _fail_on(text: str) -> tuple[str, ...]:
    from .checks import FAIL_ON_CHOICES

    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for name in names:
        if name not in FAIL_ON_CHOICES:
            raise UsageError(f"unknown check '{name}'{did_you_mean(name, FAIL_ON_CHOICES)}; "
                             f"choose from {', '.join(FAIL_ON_CHOICES)}")
    return names


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Validate the ``report`` arguments into an ExperimentConfig (UsageError on bad input)."""
    model = ModelSpec(args.model, depth=args.depth, width=args.width, activation=args.activation)
    return ExperimentConfig(
        model=model, initializers=parse_init_list(args.init), seed=args.seed, seeds=args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit_train=args.limit_train,
        record_every=args.record_every, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
        formats=parse_formats(args.format), device=args.device, fail_on=_fail_on(args.fail_on), jobs=args.jobs,
        paper=args.paper,
    )


def prepare_out_dir(out: Path | None, model: str) -> Path:
    """Create (if needed) and check the output directory before any long work starts."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("reports") / f"{model}-{stamp}"
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


def _summary_table(result: object, out: TextIO) -> None:
    from .experiment import ExperimentResult

    assert isinstance(result, ExperimentResult)
    rows = [("initializer", "seed", "test accuracy", "test loss", "status", "verdicts")]
    for run in result.runs:
        flags = sorted({v.check for v in run.verdicts if v.status == "fail"})
        rows.append((run.label, str(run.seed), f"{run.test_accuracy:.4f}", f"{run.test_loss:.4f}",
                     run.status, ", ".join(flags) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


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


def _cmd_report(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .checks import failed_checks
    from .data import load_mnist
    from .progress import Progress
    from .report import write_report
    from .runner import ExperimentInterrupted, run_experiment
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
    _summary_table(result, out)
    out.write(f"\nReport written to {out_dir}/ ({', '.join(p.name for p in paths.values())})\n")
    if "html" in paths:
        out.write(f"Open {paths['html']}\n")
    failed = failed_checks(v for run in result.runs for v in run.verdicts) & set(config.fail_on)
    if failed:
        err.write(f"initdiag: --fail-on: failed checks: {', '.join(sorted(failed))}\n")
        return EXIT_CHECK_FAILED
    return EXIT_OK


# -- initdiag audit ------------------------------------------------------------------------------------------
def _add_audit_parser(sub: argparse._SubParsersAction) -> None:
    from .config import AUDIT_INPUTS, AUDIT_LOSSES, INPUT_DTYPES

    aud = sub.add_parser("audit", help="diagnose the initialization of your own model (a few batches, no training)",
                         description="Push a few batches through a copy of a model, forward and backward, with the "
                                     "recorder and checks of `report`; compare initializations; write the report.")
    aud.add_argument("target", help="the model: 'package.module:name' or 'path/to/file.py:name' (a class, a "
                                    "zero-argument factory or an nn.Module instance)")
    aud.add_argument("--input-shape", default=None, metavar="C,H,W",
                     help="one sample's shape without the batch dimension, e.g. 3,224,224 (required unless "
                          "--inputs mnist)")
    aud.add_argument("--init", default="keep", help="'keep' (the model as given) and/or initializers to compare, "
                                                    "e.g. keep,he,xavier (default keep)")
    aud.add_argument("--batches", type=_int, default=4, help="batches to push through (default 4)")
    aud.add_argument("--batch-size", type=_int, default=16, help="samples per batch (default 16)")
    aud.add_argument("--inputs", default="normal", help=f"{'|'.join(AUDIT_INPUTS)}: standard normal (default) or "
                                                        "MNIST training images")
    aud.add_argument("--input-dtype", default="float", help=f"{'|'.join(INPUT_DTYPES)}: long gives token ids in "
                                                             "[0, --vocab) for models that start with an Embedding")
    aud.add_argument("--vocab", type=_int, default=None, metavar="N",
                     help="token ids for --input-dtype long (default: the first Embedding's size)")
    aud.add_argument("--loss", default="auto", help=f"{'|'.join(AUDIT_LOSSES)}: auto is cross-entropy against random "
                                                    "labels for (batch, classes) outputs, else mean squared output")
    aud.add_argument("--kwargs", default=None, metavar="JSON", help="keyword arguments for the class or factory, "
                                                                      "a JSON object, e.g. '{\"num_classes\": 10}'")
    aud.add_argument("--seed", type=_int, default=0, help="seed of the inputs, labels and initializers (default 0)")
    aud.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    aud.add_argument("--data-dir", type=Path, default=None, help="MNIST directory for --inputs mnist")
    aud.add_argument("--out", type=Path, default=None, help="output directory (default reports/audit-<name>-<time>)")
    aud.add_argument("--format", default=",".join(FORMATS), help="outputs to write (default %(default)s)")
    aud.add_argument("--paper", default="a4", help=f"PDF paper size: {', '.join(PAPERS)} (default a4)")
    aud.add_argument("--fail-on", default="", metavar="CHECKS",
                     help="exit with code 3 when an audited initialization fails one of these checks")


def audit_config_from_args(args: argparse.Namespace) -> AuditConfig:
    """Validate the ``audit`` arguments into an AuditConfig (UsageError on bad input)."""
    import json

    from .config import parse_audit_inits, parse_input_shape

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
        out=args.out, formats=parse_formats(args.format), paper=args.paper, fail_on=_fail_on(args.fail_on),
    )


def _audit_table(result: AuditResult, out: TextIO) -> None:
    from ._audit_weights import forward_gain

    rows = [("initialization", "forward gain", "fails", "warns", "")]
    for run in result.runs:
        gain = forward_gain(run.verdicts)
        fails = list(dict.fromkeys(f"{v.check} ({v.signal})" if v.signal in ("forward", "backward") else v.check
                                   for v in run.verdicts if v.status == "fail"))
        rows.append((run.label, f"{gain:.3g}" if gain == gain else "-", ", ".join(fails) or "-",
                     str(sum(v.status == "warn" for v in run.verdicts)),
                     "<- recommended" if run.label == result.recommendation.initializer else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths).rstrip() + "\n")


def _cmd_audit(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    import re
    import shlex

    from .audit import run_audit
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
    _audit_table(result, out)
    out.write(f"\nRecommendation: {result.recommendation.evidence}\n")
    out.write(f"\nReport written to {out_dir}/ ({', '.join(p.name for p in paths.values())})\n")
    if "html" in paths:
        out.write(f"Open {paths['html']}\n")
    failed = result.failed(config.fail_on)
    if failed:
        err.write(f"initdiag: --fail-on: failed checks: {', '.join(sorted(failed))}\n")
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(EXIT_TERMINATED)


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
        if args.command == "audit":
            return _cmd_audit(args, argv, out, err)
        return _cmd_report(args, argv, out, err)
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
