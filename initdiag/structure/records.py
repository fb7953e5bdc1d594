"""The plain records of one watched forward: nodes, module calls, weight layers (no tensors).

A node is one torch function call that returned tensors (or a leaf: a root input, a parameter, a
constant), stored column-wise in :class:`Graph`; a :class:`Call` is one module call with the node range
``[start, end)`` that ran inside it. :mod:`~initdiag.structure.graph` fills them in during the forward,
:mod:`~initdiag.structure.analysis` reads them afterwards.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import functional as fn


class Call:
    """One module call: where it sits in the call tree and the node range [start, end) it ran."""

    __slots__ = ("act", "depth", "end", "fcount", "first_in_shape", "has_norm_op", "has_rsqrt", "in_node",
                 "in_nodes", "in_shape", "layer", "mid", "module_name", "module_type", "norm", "out_node",
                 "out_nodes", "out_shape", "parent", "site", "start", "x_ref")

    def __init__(self, mid: int, module_name: str, module_type: str, site: str, parent: int, depth: int) -> None:
        self.mid, self.module_name, self.module_type, self.site = mid, module_name, module_type, site
        self.parent, self.depth = parent, depth
        self.start = self.end = 0
        self.in_nodes: tuple[int, ...] = ()
        self.in_node: int | None = None
        self.in_shape: tuple[int, ...] | None = None
        self.first_in_shape: tuple[int, ...] | None = None
        self.out_node: int | None = None
        self.out_nodes: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] | None = None
        self.act: tuple[str, tuple[tuple[str, Any], ...]] | None = None
        self.norm: tuple[str, bool, tuple[int, ...]] | None = None
        self.layer: int | None = None
        self.fcount: dict[str, int] = {}
        self.has_norm_op = self.has_rsqrt = False
        self.x_ref: weakref.ref[Tensor] | None = None


class LayerRec:
    """A weight layer as seen at its first linear map (completed by the analysis)."""

    __slots__ = ("bias", "call", "constant_input", "fan_in", "fan_out", "node", "op", "param", "param_shape")

    def __init__(self, call: int, op: str, param: str, param_shape: tuple[int, ...], fan_in: float, fan_out: float,
                 bias: bool, constant_input: bool) -> None:
        self.call, self.op, self.param, self.param_shape = call, op, param, param_shape
        self.fan_in, self.fan_out, self.bias, self.constant_input = fan_in, fan_out, bias, constant_input
        self.node = -1


class Graph:
    """The recorded forward: parallel per-node lists, the calls and the weight layers."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.name: list[str] = []
        self.inputs: list[tuple[int, ...]] = []
        self.call: list[int] = []
        self.data: list[bool] = []
        self.pset: list[frozenset[int]] = []
        self.extra: dict[int, Any] = {}
        self.node_layer: dict[int, int] = {}
        self.calls: list[Call] = []
        self.layers: list[LayerRec] = []
        self.batch: int | None = None
        self.root_out: tuple[int, ...] = ()
        self.complete = False
        self.add_vars: dict[int, dict[int, float]] = {}
        """Residual add node -> operand node -> its variance (:mod:`~initdiag.structure.measure`)."""
        self.attention: list[Any] = []
        """The softmax attentions seen (:class:`~initdiag.structure.measure.AttentionSite`)."""
        self.norm_vars: dict[int, tuple[float, float]] = {}
        """Functional normalization node -> ``(Var(input), eps)``: the variance it divides by against its eps."""

    def add(self, kind: int, name: str, inputs: tuple[int, ...], call: int, data: bool, pset: frozenset[int]) -> int:
        self.kind.append(kind)
        self.name.append(name)
        self.inputs.append(inputs)
        self.call.append(call)
        self.data.append(data)
        self.pset.append(pset)
        return len(self.kind) - 1


def collect_tensors(obj: Any, out: list[Tensor], depth: int = 0) -> list[Tensor]:
    """Tensors in ``obj`` (nested tuples/lists/dicts, e.g. transformers' ModelOutput), in order."""
    if isinstance(obj, Tensor):
        out.append(obj)
    elif depth < 5:
        if isinstance(obj, (list, tuple)):
            for o in obj:
                collect_tensors(o, out, depth + 1)
        elif isinstance(obj, dict):
            for o in obj.values():
                collect_tensors(o, out, depth + 1)
    return out


class ModelInfo:
    """Per module (by ``id``), read once when the probe is entered: its name, role
    (:func:`~initdiag.structure.functional.module_role`), own parameters (>= 2 dims, by ``id``: attribute
    name and shape; a parametrized tensor's originals count as the module's, under the tensor's name),
    all own parameter ids, and parameter shapes by attribute."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.roles: dict[int, int] = {}
        self.own: dict[int, dict[int, tuple[str, tuple[int, ...]]]] = {}
        self.own_all: dict[int, frozenset[int]] = {}
        self.pshapes: dict[int, dict[str, tuple[int, ...]]] = {}
        self.params: set[int] = set()
        self.modules: dict[int, nn.Module] = {}
        self.paramz = {id(m) for m in model.modules() if isinstance(m, parametrize.ParametrizationList)}
        for m in model.modules():
            mid = id(m)
            self.modules[mid] = m
            self.roles[mid] = fn.module_role(m)
            own = self.own.setdefault(mid, {})
            mine = {id(p) for p in m._parameters.values() if p is not None}
            self.pshapes[mid] = {k: tuple(p.shape) for k, p in m._parameters.items() if p is not None}
            for k, p in m._parameters.items():
                if p is not None:
                    self.params.add(id(p))
                    if p.dim() >= 2:
                        own[id(p)] = (k, tuple(p.shape))
            plist = getattr(m, "parametrizations", None)
            if isinstance(plist, nn.ModuleDict):  # torch.nn.utils.parametrize
                for tname, sub in plist.items():
                    for p in sub.parameters():
                        mine.add(id(p))
                        if p.dim() >= 2:
                            own[id(p)] = (tname, tuple(p.shape))
            self.own_all[mid] = frozenset(mine)
