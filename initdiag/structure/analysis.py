"""From the recorded graph to a :class:`~initdiag.structure.model.Structure`.

Normalizations: torch's norm modules; a module that calls a functional norm on data itself; a module
that multiplies/divides its input by an rsqrt/sqrt/norm/std of the input (RMS norms libraries define,
``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``; "layer" when it also subtracts a data
tensor, as a hand-written LayerNorm does). The last two need the same shape in and out and no weight
layer inside, else a whole block calling ``F.layer_norm`` would count. A functional norm outside any norm
module is a norm of its own (site ``<module call site>:layer_norm``). Norms of non-data (a weight
standardized with ``F.batch_norm``) are not normalizations.

Activation after a layer: a search through the dataflow from the layer's output in execution order
that passes shape ops, dropout, pooling, constant scales and biases, normalizations (``norm_after``) and
identity modules, and stops at an elementwise nonlinearity (the activation), or at another weight layer,
a sum/difference or product of two data tensors, a reduction, an unknown op or the model output
("linear"). Activation modules and norm modules without a functional norm inside are seen as one step
(their inner ops do not count); over several consumers, the first activation reached wins. Where it can
be wrong: an activation applied after a residual add or a gate is not attributed to the layers before
it; an unknown op (say ``torch.where``) ends the search early.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from typing import Any

from . import functional as fn
from .blocks import find_blocks, per_sample
from .model import LINEAR, Activation, NormLayer, Structure, WeightLayer
from .records import Graph


def _consumers(g: Graph) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in g.kind]
    for n, ins in enumerate(g.inputs):
        for i in dict.fromkeys(ins):
            out[i].append(n)
    return out


def _pattern_norm(g: Graph, ci: int) -> str | None:
    """"rms"/"layer" when call ``ci`` multiplies or divides its input by an rsqrt/sqrt/norm of it."""
    call = g.calls[ci]
    assert call.in_node is not None
    desc, scaled = {call.in_node}, set()
    found, centered = False, False
    for n in range(call.start, call.end):
        ins = g.inputs[n]
        if any(i in desc for i in ins):
            desc.add(n)
        direct = g.call[n] == ci
        if (direct and g.name[n] in fn.RSQRT_LIKE and n in desc) or any(i in scaled for i in ins):
            scaled.add(n)
        if direct and g.kind[n] == fn.PRODUCT:
            ops = [i for i in ins if i in desc]
            if any(i in scaled for i in ops) and any(i not in scaled for i in ops):
                found = True
        if direct and g.kind[n] == fn.SUB and sum(i in desc for i in ins) >= 2:
            centered = True
    return ("layer" if centered else "rms") if found else None


class _Analysis:
    def __init__(self, g: Graph, pshapes: dict[int, dict[str, tuple[int, ...]]]) -> None:
        self.g, self.pshapes = g, pshapes
        self.consumers = _consumers(g)
        self.norms: list[NormLayer] = []
        self.norm_marks: dict[int, int] = {}  # node -> norm index
        self.opaque: dict[int, tuple[str, Any]] = {}  # call -> ("act", Activation) | ("norm", norm index)
        wprefix = [0]
        for k in g.kind:
            wprefix.append(wprefix[-1] + (k == fn.WEIGHT))
        self.wprefix = wprefix

    def _has_weight(self, start: int, end: int) -> bool:
        return self.wprefix[end] > self.wprefix[start]

    def find_norms(self) -> None:
        g = self.g
        module_norm_nodes: set[int] = set()
        for ci, call in enumerate(g.calls):
            if call.in_node is None or call.out_node is None or not g.data[call.in_node]:
                continue
            shape_kept = call.in_shape == call.out_shape and not self._has_weight(call.start, call.end)
            direct = ([n for n in range(call.start, call.end) if g.call[n] == ci and g.kind[n] == fn.NORM]
                      if call.norm is not None or call.has_norm_op else [])
            own = self.pshapes.get(call.mid, {})
            if call.norm is not None:
                kind, affine, shape = call.norm
            elif call.has_norm_op and shape_kept and direct:
                kind, affine, fshape = g.extra[direct[0]][:3]
                affine = affine or bool(own)
                shape = next(iter(own.values())) if own else fshape
            elif call.has_rsqrt and shape_kept:
                pattern = _pattern_norm(g, ci)
                if pattern is None:
                    continue
                kind, affine = pattern, bool(own)
                shape = next(iter(own.values())) if own else per_sample(call.in_shape, g.batch)[-1:]
            else:
                continue
            idx = len(self.norms)
            self.norms.append(NormLayer(call.site, call.module_name, call.module_type, kind, affine, tuple(shape)))
            if direct:
                for n in direct:
                    self.norm_marks[n] = idx
                    module_norm_nodes.add(n)
            else:
                self.norm_marks[call.out_node] = idx
                self.opaque[ci] = ("norm", idx)
        for n, k in enumerate(g.kind):
            if k == fn.NORM and n not in module_norm_nodes:
                kind, affine, shape, site = g.extra[n]
                self.norm_marks[n] = len(self.norms)
                self.norms.append(NormLayer(site, None, g.name[n], kind, affine, tuple(shape), "function"))
        order = sorted(range(len(self.norms)), key=lambda i: min(n for n, j in self.norm_marks.items() if j == i))
        remap = {old: new for new, old in enumerate(order)}
        self.norms = [self.norms[i] for i in order]
        self.norm_marks = {n: remap[i] for n, i in self.norm_marks.items()}
        self.opaque = {ci: (k, remap[v]) for ci, (k, v) in self.opaque.items()}

    def find_activations(self) -> list[Activation]:
        g = self.g
        seen: list[tuple[int, Activation]] = []
        for ci, call in enumerate(g.calls):
            if call.act is not None and call.in_node is not None and g.data[call.in_node]:
                act = Activation(call.act[0], call.act[1], "module", call.site, call.module_name)
                self.opaque[ci] = ("act", act)
                seen.append((call.start, act))
        for n, k in enumerate(g.kind):
            if k == fn.ACT and not self._in_act_call(n):
                fam, params, site = g.extra[n]
                seen.append((n, Activation(fam, params, "function", site)))
        return [a for _, a in sorted(seen, key=lambda p: p[0])]

    def _in_act_call(self, n: int) -> bool:
        ci = self.g.call[n]
        while ci >= 0:
            if self.g.calls[ci].act is not None:
                return True
            ci = self.g.calls[ci].parent
        return False

    def _entry(self, n: int, c: int) -> int | None:
        """The outermost opaque call (activation / norm module) entered between ``n`` and ``c``."""
        calls, chain = self.g.calls, []
        ci = self.g.call[c]
        while ci >= 0 and calls[ci].start > n:
            chain.append(ci)
            ci = calls[ci].parent
        for ci in reversed(chain):
            if ci in self.opaque:
                return ci
        return None

    def follow(self, start: int) -> tuple[Activation, str | None]:
        """The activation a layer's output reaches, and the normalization before it."""
        g = self.g
        heap: list[tuple[int, str]] = [(start, "")]
        visited = {start}
        first_norm: str | None = None
        budget = 20000
        while heap and budget > 0:
            n, norm = heapq.heappop(heap)
            if norm and first_norm is None:
                first_norm = norm
            for c in self.consumers[n]:
                budget -= 1
                oc = self._entry(n, c)
                nxt, nnorm = c, norm
                if oc is not None:
                    what, val = self.opaque[oc]
                    if what == "act":
                        return val, norm or None
                    out = g.calls[oc].out_node
                    if out is None:
                        continue
                    nxt, nnorm = out, norm or self.norms[val].name
                else:
                    k = g.kind[c]
                    if k == fn.ACT:
                        fam, params, site = g.extra[c]
                        return Activation(fam, params, "function", site), norm or None
                    if k == fn.NONLIN:
                        return Activation("other", (("function", g.name[c]),), "function", g.extra[c]), norm or None
                    if k == fn.NORM and c in self.norm_marks:
                        nnorm = norm or self.norms[self.norm_marks[c]].name
                    elif k != fn.TRANSPARENT:
                        continue
                if nxt not in visited:
                    visited.add(nxt)
                    heapq.heappush(heap, (nxt, nnorm))
        return LINEAR, first_norm

    def successors(self, start: int, own: int, through_adds: bool = False,
                   routes: dict[int, str] | None = None) -> list[int]:
        """Weight layers reached from ``start`` through shape ops, constant scales/biases and activations
        (also unknown elementwise functions), stopping at norms, sums/products of data and reductions; with
        ``through_adds``, through sums of data paths (residual adds) too. ``routes`` receives, per layer
        reached, the poolings and concatenations on the way ("max+cat"; "mixed" when two paths differ;
        :func:`~initdiag.structure.functional.route_kind`)."""
        passes = (fn.TRANSPARENT, fn.ACT, fn.NONLIN, *((fn.RESADD,) if through_adds else ()))
        g, out = self.g, []
        stack, visited = [(start, "")], {start}
        while stack:
            n, route = stack.pop()
            for c in self.consumers[n]:
                oc = self._entry(n, c)
                nxt, step = c, route
                if oc is not None:
                    if self.opaque[oc][0] != "act" or g.calls[oc].out_node is None:
                        continue
                    nxt = g.calls[oc].out_node  # type: ignore[assignment]
                elif g.kind[c] == fn.WEIGHT:
                    li = g.node_layer[c]
                    if li != own and li not in out:
                        out.append(li)
                        if routes is not None:
                            routes[li] = route if routes.get(li, route) == route else "mixed"
                    continue
                elif g.kind[c] not in passes:
                    continue
                else:
                    kind = fn.route_kind(g.name[c])
                    step = route if not kind or kind in route.split("+") else "+".join(filter(None, (route, kind)))
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, step))
        return out


def build(g: Graph, root: str, pshapes: dict[int, dict[str, tuple[int, ...]]]) -> Structure:
    """The structure of one recorded forward."""
    an = _Analysis(g, pshapes)
    an.find_norms()
    activations = an.find_activations()
    layer_names = [g.calls[rec.call].site for rec in g.layers]
    blocks, stream_input = find_blocks(g, layer_names, an.norm_marks, [n.name for n in an.norms])
    block_of: dict[int, str] = {}
    for b in blocks:
        for call in g.calls:
            if call.site == b.name:
                for n, li in g.node_layer.items():
                    if call.start <= n < call.end:
                        block_of.setdefault(li, b.name)
                break
    layers: list[WeightLayer] = []
    links: list[tuple[str, str]] = []
    flow: list[tuple[str, str]] = []
    extra_acts: dict[str, Activation] = {}
    nodes_of_layer: dict[int, list[int]] = {}
    for n, li in g.node_layer.items():
        nodes_of_layer.setdefault(li, []).append(n)
    routes: dict[int, str] = {}
    for li, rec in enumerate(g.layers):
        call = g.calls[rec.call]
        act, norm = an.follow(rec.node)
        if act.name == "other":
            extra_acts.setdefault(act.site, act)
        in_shape = call.in_shape if call.in_shape is not None else call.first_in_shape
        layers.append(WeightLayer(
            name=call.site, module_name=call.module_name, module_type=call.module_type, param=rec.param,
            param_shape=rec.param_shape, op=rec.op, fan_in=float(rec.fan_in), fan_out=float(rec.fan_out),
            in_shape=per_sample(in_shape, g.batch), out_shape=per_sample(call.out_shape, g.batch),
            constant_input=rec.constant_input, activation=act, norm_after=norm, block=block_of.get(li), index=li,
            bias=rec.bias))
        for s in nodes_of_layer.get(li, ()):
            for lj in an.successors(s, li, routes=routes):
                pair = (layer_names[li], layer_names[lj])
                if pair not in links:
                    links.append(pair)
            for lj in an.successors(s, li, through_adds=True):
                pair = (layer_names[li], layer_names[lj])
                if pair not in flow:
                    flow.append(pair)
    layers = [replace(w, route_in=routes[i]) if routes.get(i) else w for i, w in enumerate(layers)]
    known = {a.site for a in activations}
    activations += [a for site, a in extra_acts.items() if site not in known]
    return Structure(root=root, weight_layers=tuple(layers), norms=tuple(an.norms), blocks=tuple(blocks),
                     activations=tuple(activations), stream_input=stream_input, links=tuple(links),
                     flow_links=tuple(flow), attention=tuple(g.attention))
