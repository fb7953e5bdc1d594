"""Chains through a recurrence: one module's weights applied again and again along the chain (an RNN cell
called once per time step, a block shared across depth).

Along a recurrence the per-step factor is the recurrent Jacobian's: below 1 the gradient of a late step
reaches only the last few steps before it and the hidden state forgets early inputs; above 1 both blow up
(Pascanu, Mikolov & Bengio 2013; Bengio et al. 1994). Shared weights sum their gradient over every
application, so a vanishing recurrence still trains them from the applications near the loss: its memory is
short, which orthogonal or identity recurrent weights lengthen (Le et al. 2015; Saxe et al. 2014), but the
model learns. A vanishing recurrence therefore warns, with the memory in steps; an exploding one fails.

The same weights applied side by side (one detection head on each level of a feature pyramid, one encoder on
several crops) give one chain per call. Their gradients sum over the calls too, so a call whose chain falls
or carries no signal while another call of the same modules is healthy is not the weights' failure: the
calls differ only in their input (at a small input, a padded 3x3 kernel on a 1x1 map sees only its centre,
1/9 of its fan-in), and the weights learn from the healthy calls. Those chains warn; exploding ones still fail.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from ..vocab import HEALTHY, Outcome, Status
from .evidence import RunEvidence
from .signal import SignalFit
from .verdict import Thresholds, Verdict

__all__ = ["parallel_calls", "recurrence", "recurrent_verdict"]


def recurrence(ev: RunEvidence, layers: Sequence[str]) -> tuple[str, int] | None:
    """``(module, applications)`` of the module applied most often along ``layers`` (call sites), when some
    module is applied at least twice; else None."""
    module_of = {la.name: la.module_name for la in ev.weight_layers}
    counts = Counter(module_of.get(n, n) for n in layers)
    if not counts:
        return None
    module, n = counts.most_common(1)[0]
    return (module, n) if n >= 2 else None


def recurrent_verdict(v: Verdict, f: SignalFit, ev: RunEvidence, th: Thresholds) -> Verdict:
    """A failing ``vanishing`` verdict on a chain through a recurrence, as a warning that names the memory: the
    steps over which the variance falls by the change factor, ``ln(C) / |ln gain|``."""
    if v.outcome != Outcome.VANISHING or v.status != Status.FAIL.value:
        return v
    found = recurrence(ev, f.layers)
    if found is None:
        return v
    module, n = found
    memory = math.log(th.change_factor) / abs(math.log(f.gain)) if 0 < f.gain < 1 else math.nan
    span = f"about {memory:.2g} steps" if math.isfinite(memory) else "a few steps"
    return replace(v, status=Status.WARN.value, effect={**v.effect, "memory_steps": memory}, message=(
        v.message + f" The chain is a recurrence: module '{module}' is applied {n} times along it, so the factor is "
        f"per step of the recurrence, and its shared weights still learn from the applications near the loss. "
        f"The memory is short: a {th.change_factor:g}x fall within {span} (Pascanu et al. 2013); orthogonal or "
        "identity recurrent weights keep a longer one (Le et al. 2015)."))


def parallel_calls(ev: RunEvidence, by_kind: dict[str, list[tuple[SignalFit, Verdict]]]) -> None:
    """Failing ``vanishing``/``no_signal`` verdicts on one call of modules applied side by side, as warnings
    when another call of the same modules (the same chain of shared modules, other call sites) is healthy: the shared
    weights learn from that call (module docstring). Replaces those verdicts in place."""
    module_of = {la.name: la.module_name for la in ev.weight_layers}
    calls = Counter(module_of.values())
    for judged in by_kind.values():
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (f, _) in enumerate(judged):  # keyed by the chain's shared modules (a stem called once aside)
            key = tuple(m for m in (module_of.get(n, n) for n in f.layers) if calls[m] >= 2)
            if key:
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            healthy = [judged[i][0].layers[0] for i in members
                       if judged[i][1].status == Status.PASS.value and judged[i][1].outcome == HEALTHY]
            if not healthy:
                continue
            for i in members:
                f, v = judged[i]
                if v.status != Status.FAIL.value or v.outcome not in (Outcome.VANISHING, Outcome.NO_SIGNAL):
                    continue
                judged[i] = (f, replace(v, status=Status.WARN.value, message=v.message + (
                    f" The same modules are applied side by side ({len(members)} calls), and the call from "
                    f"'{healthy[0]}' carries a healthy signal: the shared weights learn from it, and this call "
                    "differs only in its input (a padded kernel on a map smaller than itself sees part of its "
                    "fan-in).")))
