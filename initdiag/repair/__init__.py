"""``fix``: repair the initialization an audit flags, and prove the repair with a second audit and a short
training. The pipeline is audit -> repair -> audit (DESIGN: ``fix``)::

    result = initdiag.fix(model, input_shape=(3, 32, 32))            # method="theory"
    result.model, result.changes, result.before.passed, result.after.passed, result.verification
    result.write("reports/fix", formats=("html", "json"))

Methods: ``theory`` (:mod:`.theory`: for each failing verdict, the weight scale theory says answers it, in
rounds of audit and repair) and ``lsuv`` (:mod:`.lsuv`: every weight layer in execution order rescaled on a
batch until its output variance is 1). Both act only when the audit fails: a model that passes is returned
unchanged (its ``state_dict`` bitwise equal) and the result says so.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import FIX_METHODS, KEEP, AuditConfig, FixConfig
from ..errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from ..results import AuditResult, FixResult, ParamChange

__all__ = ["FIX_METHODS", "fix", "run_fix"]


def _finite_inputs(batches: Sequence[Any]) -> None:
    """UsageError when a floating tensor of a batch (the caller's, a file's) holds NaN or inf."""
    import torch

    for t in (t for batch in batches for t in batch.tensors()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UsageError(f"the input batch holds NaN or inf (a tensor of shape {tuple(t.shape)}): fix audits and "
                             "trains on finite inputs only")


def _merged(changes: Sequence[ParamChange]) -> tuple[ParamChange, ...]:
    """One row per parameter over the rounds: its first old scale, its last new one, every check and rule."""
    from dataclasses import replace

    rows: dict[str, ParamChange] = {}
    for c in changes:
        prev = rows.get(c.param)
        rows[c.param] = c if prev is None else replace(
            prev, new_std=c.new_std, answers=tuple(dict.fromkeys((*prev.answers, *c.answers))),
            rule=prev.rule if c.rule == prev.rule else f"{prev.rule}; then {c.rule}")
    return tuple(rows.values())


def run_fix(model: nn.Module, config: FixConfig, example_input: Any = None, *, inplace: bool = False,
            example_kwargs: Mapping[str, Any] | None = None, command: str | None = None) -> FixResult:
    """Audit ``model``, repair it as ``config`` says, audit the repaired model, verify by training (see
    :func:`fix`); ``command`` is recorded in the report."""
    from torch import nn

    from ..audit import run_audit
    from ..audit.inputs import make_inputs
    from ..experiment import environment, resolve_device
    from ..results import FixResult

    if not isinstance(model, nn.Module):
        raise UsageError(f"fix needs an nn.Module, not {type(model).__name__}")
    started, start = datetime.now(UTC), time.perf_counter()
    batches, _ = make_inputs(model, config.audit, example_input, example_kwargs)
    _finite_inputs(batches)
    before = run_audit(model, config.audit, example_input, example_kwargs=example_kwargs)
    original: nn.Module | None = None  # the model as given, for the verification: the user's own unless inplace
    repaired = model
    if not before.passed:
        try:
            copied = copy.deepcopy(model)
        except Exception as exc:
            raise UsageError(f"the model cannot be copied ({type(exc).__name__}: {exc}), which fix needs to "
                             "keep the original for the comparison") from None
        original, repaired = (copied, model) if inplace else (model, copied)
    changes: list[ParamChange] = []
    unconverged: tuple[str, ...] = ()
    unrepaired: dict[str, str] = {}
    after, rounds = before, 0
    if original is not None:
        if config.method == "lsuv":
            after, rounds, unconverged = _lsuv(repaired, config, before, batches, example_input, example_kwargs,
                                               changes)
        else:
            after, rounds = _theory(repaired, config, before, example_input, example_kwargs, changes, unrepaired)
    verification = None
    if original is not None and changes and config.verify_steps > 0:
        from .verify import verify

        verification = verify(original, repaired, config, batches, resolve_device(config.audit.device))
    return FixResult(config=config, target=config.audit.target, method=config.method, model=repaired, before=before,
                     after=after, changes=_merged(changes), rounds=rounds, started=started,
                     seconds=time.perf_counter() - start, command=command or _api_command(config),
                     unconverged=unconverged,
                     unrepaired=tuple(f"{k}: {v}" for k, v in unrepaired.items()),
                     verification=verification, environment=environment(resolve_device(config.audit.device)))


def _theory(repaired: nn.Module, config: FixConfig, before: AuditResult, example_input: Any,
            example_kwargs: Mapping[str, Any] | None, changes: list[ParamChange],
            unrepaired: dict[str, str]) -> tuple[AuditResult, int]:
    """Rounds of :func:`~.theory.theory_round` and a new audit, until the audit passes, a round changes nothing
    or ``config.rounds`` rounds were taken."""
    from ..audit import run_audit
    from .theory import Memo, theory_round

    current, rounds = before, 0
    memo: Memo = {}
    while rounds < config.rounds and not current.passed:
        step = theory_round(repaired, current.runs[0], seed=config.audit.seed + rounds, memo=memo)
        unrepaired.update(step.unrepaired)
        if not step.changes:
            break
        changes += step.changes
        rounds += 1
        current = run_audit(repaired, config.audit, example_input, example_kwargs=example_kwargs)
    return current, rounds


def _lsuv(repaired: nn.Module, config: FixConfig, before: AuditResult, batches: Sequence[Any], example_input: Any,
          example_kwargs: Mapping[str, Any] | None, changes: list[ParamChange]
          ) -> tuple[AuditResult, int, tuple[str, ...]]:
    """One pass of LSUV over every weight layer in execution order, then the audit."""
    from ..audit import run_audit
    from .lsuv import lsuv_repair

    structure = before.runs[0].structure
    if structure is None:
        raise UsageError("LSUV needs the model's structure (its layers in execution order), which discovery could "
                         "not see; use --method theory")
    failing = tuple(dict.fromkeys(v.check for v in before.runs[0].verdicts if v.status == "fail"))
    outcome = lsuv_repair(repaired, batches[0], structure, answers=failing, target_var=config.target_var,
                          tol=config.tol, max_iter=config.max_iter, orthogonal=config.orthogonal,
                          seed=config.audit.seed)
    changes += outcome.changes
    return run_audit(repaired, config.audit, example_input, example_kwargs=example_kwargs), 1, outcome.unconverged


def _api_command(cfg: FixConfig) -> str:
    shape = f", input_shape={cfg.audit.input_shape!r}" if cfg.audit.input_shape else ""
    return f"initdiag.fix({cfg.audit.target}{shape}, method={cfg.method!r})"


def fix(model: nn.Module, example_input: Any = None, *, method: str = FixConfig.method, inplace: bool = False,
        input_shape: Sequence[int] | None = AuditConfig.input_shape, batches: int = AuditConfig.batches,
        batch_size: int = AuditConfig.batch_size, inputs: str | Path = AuditConfig.inputs,
        input_dtype: str = AuditConfig.input_dtype, vocab: int | None = AuditConfig.vocab,
        loss: str = AuditConfig.loss, seed: int = AuditConfig.seed, device: str = AuditConfig.device,
        data_dir: str | Path | None = AuditConfig.data_dir, rounds: int = FixConfig.rounds,
        tol: float = FixConfig.tol, target_var: float = FixConfig.target_var, max_iter: int = FixConfig.max_iter,
        orthogonal: bool = FixConfig.orthogonal, verify_steps: int = FixConfig.verify_steps,
        verify_lr: float = FixConfig.verify_lr, example_kwargs: Mapping[str, Any] | None = None) -> FixResult:
    """Audit ``model``, repair what fails, audit the repaired model and train both a few steps.

    Args:
        model: any ``nn.Module``; left exactly as it was unless ``inplace=True`` (then it is the repaired model).
        example_input, example_kwargs, input_shape, batches, batch_size, inputs, input_dtype, vocab, loss, seed,
            device, data_dir: the audit's, as :func:`initdiag.audit` takes them.
        method: ``"theory"`` (the structure and the theory engine, no data beyond the audit's batches) or
            ``"lsuv"`` (every weight layer rescaled on a batch until its output variance is ``target_var``
            within ``tol``, at most ``max_iter`` times; ``orthogonal`` pre-initializes orthogonally).
        rounds: at most this many rounds of theory repair and audit.
        verify_steps, verify_lr: the original and the repaired model trained this many Adam steps (0: none).

    Returns a :class:`~initdiag.results.FixResult`: ``model`` (the repaired model: a copy unless ``inplace``),
    ``before``/``after`` (the audits), ``changes`` (one row per changed parameter: old and new std, the checks
    it answers, the rule), ``verification`` (both loss curves), ``passed`` and ``write(out_dir)``. A model that
    passes its audit is returned unchanged and ``changes`` is empty. Bad arguments raise
    :class:`~initdiag.errors.UsageError`; a model that fails on the input :class:`~initdiag.errors.ModelLoadError`.
    """
    from ..audit import split_shapes

    if method not in FIX_METHODS:
        raise UsageError(f"unknown method '{method}'; choose from {', '.join(FIX_METHODS)}")
    first, first_dtype, extra = split_shapes(input_shape, input_dtype)
    saved = isinstance(inputs, Path) or str(inputs).endswith((".pt", ".pth"))
    kind, file = ("file", Path(inputs)) if saved else (str(inputs), None)
    audit = AuditConfig(target=type(model).__name__, input_shape=first, extra_inputs=extra, inits=(KEEP,),
                        batches=batches, batch_size=batch_size, inputs=kind, inputs_file=file,
                        input_dtype=first_dtype, vocab=vocab, loss=loss, seed=seed, device=device,
                        data_dir=Path(data_dir) if data_dir is not None else None)
    config = FixConfig(audit=audit, method=method, rounds=rounds, tol=tol, target_var=target_var, max_iter=max_iter,
                       orthogonal=orthogonal, verify_steps=verify_steps, verify_lr=verify_lr)
    return run_fix(model, config, example_input, inplace=inplace, example_kwargs=example_kwargs)
