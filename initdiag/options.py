"""Every command-line option, declared once, and the subcommands that take them.

:data:`OPTIONS` holds each option by its argparse destination; :data:`COMMANDS` lists, per subcommand, the
options it takes with their defaults, read from the config dataclasses (:mod:`initdiag.config`) except where a
command has its own (e.g. ``report --device auto``, ``sweep --epochs 1``); :func:`build_parser` builds the
argparse parser from the two.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .compare import DEFAULT_FACTOR
from .config import AUDIT_LOSSES, INPUT_DTYPES, TRAIN_DTYPES, AuditConfig, ExperimentConfig, FixConfig
from .errors import UsageError
from .models import ACTIVATIONS, MODELS, ModelSpec
from .sweep_config import SweepConfig
from .vocab import PAPERS, __version__

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
    """One command-line option: its flag and argparse settings (its default is each command's, in :data:`COMMANDS`,
    but for the few options no config holds)."""

    flag: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)


OPTIONS: dict[str, Option] = {o.flag.lstrip("-").replace("-", "_"): o for o in (
    Option("target", "the model: 'package.module:name' or 'path/to/file.py:name' (a class, a zero-argument "
                     "factory or an nn.Module instance)"),
    Option("--model", f"model: {', '.join(MODELS)}, or your own for 1x28x28 inputs and 10 classes as "
                      "'pkg.mod:factory' or 'file.py:Class' (default %(default)s)"),
    Option("--depth", "deep-mlp: number of Linear layers (default %(default)s)", {"type": _int}),
    Option("--width", "deep-mlp: units per hidden layer (default %(default)s)", {"type": _int}),
    Option("--activation", f"deep-mlp: {'|'.join(ACTIVATIONS)} (default %(default)s)"),
    Option("--init", "comma-separated initializations, parameters after a colon, e.g. "
                     "'zeros,random:std=0.05,xavier,he' (`initdiag list` shows them; an audit also takes 'keep', "
                     "the model as given) (default %(default)s)"),
    Option("--epochs", "training epochs (default %(default)s)", {"type": _int}),
    Option("--batch-size", "samples per batch (default %(default)s)", {"type": _int}),
    Option("--lr", "learning rate (default %(default)s; SGD usually wants 0.01-0.1)", {"type": _float}),
    Option("--optimizer", "adam or sgd (momentum 0.9) (default %(default)s)"),
    Option("--seed", "first seed: weights, batch order, inputs and labels (default %(default)s)", {"type": _int}),
    Option("--seeds", "repeat each initializer with N seeds (default %(default)s)", {"type": _int}),
    Option("--limit-train", "use the first N training images (quick runs)", {"type": _int, "metavar": "N"}),
    Option("--record-every", "record statistics every K-th training step, the first included (default "
                             "%(default)s; the loss is checked every step regardless)", {"type": _int, "metavar": "K"}),
    Option("--dataset", "mnist (found or downloaded) or mnist-sample (bundled)"),
    Option("--data-dir", "directory with the four MNIST IDX files (plain or .gz; also DIR/MNIST/raw)", {"type": Path}),
    Option("--out", "output directory (default reports/<model>-<time>; compare: none, Markdown on stdout)",
           {"type": Path}),
    Option("--format", "outputs to write (default %(default)s)"),
    Option("--paper", f"PDF paper size: {', '.join(PAPERS)} (default %(default)s)"),
    Option("--device", "auto (CUDA when present), cpu or cuda (default %(default)s)"),
    Option("--jobs", "runs in parallel worker processes (default: one per core on the CPU, 1 on a GPU)",
           {"type": _int, "metavar": "N"}),
    Option("--resume", "continue an interrupted report in DIR with its original settings",
           {"type": Path, "default": None, "metavar": "DIR"}),
    Option("--tensorboard", "also write TensorBoard event files, one run per subdirectory of DIR",
           {"type": Path, "default": None, "metavar": "DIR"}),
    Option("--fail-on", "exit with code 3 when a run fails one of these checks (comma-separated)",
           {"metavar": "CHECKS"}),
    Option("--input-shape", "one sample's shape without the batch dimension, e.g. 3,224,224 (required unless "
                            "--inputs mnist or a file); repeat it for each positional input of the model's forward "
                            "(a siamese network's two images, a graph's features and adjacency)",
           {"metavar": "C,H,W", "action": "append"}),
    Option("--batches", "batches to push through (default %(default)s)", {"type": _int}),
    Option("--inputs", "normal|mnist|FILE.pt: standard normal, MNIST training images, or one batch saved with "
                       "torch.save (a tensor, a tuple of positional arguments, a dict of keyword arguments, or "
                       "{'args': ..., 'kwargs': ...}; loaded with weights_only=True: nothing in it runs) "
                       "(default %(default)s)", {"metavar": "KIND"}),
    Option("--input-dtype", f"{'|'.join(INPUT_DTYPES)}: long gives token ids in [0, --vocab) for models that start "
                            "with an Embedding; one for all inputs or one per --input-shape (default float: the "
                            "model's own floating dtype)", {"action": "append"}),
    Option("--vocab", "token ids for --input-dtype long (default: the first Embedding's size)",
           {"type": _int, "metavar": "N"}),
    Option("--loss", f"{'|'.join(AUDIT_LOSSES)}: auto is cross-entropy against random labels for (batch, classes) "
                     "outputs, else mean squared output (default %(default)s)"),
    Option("--dtype", f"{'|'.join(TRAIN_DTYPES)}: the dtype the model will train in; float16 and bfloat16 make "
                      "the precision check a verdict (default: the model's own dtype)"),
    Option("--kwargs", "keyword arguments for the class or factory, a JSON object, e.g. '{\"num_classes\": 10}'",
           {"default": None, "metavar": "JSON"}),
    Option("--backend", "sweep: local (worker processes) or ray (Ray tasks) (default %(default)s)"),
    Option("--ray-address", "sweep on Ray: join the cluster at ADDR (host:port, or auto); default: start a local "
                            "Ray instance sized to this machine", {"metavar": "ADDR"}),
    Option("--method", "fix: theory (the structure and the theory engine: for each failing verdict, the weight scale "
                       "that answers it) or lsuv (every weight layer rescaled on a batch, in execution order, until "
                       "its output variance is --target-var) (default %(default)s)"),
    Option("--rounds", "fix --method theory: at most N rounds of repair and audit (default %(default)s)",
           {"type": _int, "metavar": "N"}),
    Option("--tol", "fix --method lsuv: relative tolerance on each layer's output variance (default %(default)s)",
           {"type": _float}),
    Option("--target-var", "fix --method lsuv: each layer's output variance (default %(default)s)", {"type": _float}),
    Option("--max-iter", "fix --method lsuv: rescalings per layer at most (default %(default)s)", {"type": _int}),
    Option("--orthogonal", "fix --method lsuv: orthogonal weights before the rescaling (Saxe et al. 2014)",
           {"action": "store_true"}),
    Option("--verify-steps", "fix: train the original and the repaired model N Adam steps from the same seed on the "
                             "same batches and compare their losses; 0 skips it (default %(default)s)",
           {"type": _int, "metavar": "N"}),
    Option("--verify-lr", "fix: the verification's learning rate (default %(default)s)", {"type": _float}),
    Option("--save", "fix: write the repaired model's state_dict (tensors only, torch.save) to FILE",
           {"type": Path, "metavar": "FILE"}),
    Option("base", "compare: the earlier result, a summary.json or a report folder holding one"),
    Option("new", "compare: the later result, of the same kind (audit, fix, training, experiment)"),
    Option("--factor", "compare: a layer's variance changed when NEW/BASE is at least this or at most its inverse "
                       "(default %(default)s)", {"type": _float}),
    Option("--debug", "show tracebacks for known errors", {"action": "store_true", "default": argparse.SUPPRESS}),
)}
"""Every option, declared once, by its argparse destination."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its help, the options it takes (name -> its default in this command)."""

    help: str
    description: str
    options: dict[str, Any]


_OWN = object()
"""No per-command default: the option's own (options the configs do not hold: ``--resume``, ``--debug``, ...)."""


@dataclass(frozen=True)
class Axis:
    """A model axis of ``sweep``: the option takes a comma-separated list (a string) instead of one value."""

    default: str


_FIELD = {"format": "formats"}
"""Options whose config field has another name."""


def _cli(value: Any) -> Any:
    """A config default as the command line spells it: a tuple comma-joined (initializers by label), an enum as
    its string."""
    if isinstance(value, tuple):
        return ",".join(str(getattr(v, "label", v)) for v in value)
    return str(value) if isinstance(value, Enum) else value


def _options(dests: str, config: Any, **own: Any) -> dict[str, Any]:
    """The options ``dests`` (space-separated, in help order), each with the default of the ``config`` dataclass's
    field of its name (the one place it is written), or with the command's ``own`` (a default of this command only,
    an :class:`Axis` or ``_OWN``)."""
    return {d: own[d] if d in own else _cli(getattr(config, _FIELD.get(d, d))) for d in dests.split()}


COMMANDS: dict[str, Command] = {
    "report": Command(
        "train a model once per initializer on MNIST and write the report",
        "Train a model once per initializer on MNIST while recording per-layer statistics; check them; write "
        "report.html, report.pdf, summary.json, series.csv, summary.md.",
        _options("model depth width activation init epochs batch_size lr optimizer seed seeds limit_train "
                 "record_every dataset data_dir out format paper device jobs resume tensorboard fail_on debug",
                 ExperimentConfig, model=_cli(ModelSpec.name), depth=ModelSpec.depth, width=ModelSpec.width,
                 activation=ModelSpec.activation, init=_cli(ExperimentConfig.initializers), device="auto", resume=_OWN,
                 tensorboard=_OWN, debug=_OWN)),
    "audit": Command(
        "diagnose the initialization of your own model (a few batches, no training)",
        "Push a few batches through a copy of a model, forward and backward, with the recorder and checks of "
        "`report`; compare initializations; write the report.",
        _options("target input_shape init batches batch_size inputs input_dtype vocab loss dtype kwargs seed device "
                 "data_dir out format paper fail_on debug",
                 AuditConfig, target=_OWN, init=_cli(AuditConfig.inits), kwargs=_OWN, debug=_OWN, input_dtype=None)),
    "fix": Command(
        "repair the initialization an audit flags, and prove it with a second audit and a short training",
        "Audit a model, repair what fails (--method theory or lsuv), audit the repaired model, train both a few "
        "steps; write the before/after report and, with --save, the repaired state_dict. Exit 0 when the repaired "
        "model passes, 3 when checks still fail.",
        {**_options("target input_shape batches batch_size inputs input_dtype vocab loss dtype kwargs seed device "
                    "data_dir", AuditConfig, target=_OWN, kwargs=_OWN, input_dtype=None),
         **_options("method rounds tol target_var max_iter orthogonal verify_steps verify_lr save", FixConfig,
                    save=None),
         **_options("out format paper fail_on debug", AuditConfig, debug=_OWN)}),
    "sweep": Command(
        "train a grid of models x initializers x seeds, locally or on Ray, and write the sweep report",
        "The options of `report`, with the model axes taking comma-separated lists (their Cartesian product): "
        "--model deep-mlp --depth 10,20,30 --width 128,512 --activation relu,tanh --init he,xavier --seeds 5.",
        _options("model depth width activation init epochs batch_size lr optimizer seed seeds limit_train "
                 "record_every dataset data_dir out format paper device jobs backend ray_address resume fail_on "
                 "debug",
                 ExperimentConfig, model=Axis("deep-mlp"), depth=Axis("10,20,30"), width=Axis(str(ModelSpec.width)),
                 activation=Axis(ModelSpec.activation), init="he,xavier", epochs=1, seeds=2,
                 backend=_cli(SweepConfig.backend), ray_address=SweepConfig.ray_address, resume=_OWN, debug=_OWN)),
    "compare": Command(
        "what changed between two results' summary.json: checks newly failing or resolved, layer variances, "
        "accuracy, weight layers",
        "Compare two summary.json files (or report folders) of the same kind: verdicts newly failing or resolved, "
        "per-layer variances changed beyond --factor, weight layers added, removed or re-initialized, and test "
        "accuracy (two-proportion z-test). Without --out, print the Markdown (or the one --format) to stdout and "
        "write nothing; with --out, write compare.md, compare.json, compare.html there. Exit 3 when NEW fails a "
        "check (among --fail-on) that BASE did not fail, else 0; 2 on bad input.",
        {"base": _OWN, "new": _OWN, "out": None, "format": "md,json,html", "factor": DEFAULT_FACTOR,
         "fail_on": None, "debug": _OWN}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initdiag", description="Diagnose the weight initialization of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"initdiag {__version__}")
    parser.add_argument("--debug", action="store_true", help=OPTIONS["debug"].help)
    sub = parser.add_subparsers(dest="command", metavar="{report,audit,fix,sweep,compare,list}", parser_class=_Parser)
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
