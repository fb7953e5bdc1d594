"""The gates of recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``), measured by replaying their equations.

torch runs a recurrent layer in one fused call, so hooks see its output sequence and never its gates. The
audit captures each recurrent module's input on its first batch and replays the documented equations (torch's
``nn.LSTM``/``nn.GRU``/``nn.RNN`` docs) with the module's own parameters, layer by layer and direction by
direction, from a zero state (or the state the model passed): each gate's pre-activation gives its variance
and the fraction of its outputs within ``tol`` of a bound of its activation (sigmoid 0/1, tanh -1/1). The
replay reproduces the module's output (checked in the tests); packed sequences and ``proj_size`` are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["GateStats", "Replayed", "capture_recurrent_inputs", "gate_stats", "replay"]

_GATES = {"LSTM": (("input", "sigmoid"), ("forget", "sigmoid"), ("cell", "tanh"), ("output", "sigmoid")),
          "GRU": (("reset", "sigmoid"), ("update", "sigmoid"), ("new", "tanh"))}


@dataclass(frozen=True)
class GateStats:
    """One gate of one layer and direction of a recurrent module at initialization: ``var`` and ``mean_sq`` of
    its pre-activation over batch, time and units; ``saturated``: the fraction of its outputs within the
    tolerance of a bound; ``expected_var``: theory's pre-activation variance, ``fan_in Var(W_ih) E[x^2] +
    hidden Var(W_hh) E[h^2] + Var(b)`` with the replay's measured ``E[x^2]`` and ``E[h^2]``."""

    module: str
    layer: int
    direction: int
    gate: str
    activation: str
    var: float
    mean_sq: float
    saturated: float
    expected_var: float

    @property
    def name(self) -> str:
        """``module[layer]/gate`` (``:reverse`` for the second direction)."""
        return f"{self.module}[{self.layer}]{':reverse' if self.direction else ''}/{self.gate}"


@contextmanager
def capture_recurrent_inputs(model: nn.Module, enabled: bool = True) -> Iterator[dict[str, tuple[Any, ...]]]:
    """Inside the block, the positional inputs of each ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call (the first call of
    each module), detached, by module name (nothing when not ``enabled``)."""
    seen: dict[str, tuple[Any, ...]] = {}
    handles = []
    for name, module in model.named_modules() if enabled else ():
        if isinstance(module, nn.RNNBase) and getattr(module, "proj_size", 0) == 0:
            def hook(mod: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
                if _name not in seen and args and isinstance(args[0], torch.Tensor):
                    seen[_name] = tuple(a.detach() if isinstance(a, torch.Tensor) else
                                        tuple(t.detach() for t in a) if isinstance(a, tuple) else a for a in args)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _cell(kind: str, nonlin: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
          w: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One step: ``(h, pre-activations stacked by gate [gates, batch, hidden], c)``."""
    w_ih, w_hh, b_ih, b_hh = w
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    if kind == "LSTM":
        four = (gi + gh).chunk(4, 1)
        i, f, g, o = torch.sigmoid(four[0]), torch.sigmoid(four[1]), torch.tanh(four[2]), torch.sigmoid(four[3])
        assert c is not None
        c = f * c + i * g
        return o * torch.tanh(c), torch.stack(four), c
    if kind == "GRU":
        ir, iz, in_ = gi.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n_pre = in_ + r * hn
        return (1 - z) * torch.tanh(n_pre) + z * h, torch.stack((ir + hr, iz + hz, n_pre)), None
    pre = gi + gh
    return (torch.tanh(pre) if nonlin == "tanh" else torch.relu(pre)), pre[None], None


Replayed = list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]
"""Per (layer, direction): ``(layer, direction, pre-activations [gates, time, batch, hidden], inputs, states)``."""


def replay(module: nn.RNNBase, args: tuple[Any, ...]) -> tuple[torch.Tensor, Replayed]:
    """The module's output sequence and, per (layer, direction), its gate pre-activations ``[gates, time, batch,
    hidden]``, its input sequence and its hidden states, from the documented equations."""
    kind = type(module).__name__ if type(module).__name__ in ("LSTM", "GRU") else "RNN"
    x = args[0].to(torch.float64)
    batched = x.dim() == 3
    x = x if batched else x.unsqueeze(1)
    x = x.transpose(0, 1) if module.batch_first and batched else x  # [time, batch, features]
    state = args[1] if len(args) > 1 else None
    h0, c0 = (state if isinstance(state, tuple) else (state, None)) if state is not None else (None, None)
    dirs, hidden, out = 2 if module.bidirectional else 1, module.hidden_size, []
    seq, found = x, []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = tuple(getattr(module, f"{n}{sfx}", None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            w = tuple(torch.zeros(()) if t is None else t.detach().to(torch.float64) for t in w)
            k = layer * dirs + d
            h = h0[k].to(torch.float64).reshape(x.shape[1], hidden) if h0 is not None else \
                x.new_zeros(x.shape[1], hidden)
            c = (c0[k].to(torch.float64).reshape(x.shape[1], hidden) if c0 is not None else
                 x.new_zeros(x.shape[1], hidden)) if kind == "LSTM" else None
            steps = range(seq.shape[0] - 1, -1, -1) if d else range(seq.shape[0])
            hs, pres, ins = {}, {}, []
            for t in steps:
                ins.append(h)
                h, pre, c = _cell(kind, getattr(module, "nonlinearity", "tanh"), seq[t], h, c, w)  # type: ignore[arg-type]
                hs[t], pres[t] = h, pre
            order = range(seq.shape[0])
            outputs.append(torch.stack([hs[t] for t in order]))
            found.append((layer, d, torch.stack([pres[t] for t in order], 1), seq, torch.stack(ins)))
        seq = torch.cat(outputs, -1)
    out = seq.transpose(0, 1) if module.batch_first and batched else seq
    return (out if batched else out.squeeze(1)), found


def gate_stats(name: str, module: nn.RNNBase, args: tuple[Any, ...], tol: float = 0.01) -> list[GateStats]:
    """:class:`GateStats` of every gate of ``module`` replayed on ``args`` (see the module docstring)."""
    kind = type(module).__name__
    gates = _GATES.get(kind, (("hidden", getattr(module, "nonlinearity", "tanh")),))
    _, found = replay(module, args)
    out = []
    for layer, d, pre, inputs, states in found:
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(module, f"weight_ih{sfx}").detach(), getattr(module, f"weight_hh{sfx}").detach()
        b = [getattr(module, f"bias_{n}{sfx}", None) for n in ("ih", "hh")]
        x2, h2 = float(inputs.pow(2).mean()), float(states.pow(2).mean())
        for g, (gate, act) in enumerate(gates):
            rows = slice(g * module.hidden_size, (g + 1) * module.hidden_size)
            bias_var = sum(float(t.detach()[rows].to(torch.float64).pow(2).mean()) for t in b if t is not None)
            expected = (w_ih.shape[1] * float(w_ih[rows].to(torch.float64).var()) * x2
                        + module.hidden_size * float(w_hh[rows].to(torch.float64).var()) * h2 + bias_var)
            z = pre[g]
            y = torch.sigmoid(z) if act == "sigmoid" else torch.tanh(z) if act == "tanh" else torch.relu(z)
            lo, hi = (0.0, 1.0) if act == "sigmoid" else (-1.0, 1.0)
            sat = float(((y - lo).abs() <= tol).logical_or((hi - y).abs() <= tol).double().mean()) \
                if act in ("sigmoid", "tanh") else math.nan
            out.append(GateStats(name, layer, d, gate, act, float(z.var()), float(z.mean().pow(2)), sat, expected))
    return out
