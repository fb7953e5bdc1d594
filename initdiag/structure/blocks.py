"""Residual blocks of the trunk, found in the recorded dataflow graph.

A module call is a residual block when, within its call, an addition of two data tensors ``p + q``

* has both operands descending from the call's (first floating) input,
* has a branch: the weight layers that are ancestors of ``p`` but not of ``q`` (counted from the fork,
  so what came before the block cancels out) are at least one, and more than those of ``q`` not of ``p``
  (none: identity shortcut; fewer: a shortcut conv, e.g. ResNet's downsample),
* reaches the call's (first floating) output without passing a weight layer,

and the call's input and output have the same shape, or a shortcut has weight layers. Of those calls the
trunk's blocks are the ones that are not stages (a ResNet ``layer1``, a ViT ``Encoder``: every residual
add they have is one of the blocks nested in them, which are one call or repeat a class; see
:func:`_is_container`), whose class is called at least twice in the forward, and that are not nested in
another such block; in execution order. So BERT's ``BertLayer`` (its first add sits in the nested
``BertAttention``, its second in no nested block) and T5's ``T5Block`` (made of two residual sub-layers
of different classes) are the blocks, not their sub-layers.

Where it can be wrong: a single, non-repeated residual module is not a stream block; gated or
multiplicative skips (highway networks) are not additions; a shortcut that goes through more weight
layers than the branch swaps the roles of branch and shortcut; ancestry is by dataflow, so two branches
that reuse the same weight layer look like one. A sum that feeds another residual add's branch and not its
shortcut (parallel paths summed inside a branch) is part of that branch, not a shortcut.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter

from . import functional as fn
from .model import Block
from .records import Call, Graph

_Add = tuple[int, int, int, int]  # (add node, branch operand, shortcut operand, shortcut-only layer bits)


def _bits(x: int) -> int:
    return bin(x).count("1")


def per_sample(shape: tuple[int, ...] | None, batch: int | None) -> tuple[int, ...]:
    """``shape`` without its leading batch dim (dropped when it is the batch size or 1)."""
    if not shape:
        return ()
    if batch is not None and shape[0] in (batch, 1):
        return tuple(shape[1:])
    return tuple(shape)


def ancestor_bits(g: Graph, marks: dict[int, int]) -> list[int]:
    """Per node, a bitset of the marked nodes (mark index -> bit) among its ancestors, itself included."""
    out = [0] * len(g.kind)
    for n, ins in enumerate(g.inputs):
        a = 0
        for i in ins:
            a |= out[i]
        m = marks.get(n)
        out[n] = a | (1 << m) if m is not None else a
    return out


def _descendants(g: Graph, call: Call) -> set[int]:
    assert call.in_node is not None
    d = {call.in_node}
    inputs = g.inputs
    for n in range(call.start, call.end):
        for i in inputs[n]:
            if i in d:
                d.add(n)
                break
    return d


def _reach_output(g: Graph, call: Call) -> set[int]:
    """Nodes of the call whose value reaches its output without passing a weight layer."""
    r: set[int] = set()
    stack = [call.out_node] if call.out_node is not None else []
    while stack:
        n = stack.pop()
        if n in r or n < call.start or g.kind[n] == fn.WEIGHT:
            continue
        r.add(n)
        stack.extend(g.inputs[n])
    return r


def _residual_adds(g: Graph, call: Call, adds: list[int], wanc: list[int]) -> list[_Add]:
    lo, hi = bisect_left(adds, call.start), bisect_left(adds, call.end)
    if lo == hi or call.in_node is None or call.out_node is None or not g.data[call.in_node]:
        return []
    desc, reach, free = _descendants(g, call), _reach_output(g, call), _identity_reach(g, call)
    found: list[_Add] = []
    for a in adds[lo:hi]:
        if a not in reach:
            continue
        ops = [i for i in dict.fromkeys(g.inputs[a]) if g.data[i]]
        if len(ops) < 2 or ops[0] not in desc or ops[1] not in desc:
            continue
        p, q = ops[0], ops[1]
        bo, so = wanc[p] & ~wanc[q], wanc[q] & ~wanc[p]
        if (p in free) != (q in free):  # the operand the input reaches without a weight layer is the shortcut
            if p in free:
                p, q, bo = q, p, so
            so = 0  # a parallel block's second branch joins a sum that holds the identity: no projection
        elif _bits(bo) < _bits(so):
            p, q, bo, so = q, p, so, bo
        if bo and _bits(so) < _bits(bo):
            found.append((a, p, q, so))
    found = [f for f in found if not (f[3] and _inside_branch(g, call, f[0], found))]
    if found and call.in_shape != call.out_shape and not any(f[3] for f in found):
        return []
    return found


def _identity_reach(g: Graph, call: Call) -> set[int]:
    """Nodes of the call that the call's input reaches along some path without a weight layer (the identity
    path of a residual sum; a sum with one such operand is reached too)."""
    if call.in_node is None:
        return set()
    free = {call.in_node}
    for n in range(call.start, call.end):
        if g.kind[n] != fn.WEIGHT and any(i in free for i in g.inputs[n] if g.data[i]):
            free.add(n)
    return free


def _shortcut_normalized(g: Graph, call: Call, found: list[_Add], norm_marks: dict[int, int]) -> bool:
    """Whether some residual add's shortcut operand is reached from the block's input only through a
    normalization (``x = norm(x); x = x + f(x)`` inside the block), not along an identity path."""
    if call.in_node is None:
        return False
    free = {call.in_node}
    for n in range(call.start, call.end):
        if n not in norm_marks and any(i in free for i in g.inputs[n]):
            free.add(n)
    return any(f[2] not in free for f in found)


def _inside_branch(g: Graph, call: Call, add: int, found: list[_Add]) -> bool:
    """Whether the sum ``add`` feeds the branch of another residual add of the call and not its shortcut:
    a sum of parallel paths inside a branch (a mixture of experts' shared + routed experts, an inception-style
    ``conv1(x) + conv2(conv3(x))``), whose weight-layer operand is then no shortcut of the block."""
    after = {add}
    for n in range(add + 1, call.end):
        if any(i in after for i in g.inputs[n]):
            after.add(n)
    return any(f[0] != add and f[1] in after and f[2] not in after for f in found)


def _ratio(variances: dict[int, float], branch: int, shortcut: int) -> float:
    """``Var(branch) / Var(shortcut)`` at one residual add (NaN where unmeasured or both are 0)."""
    vb, vs = variances.get(branch, math.nan), variances.get(shortcut, math.nan)
    if vs > 0:
        return vb / vs
    return math.inf if vb > 0 else math.nan


def _eps_read(g: Graph) -> set[int]:
    """The nodes a normalization that saw a variance below its eps reads (directly or through shape ops):
    ``x / sqrt(Var(x) + eps) ~ x / sqrt(eps)`` there, a gain, not a normalization."""
    read: set[int] = set()
    for n, (var, eps) in g.norm_vars.items():
        if var >= eps:
            continue
        node = n
        for _ in range(8):
            data = [i for i in g.inputs[node] if g.data[i]]
            if not data:
                break
            node = data[0]
            read.add(node)
            if g.kind[node] != fn.TRANSPARENT:
                break
    return read


def _inside(g: Graph, inner: int, outer: int) -> bool:
    ci = g.calls[inner].parent
    while ci >= 0:
        if ci == outer:
            return True
        ci = g.calls[ci].parent
    return False


def _is_container(g: Graph, ci: int, cands: dict[int, list[_Add]]) -> bool:
    """A stage rather than a block: each of its residual adds is one of a candidate nested in it, and
    those (the outermost ones inside it) are a single call or repeat a class (``layer1`` = 2 x
    BasicBlock, a ViT ``Encoder``). A layer made of residual sub-layers of different classes (T5's
    ``T5Block`` = ``T5LayerSelfAttention`` + ``T5LayerFF``) stays a block; a stage of exactly two blocks
    of different classes would be taken for one."""
    inner = [o for o in cands if o != ci and _inside(g, o, ci)]
    explained = {f[0] for o in inner for f in cands[o]}
    if not inner or any(f[0] not in explained for f in cands[ci]):
        return False
    top = [o for o in inner if not any(p != o and _inside(g, o, p) for p in inner)]
    counts = Counter(g.calls[o].module_type for o in top)
    return len(top) == 1 or max(counts.values()) >= 2


def _walk_back(g: Graph, n: int, stop: dict[int, str]) -> str | None:
    """From ``n`` back through shape ops, dropout and constant scales to the first node in ``stop``."""
    seen = 0
    while seen < 64:
        if n in stop:
            return stop[n]
        if g.kind[n] != fn.TRANSPARENT:
            return None
        ins = [i for i in g.inputs[n] if g.data[i]]
        if len(ins) != 1:
            return None
        n, seen = ins[0], seen + 1
    return None


def _activation_after(g: Graph, out: int | None, acts: dict[int, Call]) -> str:
    """The elementwise activation applied to a block's last residual sum before it leaves the block (ResNet's
    ``relu(x + f(x))``): from the block's output back through shape ops to an activation whose input, back
    through shape ops again, is a residual add; "" when there is none. ``acts``: the activation module calls by
    output node."""
    n, name = out, ""
    for _ in range(64):
        if n is None:
            return ""
        act = acts.get(n) if not name else None
        if act is not None and act.act is not None:
            name, n = act.act[0], act.in_node
            continue
        if not name and g.kind[n] == fn.ACT:
            name = str(g.extra[n][0])
        elif name and g.kind[n] == fn.RESADD:
            return name
        elif g.kind[n] != fn.TRANSPARENT:
            return ""
        ins = [i for i in g.inputs[n] if g.data[i]]
        n = ins[0] if len(ins) == 1 else None
    return ""


def _stream_runs(g: Graph, stream: list[int]) -> list[list[int]]:
    """The block calls as runs, each block's input deriving from the previous one's output (an encoder, then a
    decoder that starts from its own embeddings); a run that calls again the modules of an earlier one (a
    backbone applied to a second input, as in a siamese network) is the same stream again and is left out."""
    marks = {out: k for k, ci in enumerate(stream) if (out := g.calls[ci].out_node) is not None}
    anc = ancestor_bits(g, marks) if stream else []
    runs: list[list[int]] = []
    for k, ci in enumerate(stream):
        node = g.calls[ci].in_node
        if runs and node is not None and anc[node] >> (k - 1) & 1:
            runs[-1].append(ci)
        else:
            runs.append([ci])
    seen: set[str] = set()
    kept = []
    for run in runs:
        modules = {g.calls[ci].module_name for ci in run}
        if not modules <= seen:
            kept.append(run)
        seen |= modules
    return kept


def find_blocks(g: Graph, layer_names: list[str], norm_marks: dict[int, int],
                norm_names: list[str]) -> tuple[list[Block], str | None]:
    """The trunk's residual blocks and the call site whose output enters the first one."""
    weight_marks = dict(g.node_layer)
    wanc, nanc = ancestor_bits(g, weight_marks), ancestor_bits(g, norm_marks)
    adds = [n for n, k in enumerate(g.kind) if k == fn.RESADD]
    cands: dict[int, list[_Add]] = {}
    if adds:
        for ci, call in enumerate(g.calls):
            found = _residual_adds(g, call, adds, wanc)
            if found:
                cands[ci] = found
    kept = [ci for ci in cands if not _is_container(g, ci, cands)]
    per_type = Counter(g.calls[ci].module_type for ci in kept)
    kept = [ci for ci in kept if per_type[g.calls[ci].module_type] >= 2]
    kept_set = set(kept)
    runs = _stream_runs(g, sorted((ci for ci in kept if not any(_inside(g, ci, o) for o in kept_set if o != ci)),
                                  key=lambda ci: g.calls[ci].start))
    stream = [ci for run in runs for ci in run]
    restarts = {run[0] for run in runs[1:]}
    summed = ancestor_bits(g, dict.fromkeys((f[0] for ci in stream for f in cands[ci]), 0)) if stream else []
    stop = {n: layer_names[li] for n, li in g.node_layer.items()}
    stop.update({n: norm_names[ni] for n, ni in norm_marks.items()})
    norm_set = set(norm_names)
    eps_read = _eps_read(g)
    blocks: list[Block] = []
    acts = {c.out_node: c for c in g.calls if c.act is not None and c.out_node is not None}
    for index, ci in enumerate(stream):
        call, found = g.calls[ci], cands[ci]
        layers = tuple(dict.fromkeys(layer_names[li] for n, li in sorted(g.node_layer.items())
                                     if call.start <= n < call.end))
        norms = tuple(dict.fromkeys(norm_names[ni] for n, ni in sorted(norm_marks.items())
                                    if call.start <= n < call.end))
        short_bits = 0
        for f in found:
            short_bits |= f[3]
        shortcut: str | tuple[str, ...] = "identity" if not short_bits else tuple(
            layer_names[i] for i in range(len(layer_names)) if short_bits >> i & 1)
        ends = [_walk_back(g, f[1], stop) for f in found]
        last = tuple(name for name in ends if name is not None)
        post = call.out_node is not None and _walk_back(g, call.out_node, {n: "" for n in norm_marks}) is not None
        blocks.append(Block(
            name=call.site, module_name=call.module_name, module_type=call.module_type, index=index,
            in_shape=per_sample(call.in_shape, g.batch), out_shape=per_sample(call.out_shape, g.batch),
            residual_adds=len(found), shortcut=shortcut, layers=layers, norms=norms,
            branch_normalized=all(nanc[f[1]] & ~nanc[f[2]] for f in found), post_norm=post,
            last_branch_layers=last, activation_after="" if post else _activation_after(g, call.out_node, acts),
            restarts=ci in restarts, shortcut_normalized=_shortcut_normalized(g, call, found, norm_marks),
            branch_ratios=tuple(_ratio(g.add_vars.get(f[0], {}), f[1], f[2]) for f in found),
            fresh_shortcuts=tuple(not summed[f[2]] for f in found),
            normalized_ends=tuple(name in norm_set for name in ends),
            eps_streams=tuple(f[2] in eps_read for f in found)))
    stream_input = None
    if stream:
        first = g.calls[stream[0]]
        feeders = [c for c in g.calls if c.out_node == first.in_node and c.end <= first.start]
        if feeders:
            stream_input = max(feeders, key=lambda c: c.depth).site
    return blocks, stream_input
