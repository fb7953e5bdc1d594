"""``initdiag fix TARGET ...``: the command line of :func:`initdiag.fix`.

Exit codes: 0 when the repaired model passes its audit (or the model needed no repair), 3 when checks still
fail (named; ``--fail-on`` narrows which count), 2 on bad input (one line: a model that fails to run, an unknown
method, a non-finite batch, an output or ``--save`` path that cannot be written).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..commands import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    audit_config_from_args,
    check_out_dir,
    default_out_dir,
    prepare_out_dir,
    print_table,
    removed_on_failure,
    wrote,
)
from ..config import FixConfig
from ..errors import OutputError
from ..vocab import Status

__all__ = ["check_save_path", "cmd_fix"]


def check_save_path(path: Path) -> None:
    """OutputError (one line) unless ``path`` can be written, probed by opening it for appending (a file the
    probe creates is removed again): a folder, a missing or read-only folder, a read-only file all fail."""
    if path.is_dir():
        raise OutputError(f"--save {path} is a directory; give a file name such as fixed.pt")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write --save {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


def cmd_fix(args: argparse.Namespace, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``initdiag fix``: audit, repair, audit again, verify; write the report and the repaired state_dict."""
    audit = audit_config_from_args(args)
    config = FixConfig(audit=audit, method=args.method, rounds=args.rounds, tol=args.tol, target_var=args.target_var,
                       max_iter=args.max_iter, orthogonal=args.orthogonal, verify_steps=args.verify_steps,
                       verify_lr=args.verify_lr, save=args.save)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", audit.target.rpartition(":")[2]) or "model"
    out_dir = audit.out if audit.out is not None else default_out_dir(f"fix-{name}")
    check_out_dir(out_dir)
    if config.save is not None:
        check_save_path(config.save)
    import torch

    from ..audit.run import seed_global_rngs
    from ..experiment import resolve_device
    from ..models import load_model_ref
    from . import run_fix

    resolve_device(audit.device)
    seed_global_rngs(audit.seed)
    model = load_model_ref(audit.target, audit.model_kwargs)
    result = run_fix(model, config, command=shlex.join(["initdiag", *argv]))
    with removed_on_failure(out_dir):
        prepare_out_dir(out_dir, f"fix-{name}")
        paths = result.write(out_dir, audit.formats, audit.paper)
    if config.save is not None:
        try:
            torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, config.save)
        except OSError as exc:
            raise OutputError(f"cannot write --save {config.save}: {exc.strerror or exc}") from None
    out.write(f"Fixed {audit.target} with {result.inputs.description} ({config.method}).\n\n")
    rows = [("model", "passes", "fails", "warns")]
    for run in result.runs:
        fails = list(dict.fromkeys(v.check for v in run.verdicts if v.status == Status.FAIL))
        rows.append((run.name, "yes" if not fails else "no", ", ".join(fails) or "-",
                     str(sum(v.status == Status.WARN for v in run.verdicts))))
    print_table(rows, out)
    if not result.changes:
        out.write("\nNothing to repair: the model passes its audit and is unchanged.\n" if result.before.passed else
                  "\nNo rule could repair what fails; the model is unchanged.\n")
    else:
        out.write(f"\n{len(result.changes)} parameters changed in {result.rounds} round(s):\n")
        print_table([("layer", "old std", "new std", "answers")] + [
            (c.layer, f"{c.old_std:.3g}", f"{c.new_std:.3g}", ", ".join(c.answers)) for c in result.changes[:12]],
            out)
        if len(result.changes) > 12:
            out.write(f"... and {len(result.changes) - 12} more (the report lists them all)\n")
    for what in (*result.unconverged, *result.unrepaired):
        out.write(f"not repaired: {what}\n")
    ver = result.verification
    if ver is not None:
        a, b = ver.tail(ver.original), ver.tail(ver.repaired)
        out.write(f"\nVerification ({ver.steps} steps, {ver.data}): loss {a:.4g} -> {b:.4g}: the repaired model "
                  f"{'trains better' if ver.improved else 'does NOT train better'}.\n")
    if config.save is not None:
        out.write(f"Repaired state_dict written to {config.save}\n")
    wrote(paths, out_dir, out)
    failed = result.failed(audit.fail_on) if audit.fail_on else {
        str(v.check) for v in result.runs[1].verdicts if v.status == Status.FAIL}
    if failed:
        err.write(f"initdiag: fix: the repaired model still fails: {', '.join(sorted(failed))}\n")
        return EXIT_CHECK_FAILED
    return EXIT_OK
