"""What goes through the model in an audit, and the copy it goes through.

The batches (generated, MNIST, or the caller's example) and :func:`working_copy`, which keeps the caller's
model untouched.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import AuditConfig
from ..errors import UsageError
from ..modes import preserve_modes
from ..recording.moments import channel_moments
from ..results import AuditInputs

__all__ = ["AuditInputs", "Inputs", "first_embedding", "load_inputs", "make_inputs", "tensors_in", "working_copy"]


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value`` (a tensor, or tuples, lists and dicts of them at any depth), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def _map(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with ``fn`` applied to each tensor in it, its tuples (named ones too), lists and dicts kept."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_map(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, Mapping):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Inputs:
    """One batch: the model's positional and keyword arguments, each a tensor or a nested tuple, list or dict of
    tensors (an LSTM's ``(tokens, (h0, c0))``, a graph's ``(features, adjacency)``, ``input_ids=...``)."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> Any:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the batch, positional ones first."""
        return tensors_in(self.args) + tensors_in(dict(self.kwargs))

    @property
    def first(self) -> torch.Tensor:
        """The first tensor: the one whose leading dimension is the batch."""
        return self.tensors()[0]

    def map(self, fn: Callable[[torch.Tensor], Any]) -> Inputs:
        """The batch with ``fn`` applied to each tensor."""
        return Inputs(tuple(_map(a, fn) for a in self.args), {k: _map(v, fn) for k, v in self.kwargs.items()})

    def shapes(self) -> str:
        """Each tensor's shape, for messages: ``(16, 3, 32, 32), (16, 10)``."""
        return ", ".join(str(tuple(t.shape)) for t in self.tensors())


# -- inputs ------------------------------------------------------------------------------------------
def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def first_embedding(model: nn.Module) -> nn.Embedding | None:
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def _example(example: Any, kwargs: Mapping[str, Any] | None = None, what: str = "example_input") -> Inputs:
    """The caller's batch: a tensor (the one positional argument), a tuple or list (the positional arguments,
    nested ones kept), or a dict (keyword arguments); ``kwargs`` adds keyword arguments."""
    if isinstance(example, Mapping):
        batch = Inputs((), {**dict(example), **dict(kwargs or {})})
    elif isinstance(example, torch.Tensor):
        batch = Inputs((example,), dict(kwargs or {}))
    elif isinstance(example, (tuple, list)) or example is None:
        batch = Inputs(tuple(example or ()), dict(kwargs or {}))
    else:
        raise UsageError(f"{what} must be a tensor (one batch, batch dimension first), a tuple of the model's "
                         f"positional arguments (tensors, or tuples, lists and dicts of them) or a dict of keyword "
                         f"arguments, not {type(example).__name__}")
    tensors = batch.tensors()
    if not tensors:
        raise UsageError(f"{what} holds no tensor: give at least one batch of inputs (batch dimension first)")
    if tensors[0].dim() == 0 or len(tensors[0]) < 2:
        raise UsageError(f"{what} needs a batch of at least 2 in its first tensor (got shape "
                         f"{tuple(tensors[0].shape)}): variances are taken over the batch")
    return batch


def load_inputs(path: Path) -> Inputs:
    """The batch saved in ``path`` with ``torch.save``, loaded with ``weights_only=True`` (tensors and plain
    containers only: nothing in the file executes): a tensor, a tuple or list of positional arguments, a dict
    of keyword arguments, or ``{"args": (...), "kwargs": {...}}``."""
    if not path.is_file():
        raise UsageError(f"--inputs {path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UsageError(f"--inputs {path}: cannot load it as tensors (torch.load, weights_only=True): "
                         f"{first.strip()}") from None
    if isinstance(data, Mapping) and data and set(data) <= {"args", "kwargs"}:
        args, kwargs = data.get("args", ()), data.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise UsageError(f"--inputs {path}: its 'kwargs' must be a dict of keyword arguments")
        return _example(args if isinstance(args, (tuple, list)) else (args,), kwargs, f"--inputs {path}")
    return _example(data, None, f"--inputs {path}")


def _generated(model: nn.Module, cfg: AuditConfig, gen: torch.Generator) -> tuple[list[Inputs], AuditInputs]:
    """``cfg.batches`` batches of each input ``cfg.input_specs`` names: standard normal in the model's float
    dtype, or token ids uniform in ``[0, vocab)``."""
    n, size = cfg.batches, cfg.batch_size
    if cfg.input_shape is None:
        raise UsageError("give the input shape of one sample (--input-shape, e.g. 3,224,224), or an example input")
    specs = cfg.input_specs
    float_dtype = _float_dtype(model)
    vocab: int | None = None
    if any(dtype == "long" for _, dtype in specs):
        emb = first_embedding(model)
        vocab = cfg.vocab or (emb.num_embeddings if emb is not None else None)
        if vocab is None:
            raise UsageError("--input-dtype long needs --vocab N (the model has no nn.Embedding to take it from)")
    batches: list[Inputs] = []
    for _ in range(n):
        batches.append(Inputs(tuple(torch.randint(0, vocab or 1, (size, *shape), generator=gen) if dtype == "long"
                                    else torch.randn((size, *shape), generator=gen).to(float_dtype)
                                    for shape, dtype in specs)))
    names = [f"token ids uniform in [0, {vocab})" if dtype == "long" else "standard normal" for _, dtype in specs]
    dims = [" x ".join(map(str, (size, *shape))) for shape, _ in specs]
    batches_of = f"{n} batch{'es' if n != 1 else ''} of"
    described = (f"{names[0]}, {batches_of} {dims[0]}" if len(specs) == 1 else
                 f"{batches_of} {len(specs)} inputs: " + "; ".join(f"{a} {d}" for a, d in zip(names, dims,
                                                                                             strict=True)))
    kind = "tokens" if specs[0][1] == "long" else "normal"
    first = batches[0].first
    return batches, AuditInputs(kind, described, tuple(first.shape), str(first.dtype).removeprefix("torch."), n,
                                f"synthetic (torch.Generator, seed {cfg.seed})")


def make_inputs(model: nn.Module, cfg: AuditConfig, example: Any = None,
                example_kwargs: Mapping[str, Any] | None = None) -> tuple[list[Inputs], AuditInputs]:
    """The batches to push through the model (on the CPU), and their description.

    ``example`` (and ``example_kwargs``; :func:`_example`), or the file ``cfg.inputs_file``
    (:func:`load_inputs`), is used as the only batch. Otherwise ``cfg.batches`` batches of ``cfg.batch_size``:
    standard normal in the model's float dtype, token ids uniform in ``[0, vocab)`` (``input_dtype="long"``;
    ``vocab`` defaults to the first Embedding's size), one tensor per input ``cfg.input_specs`` names, or MNIST
    training images in a random order; all drawn from a ``torch.Generator`` seeded with ``cfg.seed``.
    """
    if example is not None or example_kwargs or cfg.inputs == "file":
        if cfg.inputs == "file" and cfg.inputs_file is not None:
            batch, source, kind = load_inputs(Path(cfg.inputs_file)), f"the file {cfg.inputs_file}", "file"
        else:
            batch, source, kind = _example(example, example_kwargs), "given by the caller", "example"
        first = batch.first
        n_in = len(batch.tensors())
        what = f"one batch of shape {tuple(first.shape)}" + (f" and {n_in - 1} more tensor(s)" if n_in > 1 else "")
        return [batch], AuditInputs(kind, f"the {'example input' if kind == 'example' else 'saved input'}, {what}",
                                    tuple(first.shape), str(first.dtype).removeprefix("torch."), 1, source)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.inputs != "mnist":
        return _generated(model, cfg, gen)
    n, size = cfg.batches, cfg.batch_size
    from ..data import load_mnist

    data = load_mnist(cfg.data_dir, "mnist")
    if n * size > len(data.train_x):
        raise UsageError(f"--batches {n} x --batch-size {size} is more than the {len(data.train_x):,} MNIST "
                         "training images")
    sample = cfg.input_shape or (1, 28, 28)
    order = torch.randperm(len(data.train_x), generator=gen)[: n * size]
    images = data.train_x[order].to(_float_dtype(model)).reshape(n, size, *sample)
    prov = data.provenance
    return ([Inputs((images[i],)) for i in range(n)],
            AuditInputs("mnist", f"MNIST training images ({prov.name}), {n} batches of {size} x "
                        f"{' x '.join(map(str, sample))}, pixels in [0, 1]", (size, *sample),
                        str(images.dtype).removeprefix("torch."), n, prov.source, dict(prov.files), prov.notice))


# -- the model, untouched ------------------------------------------------------------------------------
def _prepare(model: nn.Module) -> None:
    """Train mode; every floating-point parameter requires grad (dL/dy exists behind frozen layers), no grad."""
    model.train()
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
        p.grad = None


def _referenced(value: Any, depth: int = 0) -> Iterator[Any]:
    """What a callable kept as a module attribute holds on to: a closure's cells, a bound method's object, a
    ``functools.partial``'s function and arguments (a few levels deep)."""
    if depth > 3:
        return
    inner: list[Any] = []
    cells = getattr(value, "__closure__", None) or ()
    for cell in cells:
        try:
            inner.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    if hasattr(value, "__self__") and not isinstance(value, type):
        inner.append(value.__self__)
    if isinstance(value, functools.partial):
        inner += [value.func, *value.args, *value.keywords.values()]
    for item in inner:
        yield item
        if callable(item) and not isinstance(item, nn.Module):
            yield from _referenced(item, depth + 1)


def _reaches_original(work: nn.Module, model: nn.Module) -> bool:
    """Whether a callable stored on a module of the copy (``self.mlpf = lambda x: m.c_proj(m.c_fc(x))``, as
    minGPT does) still refers to a module or parameter of the original: ``copy.deepcopy`` copies functions by
    reference, so the copy's forward would run, and hook, the original's layers and give them gradients."""
    originals = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    for module in work.modules():
        for value in vars(module).values():
            if callable(value) and not isinstance(value, (nn.Module, type)) and any(
                    id(item) in originals for item in _referenced(value)):
                return True
    return False


@contextmanager
def working_copy(model: nn.Module, device: torch.device, keep: bool = False) -> Iterator[tuple[nn.Module, str]]:
    """The model to audit on ``device``, prepared (train mode, parameters requiring grad, no ``.grad``).

    ``keep`` (the model audited as it is, no initializer) on the model's own device: the model itself, with
    no copy of its parameters; what the audit touches is saved and restored in ``finally``: each buffer's values
    (BatchNorm's running statistics move in train mode), every parameter's ``.grad`` (the same tensor object)
    and ``requires_grad``, each module's train/eval mode. Parameters are not copied: the audit takes no step
    (what it changes itself, it restores). A parameter written during the audit (:func:`_mark` moved: its
    version counter, or its sum or sum of squares, for a write through ``.data``) has the parameters hashed
    again, and the SHA-256 before and after must agree: a forward that writes its own weights raises
    ``RuntimeError``. Otherwise a deep copy of ``model`` on ``device``; when
    ``copy.deepcopy`` fails, or the copy still calls the original's modules (:func:`_reaches_original`), the
    model itself (it must be on ``device``) with its parameter and buffer values restored too.

    Yields the model to audit and, for ``keep`` in place, the SHA-256 of its parameters taken before the
    audit (:func:`~.weights.weights_digest`: the weights audited, as the audit takes no step), else "".
    """
    tensors = [*model.parameters(), *model.buffers()]
    on_device = all(t.device == device for t in tensors)
    if keep and on_device:
        with _in_place(model, copy_parameters=False) as digest:
            yield model, digest
        return
    try:
        work: nn.Module | None = copy.deepcopy(model)
    except Exception:
        work = None
    if work is not None and _reaches_original(work, model):
        work = None  # the copy's forward would run the original's modules: audit the model itself, restored
    if work is not None:
        work.to(device)
        _prepare(work)
        yield work, ""
        return
    if not on_device:
        raise UsageError(f"the model cannot be copied (copy.deepcopy failed), so it is audited in place, which "
                         f"needs it on the audit's device {device}")
    with _in_place(model, copy_parameters=True):
        yield model, ""


def _mark(p: torch.Tensor) -> tuple[int, float, float]:
    """What moves when ``p`` is written: its version counter (every in-place write through autograd's view of
    it) and its float64 sum and sum of squares (a write through ``.data``, which has a counter of its own);
    one pass of the compiled kernel, far cheaper than a hash."""
    if not p.numel():
        return p._version, 0.0, 0.0
    total, squares, _, _ = channel_moments(p.detach().reshape(-1), -1)
    return p._version, float(total[0]), float(squares[0])


@contextmanager
def _in_place(model: nn.Module, copy_parameters: bool) -> Iterator[str]:
    """``model`` prepared for an audit and restored in ``finally`` (see :func:`working_copy`); yields the
    parameters' digest before the audit when it checks them after ("" when it copies and restores them)."""
    from .weights import weights_digest

    params = list(model.parameters())
    saved = [(t, t.detach().clone()) for t in (*(params if copy_parameters else ()), *model.buffers())]
    state = [(p, p.requires_grad, p.grad) for p in params]
    digest = "" if copy_parameters else weights_digest(model)
    marks = [_mark(p) for p in params] if digest else []
    with preserve_modes(model):
        try:
            _prepare(model)
            yield digest
        finally:
            with torch.no_grad():
                for t, v in saved:
                    t.copy_(v)
            for p, req, grad in state:
                p.requires_grad_(req)
                p.grad = grad
            written = bool(marks) and any(_mark(p) != m for p, m in zip(params, marks, strict=True))
            if written and weights_digest(model) != digest:
                raise RuntimeError("the model changed its own parameters during the audit's forward and backward, "
                                   "so they could not be restored without a copy; audit it with an initializer")
