"""Every command-line option, declared once, and the subcommands that take them.

:data:`OPTIONS` holds each option by its argparse destination; :data:`COMMANDS` lists, per subcommand, the
options it takes (with its own default where the commands differ, e.g. ``--init``); :func:`build_parser`
builds the argparse parser from the two.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AUDIT_INPUTS, AUDIT_LOSSES, INPUT_DTYPES
from .errors import UsageError
from .initializers import DEFAULT_INITIALIZERS
from .models import ACTIVATIONS, MODELS
from .vocab import FORMATS, PAPERS, __version__

__all__ = ["COMMANDS", "OPTIONS", "Axis", "Command", "Option", "build_parser"]


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
    Option("--model", f"model: {', '.join(MODELS)}, or your own for 1x28x28 inputs and 10 classes as "
                      "'pkg.mod:factory' or 'file.py:Class' (default %(default)s)", {"default": "cnn"}),
    Option("--depth", "deep-mlp: number of Linear layers (default %(default)s)", {"type": _int, "default": 10}),
    Option("--width", "deep-mlp: units per hidden layer (default %(default)s)", {"type": _int, "default": 256}),
    Option("--activation", f"deep-mlp: {'|'.join(ACTIVATIONS)} (default %(default)s)", {"default": "relu"}),
    Option("--init", "comma-separated initializations, parameters after a colon, e.g. "
                     "'zeros,random:std=0.05,xavier,he' (`initdiag list` shows them; an audit also takes 'keep', "
                     "the model as given) (default %(default)s)"),
    Option("--epochs", "training epochs (default %(default)s)", {"type": _int, "default": 5}),
    Option("--batch-size", "samples per batch (default %(default)s)", {"type": _int}),
    Option("--lr", "learning rate (default %(default)s; SGD usually wants 0.01-0.1)",
           {"type": _float, "default": 1e-3}),
    Option("--optimizer", "adam or sgd (momentum 0.9) (default %(default)s)", {"default": "adam"}),
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
    Option("--tensorboard", "also write TensorBoard event files, one run per subdirectory of DIR",
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
    Option("--backend", "sweep: local (worker processes) or ray (Ray tasks) (default %(default)s)",
           {"default": "local"}),
    Option("--ray-address", "sweep on Ray: join the cluster at ADDR (host:port, or auto); default: start a local "
                            "Ray instance sized to this machine", {"default": None, "metavar": "ADDR"}),
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


@dataclass(frozen=True)
class Axis:
    """A model axis of ``sweep``: the option takes a comma-separated list (a string) instead of one value."""

    default: str

COMMANDS: dict[str, Command] = {
    "report": Command(
        "train a model once per initializer on MNIST and write the report",
        "Train a model once per initializer on MNIST while recording per-layer statistics; check them; write "
        "report.html, report.pdf, summary.json, series.csv.",
        {"model": _OWN, "depth": _OWN, "width": _OWN, "activation": _OWN, "init": ",".join(DEFAULT_INITIALIZERS),
         "epochs": _OWN, "batch_size": 64, "lr": _OWN, "optimizer": _OWN, "seed": _OWN, "seeds": _OWN,
         "limit_train": _OWN, "record_every": _OWN, "dataset": _OWN, "data_dir": _OWN, "out": _OWN, "format": _OWN,
         "paper": _OWN,
         "device": "auto", "jobs": _OWN, "resume": _OWN, "tensorboard": _OWN, "fail_on": _OWN,
         "debug": _OWN}),
    "audit": Command(
        "diagnose the initialization of your own model (a few batches, no training)",
        "Push a few batches through a copy of a model, forward and backward, with the recorder and checks of "
        "`report`; compare initializations; write the report.",
        {"target": _OWN, "input_shape": _OWN, "init": "keep", "batches": _OWN, "batch_size": 16, "inputs": _OWN,
         "input_dtype": _OWN, "vocab": _OWN, "loss": _OWN, "kwargs": _OWN, "seed": _OWN, "device": "cpu",
         "data_dir": _OWN, "out": _OWN, "format": _OWN, "paper": _OWN, "fail_on": _OWN, "debug": _OWN}),
    "sweep": Command(
        "train a grid of models x initializers x seeds, locally or on Ray, and write the sweep report",
        "The options of `report`, with the model axes taking comma-separated lists (their Cartesian product): "
        "--model deep-mlp --depth 10,20,30 --width 128,512 --activation relu,tanh --init he,xavier --seeds 5.",
        {"model": Axis("deep-mlp"), "depth": Axis("10,20,30"), "width": Axis("256"), "activation": Axis("relu"),
         "init": "he,xavier", "epochs": 1, "batch_size": 64, "lr": _OWN, "optimizer": _OWN, "seed": _OWN,
         "seeds": 2, "limit_train": _OWN, "record_every": _OWN, "dataset": _OWN, "data_dir": _OWN, "out": _OWN,
         "format": _OWN, "paper": _OWN, "device": "cpu", "jobs": _OWN, "backend": _OWN, "ray_address": _OWN,
         "resume": _OWN, "fail_on": _OWN, "debug": _OWN}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initdiag", description="Diagnose the weight initialization of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"initdiag {__version__}")
    parser.add_argument("--debug", action="store_true", help=OPTIONS["debug"].help)
    sub = parser.add_subparsers(dest="command", metavar="{report,audit,sweep,list}", parser_class=_Parser)
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.help, description=command.description)
        for dest, default in command.options.items():
            option = OPTIONS[dest]
            settings = dict(option.settings)
            help_text = option.help
            if isinstance(default, Axis):
                settings.update(type=str, default=default.default, metavar="A,B,...")
                help_text = help_text.replace("(default %(default)s)", "") + " (a comma-separated list; default " \
                    "%(default)s)"
            elif default is not _OWN:
                settings["default"] = default
            cmd.add_argument(option.flag, help=help_text, **settings)
    sub.add_parser("list", help="list models and initializers with their formulas")
    return parser
