"""Chains through a recurrence: one module's weights applied again and again along the chain (an RNN cell
called once per time step, a block shared across depth).

Along a recurrence the per-step factor is the recurrent Jacobian's: below 1 the gradient of a late step
reaches only the last few steps before it and the hidden state forgets early inputs; above 1 both blow up
(Pascanu, Mikolov & Bengio 2013; Bengio et al. 1994). Shared weights sum their gradient over every
application, so a vanishing recurrence still trains them from the applications near the loss: its memory is
short, which orthogonal or identity recurrent weights lengthen (Le et al. 2015; Saxe et al. 2014), but the
model learns. A vanishing recurrence therefore warns, with the memory in steps; an exploding one fails.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from ..vocab import Outcome, Status
from .evidence import RunEvidence
from .signal import SignalFit
from .verdict import Thresholds, Verdict

__all__ = ["recurrence", "recurrent_verdict"]


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
