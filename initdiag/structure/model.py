"""What a model is, as frozen plain data: weight layers, normalizations, activations, residual blocks.

Everything here is names, numbers, strings and tuples (no tensors, no modules, no callables), so a
:class:`Structure` can be compared, hashed, stored as JSON (:meth:`Structure.to_json`) and read back
(:meth:`Structure.from_json`) without the model. It is produced by :mod:`initdiag.structure.discover`.

Names are call sites, as the recorder writes them: a module's qualified name from
``model.named_modules()`` (the root: its class name), with ``@k`` for its k-th call in one forward
(k >= 2); a functional call is ``<module call site>:<function name>`` with ``@k`` for the k-th call of
that function in that module call (e.g. ``layer1.0:relu@2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .measure import AttentionSite

Params = tuple[tuple[str, Any], ...]
Shape = tuple[int, ...]


def _shape(value: Any) -> Shape:
    return tuple(int(v) for v in value)


def _params(value: Any) -> Params:
    return tuple((str(k), v) for k, v in value)


@dataclass(frozen=True)
class Activation:
    """The elementwise nonlinearity at a call site.

    ``name`` is a family ("relu", "gelu", "silu", ...), "module" for an unrecognized elementwise module
    (evaluate it with ``model.get_submodule(module_name)``), "other" for an unrecognized elementwise torch
    function (``params`` then holds ``("function", name)``), or "linear" when a layer reaches none.
    ``source`` is "module", "function" or "none"; ``site`` the call site ("" for "linear").
    """

    name: str
    params: Params = ()
    source: str = "none"
    site: str = ""
    module_name: str | None = None

    def param(self, key: str, default: Any = None) -> Any:
        """One entry of ``params`` (e.g. ``negative_slope``), or ``default``."""
        return dict(self.params).get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": [list(p) for p in self.params], "source": self.source,
                "site": self.site, "module_name": self.module_name}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Activation:
        return cls(d["name"], _params(d["params"]), d["source"], d["site"], d["module_name"])


LINEAR = Activation("linear")


@dataclass(frozen=True)
class WeightLayer:
    """A module call that applied one of the module's own parameters (>= 2 dims) as a linear map.

    ``fan_in``: inputs summed per output unit; ``fan_out``: outputs each input element feeds, on average
    (``fan_in * out_numel / in_numel`` per sample; an embedding: its dimension). ``in_shape`` /
    ``out_shape`` are per sample (leading batch dim dropped). ``constant_input``: the data input did not
    vary over the batch. ``norm_after``: the normalization the output reaches before ``activation``.
    ``block``: the residual block call site containing it. ``index``: execution order from 0. ``route_in``:
    the poolings and concatenations its data input passed after the weight layer before it ("max", "avg",
    "cat", joined by "+" in path order, "mixed" when its inputs took different routes, "" for none:
    :func:`~initdiag.structure.functional.route_kind`).
    """

    name: str
    module_name: str
    module_type: str
    param: str
    param_shape: Shape
    op: str
    fan_in: float
    fan_out: float
    in_shape: Shape
    out_shape: Shape
    constant_input: bool
    activation: Activation
    norm_after: str | None
    block: str | None
    index: int
    bias: bool
    route_in: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["param_shape"], d["in_shape"], d["out_shape"] = (list(self.param_shape), list(self.in_shape),
                                                            list(self.out_shape))
        d["activation"] = self.activation.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WeightLayer:
        kw = dict(d)
        for k in ("param_shape", "in_shape", "out_shape"):
            kw[k] = _shape(d[k])
        kw["activation"] = Activation.from_json(d["activation"])
        kw["fan_in"], kw["fan_out"] = float(d["fan_in"]), float(d["fan_out"])
        return cls(**kw)


@dataclass(frozen=True)
class NormLayer:
    """A normalization of data: ``kind`` "batch", "layer", "group", "instance", "rms" or "other".

    ``source`` "module" (``module_name`` its qualified name) or "function" (a functional call in a
    forward; ``module_name`` is then None and ``module_type`` the function's name). ``shape``: the affine
    parameter's shape, else the normalized shape as seen.
    """

    name: str
    module_name: str | None
    module_type: str
    kind: str
    affine: bool
    shape: Shape
    source: str = "module"

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NormLayer:
        return cls(**{**d, "shape": _shape(d["shape"])})


@dataclass(frozen=True)
class Block:
    """A residual block of the trunk, in stream order (``index`` from 0).

    ``shortcut``: "identity", or the call sites of the weight layers only on the shortcut path.
    ``branch_normalized``: every residual branch passes a normalization of its own. ``post_norm``: the
    block's output is a normalization of its last residual sum. ``last_branch_layers``: per residual add,
    the weight layer or normalization whose output is added. ``activation_after``: the elementwise activation
    applied to the last residual sum inside the block (ResNet's ``relu(x + f(x))``), "" for none. ``restarts``:
    its input does not derive from the previous block's output (a decoder's first block after an encoder's).
    ``shortcut_normalized``: a residual add's shortcut operand passed a normalization since the block's input
    (``x = norm(x); x = x + f(x)`` inside the block: the stream itself is renormalized there).
    ``branch_ratios``: measured, per residual add, ``Var(branch operand) / Var(shortcut operand)`` on the
    discovery batch (not compared: two runs of one model have one structure). ``fresh_shortcuts``: per
    residual add, its shortcut derives from no residual add of the stream (the stream starts there: an
    embedding, a class token, a decoder's queries). ``normalized_ends``: per residual add, the branch's added
    value is a normalization's output (OLMo-2's and Gemma's norms after the branch). ``eps_streams``: per
    residual add, the normalization that reads its shortcut (a pre-norm branch's) saw a variance below its
    ``eps``: it divides by ``eps``, not by the stream's spread (measured, not compared).
    """

    name: str
    module_name: str
    module_type: str
    index: int
    in_shape: Shape
    out_shape: Shape
    residual_adds: int
    shortcut: str | tuple[str, ...]
    layers: tuple[str, ...]
    norms: tuple[str, ...]
    branch_normalized: bool
    post_norm: bool
    last_branch_layers: tuple[str, ...]
    activation_after: str = ""
    restarts: bool = False
    shortcut_normalized: bool = False
    branch_ratios: tuple[float, ...] = field(default=(), compare=False)
    fresh_shortcuts: tuple[bool, ...] = ()
    normalized_ends: tuple[bool, ...] = ()
    eps_streams: tuple[bool, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["branch_ratios"] = [r if r == r and abs(r) != float("inf") else None for r in self.branch_ratios]
        for k in ("in_shape", "out_shape", "layers", "norms", "last_branch_layers", "fresh_shortcuts",
                  "normalized_ends", "eps_streams"):
            d[k] = list(d[k])
        if not isinstance(self.shortcut, str):
            d["shortcut"] = list(self.shortcut)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Block:
        kw = dict(d)
        for k in ("in_shape", "out_shape"):
            kw[k] = _shape(d[k])
        for k in ("layers", "norms", "last_branch_layers"):
            kw[k] = tuple(d[k])
        kw["fresh_shortcuts"] = tuple(bool(x) for x in d.get("fresh_shortcuts", ()))
        kw["normalized_ends"] = tuple(bool(x) for x in d.get("normalized_ends", ()))
        kw["eps_streams"] = tuple(bool(x) for x in d.get("eps_streams", ()))
        kw["branch_ratios"] = tuple(float("nan") if r is None else float(r) for r in d.get("branch_ratios", ()))
        if not isinstance(d["shortcut"], str):
            kw["shortcut"] = tuple(d["shortcut"])
        return cls(**kw)


@dataclass(frozen=True)
class Structure:
    """What one forward of a model showed.

    ``links``: pairs ``(a, b)`` of weight-layer call sites where ``b``'s data input comes from ``a``'s
    output through only shape ops, dropout, pooling, constant scales or biases and activations (no
    normalization, residual add, product of data or reduction); :meth:`segments` builds chains from them.
    ``flow_links``: the same through residual adds too (sums of two data paths): the data flow between weight
    layers where nothing normalizes it, along which :meth:`longest_path` runs.
    ``stream_input``: the call site whose output enters the first block, when one is clear.
    ``attention``: the softmax attentions the forward ran, as measured (not compared).
    """

    root: str
    weight_layers: tuple[WeightLayer, ...]
    norms: tuple[NormLayer, ...]
    blocks: tuple[Block, ...]
    activations: tuple[Activation, ...]
    stream_input: str | None = None
    links: tuple[tuple[str, str], ...] = ()
    flow_links: tuple[tuple[str, str], ...] = ()
    attention: tuple[AttentionSite, ...] = field(default=(), compare=False)

    @cached_property
    def _by_name(self) -> dict[str, WeightLayer]:
        return {lay.name: lay for lay in self.weight_layers}

    def layer(self, name: str) -> WeightLayer:
        """The weight layer at call site ``name`` (KeyError if none)."""
        return self._by_name[name]

    def block(self, name: str) -> Block:
        """The block at call site ``name`` (KeyError if none)."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def norm(self, name: str) -> NormLayer:
        """The normalization at call site ``name`` (KeyError if none)."""
        for n in self.norms:
            if n.name == name:
                return n
        raise KeyError(name)

    def activation(self, site: str) -> Activation:
        """The activation at call site ``site`` (KeyError if none)."""
        for a in self.activations:
            if a.site == site:
                return a
        raise KeyError(site)

    def block_of(self, layer_name: str) -> Block | None:
        """The residual block containing the weight layer ``layer_name``, or None."""
        site = self.layer(layer_name).block
        return None if site is None else self.block(site)

    def segments(self) -> tuple[tuple[str, ...], ...]:
        """Maximal chains of weight layers connected output-to-input without a normalization, a residual
        add, a product of data or a block boundary between them, in execution order. ``a`` and ``b`` are
        chained when ``b`` is ``a``'s only successor in :attr:`links` and ``a`` is ``b``'s only predecessor
        (a fork or a join ends a chain) and both lie in the same block (or in none)."""
        succ: dict[str, list[str]] = {}
        pred: dict[str, list[str]] = {}
        for a, b in self.links:
            succ.setdefault(a, []).append(b)
            pred.setdefault(b, []).append(a)
        nxt: dict[str, str] = {}
        for a, bs in succ.items():
            b = bs[0]
            if (len(bs) == 1 and len(pred[b]) == 1 and a in self._by_name and b in self._by_name
                    and self._by_name[a].block == self._by_name[b].block):
                nxt[a] = b
        has_prev = set(nxt.values())
        chains: list[tuple[str, ...]] = []
        for lay in self.weight_layers:
            if lay.name in has_prev:
                continue
            chain, cur, seen = [lay.name], lay.name, {lay.name}
            while cur in nxt and nxt[cur] not in seen:
                cur = nxt[cur]
                chain.append(cur)
                seen.add(cur)
            chains.append(tuple(chain))
        return tuple(chains)

    def longest_path(self) -> tuple[str, ...]:
        """The longest sequence of weight layers each feeding the next along :attr:`flow_links` (execution
        order breaks ties): what a network whose residual adds nothing normalizes propagates through, layer
        after layer. Parallel layers (two heads reading one input) are never on one path."""
        order = {w.name: i for i, w in enumerate(self.weight_layers)}
        best: dict[str, tuple[str, ...]] = {}
        preds: dict[str, list[str]] = {}
        for a, b in self.flow_links:
            if a in order and b in order and order[a] < order[b]:
                preds.setdefault(b, []).append(a)
        for w in self.weight_layers:  # execution order is a topological order of the forward links
            paths = [best[a] for a in preds.get(w.name, ()) if a in best]
            best[w.name] = (*max(paths, key=len, default=()), w.name)
        return max(best.values(), key=len, default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (lists, strings, numbers, None); :meth:`from_json` reads it back."""
        return {"root": self.root,
                "weight_layers": [w.to_json() for w in self.weight_layers],
                "norms": [n.to_json() for n in self.norms],
                "blocks": [b.to_json() for b in self.blocks],
                "activations": [a.to_json() for a in self.activations],
                "stream_input": self.stream_input,
                "links": [list(p) for p in self.links], "flow_links": [list(p) for p in self.flow_links],
                "attention": [a.to_json() for a in self.attention]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Structure:
        return cls(root=d["root"],
                   weight_layers=tuple(WeightLayer.from_json(w) for w in d["weight_layers"]),
                   norms=tuple(NormLayer.from_json(n) for n in d["norms"]),
                   blocks=tuple(Block.from_json(b) for b in d["blocks"]),
                   activations=tuple(Activation.from_json(a) for a in d["activations"]),
                   stream_input=d["stream_input"],
                   links=tuple((str(a), str(b)) for a, b in d["links"]),
                   flow_links=tuple((str(a), str(b)) for a, b in d.get("flow_links", ())),
                   attention=tuple(AttentionSite.from_json(a) for a in d.get("attention", ())))
