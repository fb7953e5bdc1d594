"""What torch functions and modules mean for the structure: tables and small tests, no state.

Functions are classified by name (``func.__name__``, a property getter by its attribute's name, a
trailing ``_`` of in-place variants dropped), which covers ``F.relu``, ``torch.relu``, ``Tensor.relu``
and ``relu_`` alike; activations (functions and modules) are those of the registry,
:mod:`initdiag.structure.activations`. Anything not listed stops the dataflow searches (conservative: an
unknown op ends a chain as if it were a reduction).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..vocab import ActivationName
from .activations import (
    ActivationInfo,
    Params,
    _arg,
    activation_of_module,
    function_activations,
    named_activation,
)


def _words(text: str) -> list[str]:
    return text.split()


# node categories
LEAF, TRANSPARENT, ACT, NORM, WEIGHT, RESADD, PRODUCT, REDUCE, STOP, NONLIN, SUB, FACTORY, ADD, MUL, \
    LINMAP = range(15)

NORM_FUNCS = {"batch_norm": "batch", "layer_norm": "layer", "group_norm": "group", "instance_norm": "instance",
              "rms_norm": "rms", "local_response_norm": "other", "normalize": "other"}
WEIGHT_FUNCS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "addmm", "baddbmm", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "einsum",
                "embedding", "embedding_bag", "multi_head_attention_forward", "_grouped_mm", "grouped_mm"}
_TRANSPARENT = _words("""view reshape reshape_as view_as flatten unflatten permute transpose t T mT H mH data real
contiguous squeeze unsqueeze expand expand_as __getitem__ __setitem__ split split_with_sizes chunk unbind
tensor_split narrow select index_select gather take_along_dim movedim moveaxis swapaxes swapdims dropout
dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout max_pool1d max_pool2d max_pool3d
max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
adaptive_max_pool3d to type float double half bfloat16 clone detach cpu cuda cat concat concatenate stack hstack
vstack pad interpolate upsample pixel_shuffle pixel_unshuffle channel_shuffle roll flip repeat tile
repeat_interleave copy requires_grad masked_fill type_as as_strided neg __neg__ positive""")
_REDUCE = _words("""sum mean softmax log_softmax softmin var std var_mean std_mean norm vector_norm matrix_norm
amax amin max min logsumexp prod cumsum cumprod argmax argmin topk sort median mode all any count_nonzero""")
_PRODUCT = {"scaled_dot_product_attention", "glu", "bilinear", "cross", "outer", "kron", "dot", "vdot", "inner"}
_NONLIN = _words("""exp exp2 expm1 log log2 log10 log1p pow __pow__ __rpow__ sqrt rsqrt square abs sin cos erf erfc
reciprocal __rtruediv__ clamp clip clamp_min clamp_max sign logsigmoid tanhshrink softshrink hardshrink
threshold sinh cosh atan asin acos""")
_FACTORY = _words("""new_empty new_zeros new_ones new_full new_tensor new empty_like zeros_like ones_like full_like
rand_like randn_like randint_like""")
GATHER_FUNCS = frozenset({"__getitem__", "index_select", "gather", "take", "take_along_dim"})
"""Picking entries of the first argument by (possibly data-derived) indices: the values are the first's."""
SHAPE_FROM_SECOND = frozenset({"expand_as", "view_as", "reshape_as", "type_as"})
"""``a.f(b)`` takes only ``b``'s shape or dtype: ``a``'s values alone flow on (a bias expanded to the stream's
shape is no data)."""
ADD_FUNCS = {"add", "__add__", "__radd__", "__iadd__"}
SUB_FUNCS = {"sub", "subtract", "__sub__", "__rsub__", "__isub__"}
MUL_FUNCS = {"mul", "multiply", "__mul__", "__rmul__", "__imul__"}
DIV_FUNCS = {"div", "divide", "true_divide", "__truediv__", "__itruediv__", "__div__", "__idiv__"}
RSQRT_LIKE = {"rsqrt", "sqrt", "norm", "vector_norm", "std"}

_CATEGORY: dict[str, int] = {}
for _n in _TRANSPARENT:
    _CATEGORY[_n] = TRANSPARENT
for _n in _REDUCE:
    _CATEGORY[_n] = REDUCE
for _n in _PRODUCT:
    _CATEGORY[_n] = PRODUCT
for _n in _NONLIN:
    _CATEGORY[_n] = NONLIN
for _n in _FACTORY:
    _CATEGORY[_n] = FACTORY
for _names, _cat in ((ADD_FUNCS, ADD), (SUB_FUNCS, SUB), (MUL_FUNCS | DIV_FUNCS, MUL), (WEIGHT_FUNCS, LINMAP)):
    for _n in _names:
        _CATEGORY[_n] = _cat
for _n in NORM_FUNCS:
    _CATEGORY[_n] = NORM


def function_name(func: Any) -> str:
    """A torch function's name for the tables and for call sites: ``relu_`` -> ``relu``, a property
    getter (``Tensor.T``) -> the attribute's name."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if len(name) > 1 and name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


_IN_PLACE_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__iand__",
                               "__ior__"})


def writes_in_place(func: Any) -> bool:
    """Whether ``func`` writes into its first argument: an in-place variant (``copy_``, ``relu_``, ``add_``),
    an augmented assignment (``+=``) or ``x[i] = y``."""
    name = getattr(func, "__name__", None) or ""
    return (len(name) > 1 and name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_DUNDERS


_ACT_CALLS: dict[str, tuple[ActivationInfo, Any]] = {function_name(f): (info, f)
                                                     for f, info in function_activations().items()}
"""Activation function name -> its registry entry and a callable of that name (its parameter reader)."""
for _n in _ACT_CALLS:
    _CATEGORY[_n] = ACT


def category(name: str) -> int:
    """The node category of a function name (STOP when unknown)."""
    return _CATEGORY.get(name, STOP)


def route_kind(name: str) -> str:
    """How a data path through function ``name`` routes the gradient back: "max" (a max-pool: to each
    window's maximum), "avg" (an average pool: spread evenly), "cat" (a concatenation: each input's own
    slice), else ""."""
    if "max_pool" in name:
        return "max"
    if "avg_pool" in name:
        return "avg"
    return "cat" if name in ("cat", "concat", "concatenate", "stack", "hstack") else ""


def function_activation(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Params]:
    """``(activation, params)`` of a call of the activation function named ``name`` (a key of the registry's
    functions by :func:`function_name`), with torch's defaults for the parameters not given."""
    info, func = _ACT_CALLS[name]
    return str(info.name), info.call_params(func, args, kwargs)


def norm_function_info(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, tuple[int, ...]]:
    """``(affine, shape)`` of a functional normalization call: the weight's shape, else the normalized
    shape (layer/rms norm) or the channel count."""
    x = args[0] if args else kwargs.get("input")
    pos = {"batch_norm": 3, "instance_norm": 3, "layer_norm": 2, "group_norm": 2, "rms_norm": 2}.get(name)
    weight = _arg(args, kwargs, pos, "weight") if pos is not None else None
    if isinstance(weight, Tensor):
        return True, tuple(weight.shape)
    if name in ("layer_norm", "rms_norm"):
        shape = _arg(args, kwargs, 1, "normalized_shape", ())
        return False, (shape,) if isinstance(shape, int) else tuple(shape or ())
    if isinstance(x, Tensor) and x.dim() >= 2:
        return False, (int(x.shape[1]),)
    return False, ()


def norm_function_eps(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The ``eps`` a functional normalization adds to the variance it divides by (torch's defaults where not
    passed; ``rms_norm``'s default is its dtype's machine epsilon); None for the others."""
    pos = {"batch_norm": 7, "instance_norm": 7, "layer_norm": 4, "group_norm": 4, "rms_norm": 3}.get(name)
    if pos is None:
        return None
    eps = _arg(args, kwargs, pos, "eps")
    if eps is None and name == "rms_norm":
        x = args[0] if args else kwargs.get("input")
        return float(torch.finfo(x.dtype).eps) if isinstance(x, Tensor) and x.is_floating_point() else None
    return float(eps) if isinstance(eps, (int, float)) else 1e-5


def weight_candidates(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[Any, Any, int]]:
    """``(weight, data, weight_position)`` operand pairs of a linear map, most likely first.
    weight_position: 0 = W @ x (weight on the left), 1 = x @ W (or a conv/linear's weight argument)."""
    if name in ("linear", "embedding", "embedding_bag") or name.startswith("conv"):
        return [(_arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 0, "input"), 1)]
    if name == "multi_head_attention_forward":
        w = _arg(args, kwargs, 5, "in_proj_weight")
        if w is None:
            w = kwargs.get("q_proj_weight")
        return [(w, _arg(args, kwargs, 0, "query"), 1)]
    if name in ("addmm", "baddbmm"):
        a, b = _arg(args, kwargs, 1, "mat1" if name == "addmm" else "batch1"), \
            _arg(args, kwargs, 2, "mat2" if name == "addmm" else "batch2")
        return [(b, a, 1), (a, b, 0)]
    if name == "einsum":
        ops = list(args[1:]) if len(args) > 1 else []
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = list(ops[0])
        return [(w, next((o for o in ops if o is not w), None), i) for i, w in enumerate(ops)]
    a, b = (args[1], args[0]) if name == "__rmatmul__" else (_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1,
                                                                                                   "other"))
    return [(b, a, 1), (a, b, 0)]


def has_bias_arg(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """Whether the call adds a bias (None when the function has no bias argument)."""
    if name == "linear" or name.startswith("conv"):
        return isinstance(_arg(args, kwargs, 2, "bias"), Tensor)
    if name == "multi_head_attention_forward":
        return isinstance(_arg(args, kwargs, 6, "in_proj_bias"), Tensor)
    if name in ("addmm", "baddbmm"):
        return isinstance(_arg(args, kwargs, 0, "input"), Tensor)
    return None


def _einsum_fan_in(eq: str, index: int, shape: tuple[int, ...]) -> float:
    eq = eq.replace(" ", "")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if not _:
        letters = [c for c in lhs if c.isalpha()]
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    term = terms[index] if index < len(terms) else ""
    if "..." in term:  # sizes of the named dims only: strip the ellipsis dims from the shape
        head, tail = term.split("...")
        dims = list(zip(head, shape[:len(head)], strict=False)) + list(zip(tail, shape[len(shape) - len(tail):],
                                                                            strict=False))
    else:
        dims = list(zip(term, shape, strict=False))
    return float(math.prod(size for c, size in dims if c not in out))


def fans(name: str, w_shape: tuple[int, ...], pos: int, in_numel: int, out_numel: int,
         args: tuple[Any, ...], index: int) -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a linear map from the shapes seen (see :class:`WeightLayer`)."""
    if name in ("embedding", "embedding_bag"):
        return 1.0, float(w_shape[-1])
    if name == "multi_head_attention_forward":
        return float(w_shape[1]), float(w_shape[0])
    if name.startswith("conv_transpose"):
        fan_out = float(math.prod(w_shape[1:]))
        return fan_out * in_numel / out_numel if out_numel else fan_out, fan_out
    if name.startswith("conv"):
        fan_in = float(math.prod(w_shape[1:]))
    elif name == "linear":
        fan_in = float(w_shape[-1])
    elif name == "einsum":
        fan_in = _einsum_fan_in(str(args[0]), index, w_shape)
    else:  # matrix products: x @ W sums over W's rows, W @ x over its columns
        fan_in = float(w_shape[-2] if pos == 1 and len(w_shape) >= 2 else w_shape[-1])
    return fan_in, fan_in * out_numel / in_numel if in_numel else fan_in


def constant_over_batch(t: Tensor, batch: int | None, is_data: bool) -> bool:
    """Whether ``t`` is the same for every sample: a batch dim of 1 (broadcast), or all rows along dim 0
    equal (first and last row compared first, then all; exact). Without a usable batch dim (scalar,
    batch of one, a leading dim that is not the batch size) it is ``not is_data``: whether ``t`` does not
    derive from the model's inputs."""
    if t.dim() == 0 or not batch:
        return not is_data
    if t.shape[0] == 1 and batch > 1:
        return True
    if t.shape[0] != batch or batch < 2:
        return not is_data
    with torch.no_grad():
        first = t[0]
        return bool(torch.equal(t[-1], first) and bool((t == first).all()))


# -- modules ----------------------------------------------------------------------------------------------------
_NORM_TYPES: tuple[tuple[type, str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "batch"), (nn.LayerNorm, "layer"), (nn.GroupNorm, "group"),
    (nn.modules.instancenorm._InstanceNorm, "instance"), (nn.RMSNorm, "rms"), (nn.LocalResponseNorm, "other"))

# module roles
OTHER, ACT_MODULE, NAMED_ACT, CANDIDATE, NORM_MODULE, SKIP = range(6)


def norm_kind(module: nn.Module) -> str | None:
    """The kind of a torch normalization module (subclasses included), else None."""
    for cls, kind in _NORM_TYPES:
        if isinstance(module, cls):
            return kind
    return None


def module_role(module: nn.Module) -> int:
    """How a module's calls are read: a known activation class, an activation by its class name
    (parameter-free library classes such as transformers' ``NewGELUActivation``), a candidate for the
    numeric elementwise test (parameter- and buffer-free leaf modules outside ``torch.nn``), a torch
    normalization, dropout, drop path (timm's ``DropPath``, torchvision's ``StochasticDepth``) and identity
    (SKIP), or OTHER."""
    if norm_kind(module) is not None:
        return NORM_MODULE
    cls = type(module)
    lowered = cls.__name__.lower()
    if isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd)) or "drop" in lowered or \
            "stochasticdepth" in lowered:  # drop path: a random per-sample mask, identity in eval mode
        return SKIP
    if activation_of_module(module) is not None:
        return ACT_MODULE
    leaf = (next(module.parameters(), None) is None and next(module.buffers(), None) is None
            and next(module.children(), None) is None)
    if not leaf or cls.__module__.startswith("torch.nn"):
        return OTHER
    return NAMED_ACT if named_activation(cls.__name__) is not None else CANDIDATE


def module_activation(module: nn.Module) -> tuple[str, Params]:
    """``(activation, params)`` of an activation module of role ACT_MODULE or NAMED_ACT (``"module"`` if neither
    its type nor its class name is registered)."""
    info, key = activation_of_module(module), ""
    if info is None:
        named = named_activation(type(module).__name__)
        if named is None:
            return str(ActivationName.MODULE), ()
        info, key = named
    return str(info.name), info.module_params(module, key)


def elementwise_test(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, x0: Tensor,
                     y: Tensor) -> str:
    """Whether ``module`` acts elementwise, tested on its own first input ``x0`` (a clone taken before
    the call) and output ``y``: its ``forward`` applied to a shuffled ``x0`` must give the shuffled ``y``.
    Returns "identity" (``y`` equals ``x0``), "elementwise", or "no". The extra call runs under no_grad
    with the RNG state forked and a local generator for the shuffle, so nothing the model sees changes;
    it can be wrong for modules with hidden Python state or an elementwise function of the input's
    position (e.g. a fixed mask), and costs one extra call of the module (first call only)."""
    if y.shape != x0.shape or x0.numel() < 2:
        return "no"
    try:
        with torch.no_grad():
            if torch.equal(y, x0):
                return "identity"
            devices = [x0.device.index or 0] if x0.device.type not in ("cpu", "meta") else []
            with torch.random.fork_rng(devices=devices, device_type=x0.device.type if devices else "cuda"):
                gen = torch.Generator(device=x0.device)
                gen.manual_seed(0)
                perm = torch.randperm(x0.numel(), generator=gen, device=x0.device)
                call_args = list(args)
                call_args[pos] = x0.reshape(-1)[perm].reshape(x0.shape)
                ys = module.forward(*call_args, **kwargs)
            if not isinstance(ys, Tensor) or ys.shape != y.shape:
                return "no"
            want = y.reshape(-1)[perm].to(ys.dtype)
            tol = 1e-5 if ys.dtype == torch.float64 else 1e-3 if ys.dtype in (torch.float16, torch.bfloat16) else 1e-4
            ok = torch.allclose(ys.reshape(-1), want, rtol=tol, atol=tol * float(want.abs().mean()) + 1e-7,
                                equal_nan=True)
        return "elementwise" if ok else "no"
    except Exception:
        return "no"


def norm_shape(module: nn.Module) -> tuple[int, ...]:
    """A normalization module's affine parameter's shape, else the normalized shape it declares."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return tuple(weight.shape)
    ns = getattr(module, "normalized_shape", None) or getattr(module, "num_features", None) \
        or getattr(module, "num_channels", None) or ()
    return (ns,) if isinstance(ns, int) else tuple(ns)
