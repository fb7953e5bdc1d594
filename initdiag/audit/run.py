"""Running an audit: each initialization on a copy of the model, a few batches forward and backward under the
recorder, the same checks as ``report``, and the recommendation drawn from the runs.

The user's model is never changed: ``keep`` is audited on the model itself, with no copy of its parameters
(what the audit touches, buffers, gradients, ``requires_grad`` and modes, restored in ``finally``), each
initializer on ``copy.deepcopy(model)``, one at a time, freed before the next (or, when the model cannot be
deep-copied, on the model itself, restored bit for bit), in train mode, under a forked and seeded global RNG.
No optimizer step is taken, so every batch sees the same weights: the checks read each statistic averaged over
the batches (:func:`pool_batches`).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..checks import RunEvidence, analyze
from ..config import AuditConfig
from ..errors import ModelLoadError, UsageError
from ..experiment import environment, resolve_device
from ..initializers import InitSpec, Reinit, Target, initialize
from ..recording import (
    Recorder,
    Weights,
    input_groups,
    norm_gains,
    snapshot_grads,
    snapshot_weights,
    transposed_weights,
    weight_moments,
    zero_parameters,
)
from ..recording.extras import Extras, OutputStats, SiteExtras, output_stats
from ..recording.gates import GateStats, capture_recurrent_inputs, gate_stats
from ..recording.lookahead import later_learners, zero_shadow
from ..recording.tensor_stats import moments_once
from ..results import AuditResult, AuditRun
from ..series import FRAME_COLUMNS
from ..structure import Structure, discover
from ..structure.layers import LayerInfo, weight_layers
from ..vocab import Role
from .advice import recommend
from .inputs import Inputs, first_embedding, make_inputs, working_copy
from .weights import init_targets, layer_weights, looks_pytorch_default, weights_digest

__all__ = ["audit_loss", "audit_record", "pool_batches", "seed_global_rngs"]


def _floating(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() and output.numel() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _floating(item)]
    return []


def audit_loss(output: Any, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy against random labels (classes on dim 1) for (batch, classes) outputs under "auto", or
    under "ce"; otherwise the sum over the output's floating-point tensors of their mean squared value."""
    tensors = _floating(output)
    if not tensors:
        raise ModelLoadError(f"the model returned a {type(output).__name__} without a floating-point tensor to "
                             "take a loss of")
    first = tensors[0]
    logits = isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 2
    if mode == "ce" or (mode == "auto" and logits):
        if first.dim() < 2 or first.shape[1] < 2:
            raise UsageError(f"--loss ce needs (batch, classes, ...) outputs; the model returned shape "
                             f"{tuple(first.shape)}")
        labels = torch.randint(0, first.shape[1], (first.shape[0], *first.shape[2:]), generator=gen)
        return F.cross_entropy(first.float(), labels.to(first.device))
    return torch.stack([t.float().square().mean() for t in tensors]).sum()


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _rejected(model: nn.Module, args: Inputs, cfg: AuditConfig, exc: Exception) -> ModelLoadError:
    shapes = args.shapes()
    given = (f" (batch {cfg.batch_size} x input shape {','.join(map(str, cfg.input_shape))})"
             if cfg.input_shape else "")
    hint = ""
    if args.first.is_floating_point() and first_embedding(model) is not None:
        hint = "; the model has an nn.Embedding: for token ids use --input-dtype long"
    elif isinstance(exc, TypeError) and "positional argument" in str(exc):
        hint = ("; its forward takes other arguments: repeat --input-shape for each (with --input-dtype each), "
                "or pass one batch saved with torch.save as --inputs FILE.pt (initdiag.audit(model, (x, (h0, "
                "c0))) from Python)")
    return ModelLoadError(f"the model rejected an input of shape {shapes}{given}: {_first_line(exc)}{hint}")


@dataclass
class _Recorded:
    """What the batches showed: the series, the layers, each batch's loss, and the first batch's look-ahead
    (each weight's gradient, the zero parameters and whether they learn)."""

    series: pd.DataFrame
    layers: tuple[LayerInfo, ...]
    losses: np.ndarray
    grads: Weights
    zero_params: dict[str, bool]
    zero_steps: dict[str, int]
    gates: tuple[GateStats, ...]
    zero_shadow: dict[str, tuple[str, ...]] = field(default_factory=dict)
    extras: dict[str, SiteExtras] = field(default_factory=dict)
    output: OutputStats | None = None


def _args(batch: Inputs, device: torch.device) -> Inputs:
    """A copy of each input, never the caller's tensor: a leaf that does not require grad, as data does (a
    forward may set ``requires_grad`` on its input or a view of it, which torch allows on leaves only)."""
    return batch.map(lambda a: a.detach().to(device).clone() if a.is_floating_point() else a.to(device))


def _record(work: nn.Module, label: str, batches: Sequence[Inputs], cfg: AuditConfig, device: torch.device,
            structure: Structure | None, transposed: set[str]) -> _Recorded:
    """Each batch forward and backward under the Recorder (step = batch); labels from a seeded generator."""
    label_seed = cfg.seed + 1  # the random labels of the loss; the look-ahead draws the first batch's again
    gen = torch.Generator().manual_seed(label_seed)
    recorder = Recorder(work, every=1, run=label, initializer=label, seed=cfg.seed, structure=structure,
                        updates=False)
    losses: list[float] = []
    grads: Weights = {}
    zero: dict[str, bool] = {}
    later: dict[str, int] = {}  # the zeros that learn from a later step (the look-ahead), and their gradients
    later_grads: Weights = {}
    names: set[str] = set()
    first: Inputs = batches[0]
    gates: tuple[GateStats, ...] = ()
    extras = Extras(work, structure) if structure is not None else None
    sites: dict[str, SiteExtras] = {}
    out_stats: OutputStats | None = None
    with recorder, torch.enable_grad():
        for i, batch in enumerate(batches):
            args = _args(batch, device)
            with extras if extras is not None and i == 0 else nullcontext():
                try:
                    with capture_recurrent_inputs(work, enabled=i == 0) as recurrent:
                        output = args(work)
                except Exception as exc:
                    raise _rejected(work, args, cfg, exc) from exc
                if i == 0:
                    gates = tuple(g for name, inputs in recurrent.items()
                                  for g in gate_stats(name, work.get_submodule(name), inputs))  # type: ignore[arg-type]
                    floating = _floating(output)
                    out_stats = output_stats(floating[0], extras, 1 if cfg.loss == "ce" else None) if floating else None
                loss = audit_loss(output, cfg.loss, gen)
                losses.append(float(loss.detach()))
                del output
                if loss.requires_grad:
                    try:
                        loss.backward()
                    except Exception as exc:
                        raise ModelLoadError(f"the backward pass through the model failed: {_first_line(exc)}") from exc
            if i == 0:
                names = {la.module_name for la in recorder.layers() if la.role == Role.WEIGHT}
                zero, first = zero_parameters(work), args
                sites = extras.result() if extras is not None else {}
            if i == len(batches) - 1:  # the last batch's: no later forward holds activations beside these views
                grads = snapshot_grads(work, names, transposed, copy=False)
            if i == 0 and not all(zero.values()):
                with recorder.paused():  # before a later batch's gradient views are held: no rows, no steps
                    loss_of = functools.partial(_first_loss, args, cfg.loss, label_seed)
                    later, later_grads = later_learners(work, loss_of, zero, names, transposed, first_grads=True)
            work.zero_grad(set_to_none=True)
    steps = {name: 1 for name, learns in zero.items() if learns}
    zero.update(dict.fromkeys(later, True))
    steps.update(later)
    grads = {**grads, **later_grads}
    params = dict(work.named_parameters())
    near = [p for p, learns in zero.items() if learns and p in params and bool(params[p].detach().any())]
    size = int(first.first.shape[0]) if first.first.dim() else 0
    shadow = dict.fromkeys(zero_shadow(work, first, size, near, names), tuple(near)) if near else {}
    return _Recorded(recorder.frame(), tuple(recorder.layers()), np.asarray(losses, dtype=np.float64), grads, zero,
                     steps, gates, shadow, sites, out_stats)


def _first_loss(batch: Inputs, mode: str, label_seed: int, model: nn.Module) -> torch.Tensor:
    """The first batch's loss through ``model``, its random labels drawn again (the look-ahead's steps)."""
    return audit_loss(batch(model), mode, torch.Generator().manual_seed(label_seed))


DISCOVERY_ROWS = 2
"""Samples of a generated batch (normal or MNIST images, token ids) that structure discovery runs on. The
structure (layers, fans, activations, norms, blocks, shapes per sample) does not depend on the batch size,
and two rows still tell a constant input (equal rows) from data, at a fraction of a whole batch's forward;
when the two rows are equal (token ids can be, by chance, for a small vocabulary and length) the whole batch
goes through, so a batch is seen as constant only when it is. A caller's example goes through whole."""


def _structure(work: nn.Module, batch: Inputs, device: torch.device, rows: int | None) -> Structure | None:
    """The model's structure from one forward of the first batch (no grad; buffers and RNG as before), on its
    first ``rows`` samples when given and not all equal (the whole batch if that forward fails)."""
    if rows is not None and all(a.dim() >= 1 and len(a) > rows for a in batch.tensors()):
        part = batch.map(lambda a: a[:rows])
        if any(not bool((a[1:] == a[:1]).all()) for a in part.tensors()):
            found = _structure(work, part, device, None)
            if found is not None:
                return found
    try:
        args = _args(batch, device)
        return discover(work, *args.args, **args.kwargs)
    except Exception:  # the recorder's pass reports a model that rejects the input; no structure otherwise
        return None


def pool_batches(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, kind, stat): the value averaged over the batches (steps), at step 0.

    The weights do not change between batches (no optimizer step), so the per-batch values estimate the
    same quantity and their mean is the better estimate; ``dead_frac`` takes the minimum instead (a unit
    dead for every input is dead in every batch). A NaN in any batch stays NaN.
    """
    if frame.empty:
        return frame
    keys = ["layer", "depth", "module", "kind", "stat"]
    groups = frame.groupby(keys, observed=True, sort=False)["value"]
    pooled = groups.mean().reset_index()
    low = groups.min().to_numpy()
    has_nan = frame["value"].isna().groupby([frame[k] for k in keys], observed=True, sort=False).any().to_numpy()
    values = pooled["value"].to_numpy(np.float64).copy()
    dead = (pooled["stat"].astype(str) == "dead_frac").to_numpy()
    values[dead] = low[dead]
    values[has_nan] = np.nan
    first = frame.iloc[0]
    n = len(pooled)
    return pd.DataFrame({
        "run": pd.Categorical([first["run"]] * n), "initializer": pd.Categorical([first["initializer"]] * n),
        "seed": np.full(n, int(first["seed"]), np.int64), "epoch": np.zeros(n, np.int64),
        "step": np.zeros(n, np.int64), "phase": pd.Categorical(["train"] * n),
        "layer": pd.Categorical(pooled["layer"].astype(str), categories=list(frame["layer"].cat.categories)),
        "depth": pooled["depth"].to_numpy(np.int64), "module": pd.Categorical(pooled["module"].astype(str)),
        "kind": pd.Categorical(pooled["kind"].astype(str)), "stat": pd.Categorical(pooled["stat"].astype(str)),
        "value": values,
    }, columns=list(FRAME_COLUMNS))


def seed_global_rngs(seed: int) -> None:
    """Seed the global random generators a model's constructor may draw from: Python's ``random``, NumPy's
    legacy global generator and torch's CPU generator (not a CUDA one: seeding it would initialize CUDA)."""
    _seed_python_and_numpy(seed)
    torch.default_generator.manual_seed(seed)


def _seed_python_and_numpy(seed: int) -> None:
    """Python's ``random`` and NumPy's legacy global generator, seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's ``random`` and NumPy's legacy global generator seeded with ``seed`` inside the block and set back
    to their states after it: a forward that draws from them (wav2vec2-style SpecAugment time masks draw from
    NumPy's) gives the same audit every time, and the caller's random streams are as they were."""
    state, np_state = random.getstate(), np.random.get_state()
    _seed_python_and_numpy(seed)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def _half_dtype(model: nn.Module) -> str | None:
    """"float16" or "bfloat16" when the model's first floating parameter is, else None."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return str(p.dtype).removeprefix("torch.") if p is not None and p.dtype in (torch.float16, torch.bfloat16) else None


def _looks_default(model: nn.Module) -> bool:
    """Whether every Conv/Linear layer looks default-initialized."""
    layers = list(weight_layers(model))
    return bool(layers) and all(looks_pytorch_default(m) for _, m in layers)


def _audit_one(model: nn.Module, label: str, spec: InitSpec | None, cfg: AuditConfig, batches: Sequence[Inputs],
               device: torch.device, discovery_rows: int | None, targets: tuple[Target, ...] | None
               ) -> tuple[AuditRun, tuple[Target, ...]]:
    """One audited initialization, and what initializers re-initialize (:func:`init_targets`): ``targets`` when
    given, else from the structure of the model as given (which layers are linear maps, and their fans, do not
    depend on the weights' values): discovered before the initializer is applied, or this run's own for
    ``keep``. One discovery per run, and one more for the audit when its first run applies an initializer."""
    start = time.perf_counter()
    cuda = [device.index] if device.type == "cuda" and device.index is not None else []
    with torch.random.fork_rng(devices=cuda), seeded_global_rngs(cfg.seed), \
            working_copy(model, device, keep=spec is None) as (work, before):
        torch.default_generator.manual_seed(cfg.seed)  # not torch.manual_seed: it would seed every GPU
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(cfg.seed)
        if targets is None and spec is not None:
            targets = init_targets(work, _structure(work, batches[0], device, discovery_rows))
        reinit = initialize(work, spec, cfg.seed, targets or ()) if spec is not None else Reinit({}, ())
        structure = _structure(work, batches[0], device, discovery_rows)
        if targets is None:
            targets = init_targets(work, structure)
        transposed = transposed_weights(structure)
        # the audit writes no weight but through autograd's in-place operations (look-ahead steps, restored),
        # which move the version counters: one pass over each weight serves every reader
        with moments_once():
            rec = _record(work, label, batches, cfg, device, structure, transposed)
            weights = layer_weights(work, rec.layers, structure, reinit.variances)
            # views of the weights, unless the model is audited in place and gets its values back on exit
            restored = work is model and not before
            snapshot = snapshot_weights(work, {la.module_name for la in rec.layers if la.role == Role.WEIGHT},
                                        transposed, copy=restored)
            # the Var(W) each initializer drew (its rule for the fans seen), the weights as they are for the rest
            weight_vars = {**weight_moments(work, structure), **reinit.variances}
            default = spec.name == "pytorch-default" if spec is not None else _looks_default(work)
        # kept in place: the digest taken before the audit (checked unchanged after it), not a third hash
        gains, groups, digest = norm_gains(work, structure), input_groups(work), before or weights_digest(work)
    frame = pool_batches(rec.series)
    evidence = RunEvidence(run=label, initializer=label, frame=frame, layers=rec.layers, weights_init=snapshot,
                           weights_final={}, losses=rec.losses, weight_vars=weight_vars, default_init=default,
                           structure=structure, grads_init=rec.grads, zero_params=rec.zero_params, norm_gains=gains,
                           input_groups=groups, zero_steps=rec.zero_steps, gates=rec.gates,
                           zero_shadow=rec.zero_shadow, extras=rec.extras, output=rec.output,
                           dtype=cfg.dtype or _half_dtype(model))
    return AuditRun(name=label, label=label, seed=cfg.seed, frame=frame, series=rec.series, layers=rec.layers,
                    analysis=analyze(evidence, seed=cfg.seed), weights=weights, losses=rec.losses,
                    seconds=time.perf_counter() - start, structure=structure, kept=reinit.kept,
                    digest=digest), targets


def audit_record(model: nn.Module, config: AuditConfig, example_input: Any = None,
                 command: str | None = None, example_kwargs: Mapping[str, Any] | None = None) -> AuditResult:
    """Audit ``model`` as ``config`` says (see :func:`initdiag.audit`); ``command`` is recorded in the report."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"audit needs an nn.Module, not {type(model).__name__}")
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    started, start = datetime.now(UTC), time.perf_counter()
    batches, inputs = make_inputs(model, config, example_input, example_kwargs)
    rows = DISCOVERY_ROWS if inputs.kind in ("normal", "mnist", "tokens") else None
    audited: list[AuditRun] = []
    targets: tuple[Target, ...] | None = None
    for label, spec in zip(config.inits, config.specs, strict=True):
        run, targets = _audit_one(model, label, spec, config, batches, device, rows, targets)
        audited.append(run)
    runs = tuple(audited)
    advice = recommend(runs)
    return AuditResult(config=config, model=config.target, inputs=inputs, runs=runs, recommendation=advice,
                       started=started, seconds=time.perf_counter() - start,
                       command=command or _api_command(config), environment=environment(device))


def _api_command(cfg: AuditConfig) -> str:
    defaults = AuditConfig()
    given = [f"{k}={getattr(cfg, k)!r}" for k in ("input_shape", "inits", "batches", "batch_size", "inputs",
                                                  "input_dtype", "vocab", "loss", "seed", "device")
             if getattr(cfg, k) != getattr(defaults, k)]
    return f"initdiag.audit({', '.join([cfg.target, *given])})"
