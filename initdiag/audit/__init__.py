"""``audit``: diagnose the initialization of any PyTorch model with a few batches, without training.

The same chain as ``initdiag report`` without the long training: a few batches of inputs go through a copy
of the model, forward and backward, under the same :class:`~initdiag.Recorder`; the same checks turn the
statistics into verdicts; the same report is written::

    result = initdiag.audit(model, input_shape=(3, 32, 32), inits=("keep", "he"))
    result.verdicts, result.frame, result.passed, result.recommendation
    result.write("reports/my-net", formats=("html", "json"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import AUDIT_INPUTS, AuditConfig, parse_audit_inits
from ..errors import UsageError
from ..lazy import lazy_getattr

if TYPE_CHECKING:
    from torch import nn

    from ..results import AuditInputs, AuditResult, AuditRun, LayerWeight, Recommendation
    from .inputs import make_inputs, working_copy
    from .run import pool_batches
    from .weights import looks_pytorch_default

__all__ = [
    "AuditInputs",
    "AuditResult",
    "AuditRun",
    "LayerWeight",
    "Recommendation",
    "audit",
    "looks_pytorch_default",
    "make_inputs",
    "pool_batches",
    "run_audit",
    "split_shapes",
    "working_copy",
]


_LAZY = {"AuditInputs": "..results", "AuditResult": "..results", "AuditRun": "..results",
         "LayerWeight": "..results", "Recommendation": "..results", "make_inputs": ".inputs",
         "working_copy": ".inputs", "pool_batches": ".run", "looks_pytorch_default": ".weights"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def run_audit(model: nn.Module, config: AuditConfig, example_input: Any = None,
              command: str | None = None, example_kwargs: Mapping[str, Any] | None = None) -> AuditResult:
    """Audit ``model`` as ``config`` says (see :func:`audit`); ``command`` is recorded in the report."""
    from .run import audit_record

    return audit_record(model, config, example_input, command, example_kwargs)


_Shape = tuple[int, ...]


def split_shapes(input_shape: Sequence[int] | Sequence[Sequence[int]] | None,
            input_dtype: str | Sequence[str]) -> tuple[_Shape | None, str, tuple[tuple[_Shape, str], ...]]:
    """``input_shape`` (one shape, or one per positional input) and ``input_dtype`` (one for all, or one per
    input) as the first input's shape and dtype and the further inputs'."""
    if input_shape is None:
        return None, input_dtype if isinstance(input_dtype, str) else str(next(iter(input_dtype), "float")), ()
    items = list(input_shape)
    shapes: list[_Shape] = ([tuple(int(d) for d in s) for s in items if isinstance(s, Sequence)]
                            if items and all(isinstance(s, Sequence) for s in items) else [tuple(items)])  # type: ignore[arg-type]
    dtypes = [input_dtype] * len(shapes) if isinstance(input_dtype, str) else [str(d) for d in input_dtype]
    if len(dtypes) != len(shapes):
        raise UsageError(f"give one input_dtype for all inputs or one per input_shape ({len(shapes)}), "
                         f"not {len(dtypes)}")
    return shapes[0], dtypes[0], tuple(zip(shapes[1:], dtypes[1:], strict=True))


def audit(model: nn.Module, example_input: Any = None, *,
          input_shape: Sequence[int] | Sequence[Sequence[int]] | None = AuditConfig.input_shape,
          inits: Sequence[str] = AuditConfig.inits, batches: int = AuditConfig.batches,
          batch_size: int = AuditConfig.batch_size, inputs: str | Path = AuditConfig.inputs,
          input_dtype: str | Sequence[str] = AuditConfig.input_dtype, vocab: int | None = AuditConfig.vocab,
          loss: str = AuditConfig.loss, dtype: str | None = AuditConfig.dtype, seed: int = AuditConfig.seed,
          device: str = AuditConfig.device,
          data_dir: str | Path | None = AuditConfig.data_dir,
          example_kwargs: Mapping[str, Any] | None = None) -> AuditResult:
    """Diagnose the initialization of ``model``: a few batches forward and backward, no training. Every
    keyword's default is :class:`~initdiag.config.AuditConfig`'s.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (parameters, buffers, train/eval mode,
            ``requires_grad``, hooks, the global RNG state).
        example_input: one batch instead of generated inputs: a tensor (batch dimension first), a tuple of the
            model's positional arguments (tensors, or tuples, lists and dicts of them: ``(tokens, (h0, c0))``),
            or a dict of keyword arguments. The first tensor's leading dimension is the batch.
        example_kwargs: keyword arguments of the model's forward for that batch (``{"attention_mask": m}``).
        input_shape: one sample's shape, without the batch dimension, for generated inputs; a list of shapes
            generates one positional input each (``[(3, 32, 32), (3, 32, 32)]`` for a siamese network).
        inits: ``"keep"`` (the model as it is) and/or initializers (``"he"``, ``"random:std=0.05"``, ...),
            each applied to a copy (every linear map the forward shows, for the fans it shows: convolutions,
            transposed ones, linear layers and weights used through ``torch.mm``/``matmul``/``F.linear``;
            what it cannot reach is named in ``run.kept``) and audited side by side.
        batches, batch_size: how many generated batches of how many samples.
        inputs: ``"normal"`` (standard normal; token ids with ``input_dtype="long"``), ``"mnist"``, or the
            path of a batch saved with ``torch.save`` (loaded with ``weights_only=True``: a tensor, a tuple of
            positional arguments, a dict of keyword arguments, or ``{"args": ..., "kwargs": ...}``).
        input_dtype: ``"float"`` or ``"long"``, for all inputs or one per ``input_shape``; float inputs take
            the model's own floating dtype (float64 for a ``.double()`` model).
        vocab: token ids are drawn from ``[0, vocab)`` (default: the first Embedding's size).
        loss: ``"auto"`` (cross-entropy against random labels for (batch, classes) outputs, else the mean
            of squared outputs), ``"ce"`` or ``"mse"``.
        dtype: the dtype the model will train in, ``"float16"`` or ``"bfloat16"``: the ``precision`` check
            then fails what would overflow in it (default: the model's own dtype).
        seed: seeds the inputs, the labels, the initializers and the forked global RNG (dropout). The model's
            own weights are drawn when you build it, before this call: for the same numbers on every run,
            seed first (``torch.manual_seed(0); model = Net()``), as ``initdiag audit`` does with ``--seed``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        data_dir: MNIST directory for ``inputs="mnist"``.

    Returns an :class:`AuditResult`: ``runs``, ``verdicts``, ``frame``, ``passed``, ``recommendation`` and
    ``write(out_dir)``. Bad arguments raise :class:`~initdiag.errors.UsageError`; a model that fails on the
    input raises :class:`~initdiag.errors.ModelLoadError` with the shape given and the model's error.
    """
    first, first_dtype, extra = split_shapes(input_shape, input_dtype)
    saved = isinstance(inputs, Path) or str(inputs).endswith((".pt", ".pth")) or Path(str(inputs)).is_file()
    kind, file = ("file", Path(inputs)) if saved and str(inputs) not in AUDIT_INPUTS else (str(inputs), None)
    config = AuditConfig(
        target=type(model).__name__, input_shape=first, extra_inputs=extra,
        inits=parse_audit_inits(inits) if isinstance(inits, str) else tuple(inits),
        batches=batches, batch_size=batch_size, inputs=kind, inputs_file=file, input_dtype=first_dtype, vocab=vocab,
        loss=loss, dtype=dtype, seed=seed, device=device, data_dir=Path(data_dir) if data_dir is not None else None,
    )
    return run_audit(model, config, example_input, example_kwargs=example_kwargs)
