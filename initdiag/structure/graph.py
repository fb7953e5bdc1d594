"""Watching one forward: module hooks and a TorchFunctionMode record a dataflow graph as plain data.

Every torch function call that returns tensors during the root's first forward becomes a node: its name,
category (:mod:`~initdiag.structure.functional`), the nodes of its tensor inputs and the innermost module call
it ran in. A tensor's producer is looked up by ``id`` and checked with a weak reference (ids of freed tensors
are reused), so nothing is kept alive; an in-place op (``relu_``, ``+=``, ``x[i] = y``, ``buf[..].copy_(x)``)
becomes the new producer of the tensor and of the base of a written view (images copied into a zero buffer
stay data). Tensors first seen as inputs become leaves: the root's inputs (data), parameters, and constants
(buffers, anything else). A node is "data" when it descends from the root's inputs; for other nodes the set of
parameters they derive from is kept, which is how a weight standardized or parametrized before ``F.conv2d`` is
traced to its module's parameter. Nested torch calls are not seen again (``F.multi_head_attention_forward`` is
one node); hooks run unseen. Weight layers (:meth:`Tracker._linmap`): the first linear map (``linear``,
``conv*``, ``addmm``, ``matmul``, ``einsum``, ``embedding``, ``multi_head_attention_forward``, ...) in a
module call whose weight operand derives only from parameters/constants, one of them a >= 2-dim parameter of
that module. Where it can be wrong: recurrent layers (``_VF.lstm``) are not linear maps here; a module
applying two of its own weights counts once, with the first; ``nn.MultiheadAttention`` is one layer (its
in_proj, fan_out 3E); a weight computed outside the forward and stored as a plain tensor, and data made by
code the mode does not see (``torch.from_numpy(x.numpy())``), are constants. Constant inputs:
:meth:`Tracker._constant_input`. Values measured on the way (add operands, attention weights):
:mod:`~initdiag.structure.measure`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import functional as fn
from .measure import Measurer
from .records import Call, Graph, LayerRec, ModelInfo, collect_tensors

IDLE, RECORDING, DONE = range(3)
_EMPTY: frozenset[int] = frozenset()


class Tracker(TorchFunctionMode):
    """The mode and the hooks of one :class:`~initdiag.structure.discover.StructureProbe`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.graph = Graph()
        self.state, self.paused, self.hook_depth = IDLE, False, 0
        self.on_done: Any = None
        self._pre_args: list[tuple[int, ...] | None] = []
        self._post_call: list[int | None] = []
        self._prod: dict[int, tuple[int, weakref.ref[Tensor]]] = {}
        self._stack: list[int] = []
        self._silenced: set[int] = set()  # data nodes derived from a weight layer's output constant over the batch
        self._gathered: set[int] = set()  # data nodes holding a non-data tensor's values picked by data indices
        self._ncalls: dict[int, int] = {}
        self._finfo: dict[Any, tuple[str, int]] = {}
        self._probe: dict[int, tuple[Tensor, int]] = {}
        self._act_cache: dict[int, tuple[str, tuple[tuple[str, Any], ...]] | None] = {}
        self.measure = Measurer(self.graph)
        self.info = info = ModelInfo(model)
        self.names, self.roles, self.own, self.own_all, self.params = info.names, info.roles, info.own, \
            info.own_all, info.params

    # -- torch functions ------------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        live = self.state == RECORDING and not self.paused and not self.hook_depth
        pre = self.measure.before(func, args) if live else None
        out = func(*args, **kwargs)
        if not live:
            return out
        if isinstance(out, Tensor):
            self._op(func, args, kwargs, (out,), pre)
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            self._op(func, args, kwargs, tuple(t for t in out if isinstance(t, Tensor)), pre)
        elif out is None and args and isinstance(args[0], Tensor) and fn.writes_in_place(func):
            self._op(func, args, kwargs, (args[0],), pre)  # x[i] = y: x now holds y's values too
        return out

    def node_of(self, t: Tensor) -> int:
        """The node that produced ``t`` (a new leaf when unseen)."""
        e = self._prod.get(id(t))
        if e is not None and e[1]() is t:
            return e[0]
        g = self.graph
        pid = id(t)
        pset = frozenset((pid,)) if pid in self.params else _EMPTY
        n = g.add(fn.LEAF, "param" if pset else "const", (), self._stack[-1] if self._stack else -1, False, pset)
        self._prod[pid] = (n, weakref.ref(t))
        return n

    def _op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], outs: tuple[Tensor, ...],
            pre: Any = None) -> None:
        info = self._finfo.get(func)
        if info is None:
            info = self._finfo[func] = (name := fn.function_name(func), fn.category(name))
        name, cat = info
        g = self.graph
        ins: list[int] = []
        for a in args[:1] if name in fn.SHAPE_FROM_SECOND else args:
            if isinstance(a, Tensor):
                ins.append(self.node_of(a))
            elif type(a) in (list, tuple):
                ins.extend(self.node_of(t) for t in a if isinstance(t, Tensor))
        for v in kwargs.values():
            if isinstance(v, Tensor):
                ins.append(self.node_of(v))
        data = g.data
        dins = [i for i in ins if data[i]]
        is_data = bool(dins)
        layer = None
        if cat == fn.FACTORY:
            ins, is_data = [], False
        elif cat == fn.ADD:  # a parameter gathered by data indices (an expert's bias) is a bias, not a path
            cat = fn.RESADD if sum(i not in self._gathered for i in dins) >= 2 else fn.TRANSPARENT
            if cat == fn.TRANSPARENT and dins:
                self._bias_add(dins[0], ins)
        elif cat == fn.SUB:
            cat = fn.SUB if len(dins) >= 2 else fn.TRANSPARENT
        elif cat == fn.MUL:
            divisor = args[1] if len(args) > 1 and name in fn.DIV_FUNCS else None
            if len(dins) >= 2:
                cat = fn.PRODUCT
            elif isinstance(divisor, Tensor) and data[self.node_of(divisor)]:
                cat = fn.NONLIN
            else:
                cat = fn.TRANSPARENT
        elif cat == fn.LINMAP:
            cat, layer = self._linmap(name, args, kwargs, outs[0], len(dins))
        call = g.calls[self._stack[-1]]
        site = None
        if cat in (fn.ACT, fn.NORM, fn.NONLIN):
            k = call.fcount[name] = call.fcount.get(name, 0) + 1
            site = f"{call.site}:{name}" if k == 1 else f"{call.site}:{name}@{k}"
            if not is_data or (cat == fn.NORM and not (ins and data[ins[0]])):
                cat = fn.TRANSPARENT  # e.g. a weight standardized with F.batch_norm: no data normalized
        if name in fn.RSQRT_LIKE and is_data:
            call.has_rsqrt = True
        pset = _EMPTY
        if not is_data and ins:
            sets = [g.pset[i] for i in ins if g.pset[i]]
            pset = sets[0] if len(sets) == 1 else frozenset().union(*sets)
        n = g.add(cat, name, tuple(ins), self._stack[-1], is_data, pset)
        if is_data and (any(i in self._silenced for i in dins) or (layer is not None and not g.layers[layer]
                        .constant_input and fn.constant_over_batch(outs[0], g.batch, True))):
            self._silenced.add(n)
        if is_data and ((name in fn.GATHER_FUNCS and not data[ins[0]]) or (cat == fn.TRANSPARENT and dins and all(
                i in self._gathered for i in dins))):
            self._gathered.add(n)
        if cat == fn.ACT:
            g.extra[n] = (*fn.function_activation(name, args, kwargs), site)
        elif cat == fn.NORM:
            affine, shape = fn.norm_function_info(name, args, kwargs)
            g.extra[n] = (fn.NORM_FUNCS[name], affine, shape, site)
            call.has_norm_op = True
        elif cat == fn.NONLIN:
            g.extra[n] = site
        elif layer is not None:
            g.node_layer[n] = layer
            if g.layers[layer].node < 0:
                g.layers[layer].node = n
        self.measure.after(n, cat, name, call, func, args, kwargs, ins, outs[0], pre)
        prod = self._prod
        for t in outs:
            prod[id(t)] = (n, weakref.ref(t))
            if t._base is not None and fn.writes_in_place(func):  # a write into a view writes its base
                prod[id(t._base)] = (n, weakref.ref(t._base))

    def _linmap(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor,
                ndata: int) -> tuple[int, int | None]:
        """A linear map is a weight layer's when its weight operand derives from parameters only, one of
        them (>= 2 dims) of a module now running (the innermost such), and the other operand does not
        derive from that module's parameters too (then a weight is being computed, e.g. ``A @ B``); maps
        inside a parametrization (spectral norm's power iteration) are weight computations as well."""
        g = self.graph
        if self.info.paramz and any(g.calls[ci].mid in self.info.paramz for ci in self._stack):
            return fn.STOP, None
        for w, x, pos in fn.weight_candidates(name, args, kwargs):
            if not isinstance(w, Tensor) or w.dim() < 2:
                continue
            wn = self.node_of(w)
            if g.data[wn]:
                continue
            found = self._owner(w, g.pset[wn])
            if found is None:
                continue
            ci, attr, shape = found
            call = g.calls[ci]
            if isinstance(x, Tensor) and g.pset[self.node_of(x)] & self.own_all.get(call.mid, _EMPTY):
                return fn.STOP, None
            if call.layer is None:
                in_numel = x.numel() if isinstance(x, Tensor) else out.numel()
                fan_in, fan_out = fn.fans(name, tuple(w.shape), pos, in_numel, out.numel(), args, pos)
                bias = fn.has_bias_arg(name, args, kwargs)
                if bias is None:
                    bias = isinstance(getattr(self.info.modules[call.mid], "bias", None), Tensor)
                const = self._constant_input(call, x)
                call.layer = len(g.layers)
                g.layers.append(LayerRec(ci, name, attr, shape, fan_in, fan_out, bias, const))
            return fn.WEIGHT, call.layer
        return (fn.PRODUCT if ndata >= 2 else fn.STOP), None

    def _bias_add(self, x: int, ins: list[int]) -> None:
        """``y + b`` right after a weight layer's map, ``b`` its module's own parameter: the layer's bias."""
        g, call = self.graph, self.graph.calls[self._stack[-1]]
        own = self.own_all.get(call.mid, _EMPTY)
        if call.layer is not None and g.node_layer.get(x) == call.layer and any(
                i != x and g.pset[i] and g.pset[i] <= own for i in ins):
            g.layers[call.layer].bias = True

    def _owner(self, w: Tensor, pset: frozenset[int]) -> tuple[int, str, tuple[int, ...]] | None:
        """``(call, attribute, shape)`` of the innermost running module whose own parameter ``w`` derives
        from; or whose plain attribute ``w`` is, next to ``<name>_orig`` / ``<name>_v`` parameters (the
        hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` compute it in a pre-hook)."""
        g = self.graph
        for ci in reversed(self._stack):
            mid = g.calls[ci].mid
            own = self.own.get(mid)
            hits = [own[p] for p in pset if p in own] if own and pset else []
            if hits:
                attr, shape = max(hits, key=lambda h: math.prod(h[1]))
                return ci, attr, shape
            if not pset:
                module = self.info.modules[mid]
                for k, v in vars(module).items():
                    if v is w and (k + "_orig" in module._parameters or k + "_v" in module._parameters):
                        return ci, k, tuple(w.shape)
        return None

    def _constant_input(self, call: Call, x: Any) -> bool:
        """:func:`~initdiag.structure.functional.constant_over_batch` of the module call's first tensor
        (else the map's data operand): a batch dim of 1, or equal rows along dim 0 (exact; the batch size is
        the root's first tensor's dim 0). Decided from the values, wherever the input comes from (ids, a
        learned token sliced out of a data tensor, a LayerNorm over one feature), except downstream of a weight
        layer that made a varying input constant (that layer's finding). Batch of one: "not derived from data"."""
        t = call.x_ref() if call.x_ref is not None else None
        t = t if t is not None else x if isinstance(x, Tensor) else None
        e = self._prod.get(id(t)) if t is not None else None
        node = e[0] if e is not None and e[1]() is t else None
        if t is None or node in self._silenced:
            return False
        return fn.constant_over_batch(t, self.graph.batch, node is not None and bool(self.graph.data[node]))

    # -- module hooks: ours run first (prepend) and last on every module; other hooks' ops are not seen ------
    def pre_first(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.state == IDLE and module is self.model:
            self.state = RECORDING
            tensors = collect_tensors((args, kwargs), [])
            for t in tensors:
                self._prod[id(t)] = (self.graph.add(fn.LEAF, "input", (), -1, True, _EMPTY), weakref.ref(t))
            if tensors and tensors[0].dim() >= 1:
                self.graph.batch = int(tensors[0].shape[0])
        if self.state != RECORDING:
            return
        self.hook_depth += 1
        self._pre_args.append(self._call_paused(lambda: tuple(map(self.node_of, collect_tensors((args, kwargs), []))))
                              if self.hook_depth == 1 else None)

    def pre_last(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.state != RECORDING:
            return
        self.hook_depth -= 1
        orig = self._pre_args.pop() if self._pre_args else None
        if self.hook_depth == 0:  # else a module called inside someone's hook: not part of the forward
            self._call_paused(self._enter, module, args, kwargs, orig)

    def post_first(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.state != RECORDING:
            return
        ci = self._call_paused(self._exit, module, args, kwargs, output) if self.hook_depth == 0 else None
        if self.state == RECORDING:
            self.hook_depth += 1
            self._post_call.append(ci)

    def post_last(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.state != RECORDING:
            if module is self.model and self.state == DONE and self.on_done is not None:
                done, self.on_done = self.on_done, None  # the root's last hook: the hooks can go now
                done()
            return
        self.hook_depth -= 1
        ci = self._post_call.pop() if self._post_call else None
        if self.hook_depth == 0 and ci is not None:
            self._call_paused(self._replaced_output, ci, output)

    def _call_paused(self, f: Any, *a: Any) -> Any:
        self.paused = True
        try:
            return f(*a)
        finally:
            self.paused = False

    def _derived(self, t: Tensor, sources: tuple[int, ...], call: int) -> int:
        """A node for ``t`` made in someone else's hook from ``sources`` (it stands for the same values)."""
        g, data = self.graph, any(self.graph.data[i] for i in sources)
        pset = _EMPTY if data else frozenset().union(*(g.pset[i] for i in sources))
        n = g.add(fn.TRANSPARENT, "hook", sources, call, data, pset)
        self._prod[id(t)] = (n, weakref.ref(t))
        return n

    def _known(self, t: Tensor) -> bool:
        return (e := self._prod.get(id(t))) is not None and e[1]() is t

    def _replaced_output(self, ci: int, output: Any) -> None:
        """Outputs a forward hook replaced: derived from what the forward returned."""
        call = self.graph.calls[ci]
        first = True
        for t in collect_tensors(output, []):
            floating = t.is_floating_point() or t.is_complex()
            if not self._known(t):
                n = self._derived(t, call.out_nodes, ci)
                if first and floating:
                    call.out_node = n
            first = first and not floating
        call.end = len(self.graph.kind)

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
               orig: tuple[int, ...] | None) -> None:
        g = self.graph
        mid = id(module)
        k = self._ncalls[mid] = self._ncalls.get(mid, 0) + 1
        base = self.names.get(mid) or type(module).__name__
        parent = self._stack[-1] if self._stack else -1
        call = Call(mid, self.names.get(mid, ""), type(module).__name__, base if k == 1 else f"{base}@{k}", parent,
                    g.calls[parent].depth + 1 if parent >= 0 else 0)
        tensors = collect_tensors((args, kwargs), [])
        if orig is not None:  # inputs a pre-hook replaced stand for the inputs it was given
            for t in tensors:
                if not self._known(t):
                    self._derived(t, orig, parent)
        call.in_nodes = tuple(self.node_of(t) for t in tensors)
        if tensors:
            call.first_in_shape = tuple(tensors[0].shape)
            call.x_ref = weakref.ref(tensors[0])
        for i, t in enumerate(tensors):
            if t.is_floating_point() or t.is_complex():
                call.in_node, call.in_shape = call.in_nodes[i], tuple(t.shape)
                break
        ci = len(g.calls)
        role = self.roles.get(mid, fn.OTHER)
        if role == fn.CANDIDATE and mid not in self._act_cache and len(tensors) == 1 and call.in_node is not None:
            pos = next((i for i, a in enumerate(args) if a is tensors[0]), None)
            if pos is not None:
                with torch.no_grad():
                    self._probe[ci] = (tensors[0].detach().clone(), pos)
        call.start = len(g.kind)
        g.calls.append(call)
        self._stack.append(ci)

    def _exit(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> int | None:
        g, mid, stack = self.graph, id(module), self._stack
        at = next((i for i in range(len(stack) - 1, -1, -1) if g.calls[stack[i]].mid == mid), None)
        if at is None:
            return None
        ci = stack[at]
        del stack[at:]  # with calls left open by an exception caught inside
        call = g.calls[ci]
        outs: list[int] = []
        first_float: Tensor | None = None
        for t in collect_tensors(output, []):
            e = self._prod.get(id(t))
            if (e is not None and e[1]() is t) or id(t) in self.params:  # a parameter returned as it is: no data
                n = self.node_of(t)
            else:  # made where the mode did not see it: a node depending on all the call's inputs
                data = any(g.data[i] for i in call.in_nodes)
                n = g.add(fn.STOP, "module_output", call.in_nodes, ci, data, _EMPTY)
                self._prod[id(t)] = (n, weakref.ref(t))
            outs.append(n)
            if first_float is None and (t.is_floating_point() or t.is_complex()):
                first_float, call.out_node, call.out_shape = t, n, tuple(t.shape)
        call.end = len(g.kind)
        call.x_ref = None
        role = self.roles.get(mid, fn.OTHER)
        same_shape = call.in_shape is not None and call.in_shape == call.out_shape
        if role in (fn.ACT_MODULE, fn.NAMED_ACT) and same_shape:
            if mid not in self._act_cache:
                self._act_cache[mid] = fn.module_activation(module)
            call.act = self._act_cache[mid]
        elif role == fn.CANDIDATE:
            probe = self._probe.pop(ci, None)
            if probe is not None and first_float is not None:
                verdict = fn.elementwise_test(module, args, kwargs, probe[1], probe[0], first_float)
                self._act_cache[mid] = ("module", ()) if verdict == "elementwise" else None
            call.act = self._act_cache.get(mid) if same_shape else None
        elif role == fn.NORM_MODULE:
            call.norm = (fn.norm_kind(module) or "other", isinstance(getattr(module, "weight", None), Tensor),
                         fn.norm_shape(module))
        call.out_nodes = tuple(outs)
        if module is self.model:
            g.root_out = tuple(outs)
            self.finish()
        return ci

    def finish(self) -> None:
        """End of the first forward (or of the probe): no recording after this, no tensor kept."""
        if self.state == RECORDING and not self._stack:
            self.graph.complete = True
        self.state = DONE
        self._stack, self._prod, self._probe, self._silenced, self._gathered = [], {}, {}, set(), set()
