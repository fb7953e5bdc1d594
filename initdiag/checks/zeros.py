"""All-zero weights: why such a network cannot train, said with the run's own evidence."""

from __future__ import annotations

import numpy as np

from .evidence import RunEvidence, hidden_activations, pretty_activation
from .signal import SignalFit

__all__ = ["zero_init_note"]


def zero_init_note(ev: RunEvidence, forward: SignalFit | None, backward: SignalFit | None) -> str:
    """Plain explanation, with this run's evidence, of why all-zero weights cannot train ('' otherwise)."""
    weights = [w for w, _ in ev.weights_init.values()]
    if not weights or any(np.any(w != 0) for w in weights):
        return ""
    act = pretty_activation(next(iter(dict.fromkeys(a for a in hidden_activations(ev))), "linear"))
    n = forward.n_layers if forward is not None else len(weights)
    parts = [f"Zero init is not appropriate with {act}: every weight is 0, so"]
    if forward is not None:
        parts.append(f"(1) no signal: each layer outputs only its bias, and the activation variance is 0 "
                     f"in {len(forward.no_signal)} of {forward.n_layers} layers;")
    first = next(iter(ev.weights_init.items()))
    parts.append(f"(2) symmetric neurons: all {first[1][0].shape[0]} neurons of layer '{first[0]}' (and of "
                 "every layer) are identical, get identical gradients and stay identical;")
    grads = ev.frame.loc[(ev.frame["kind"] == "weight_grad") & (ev.frame["stat"] == "var")]
    if len(grads):
        grads = grads[grads["step"] == grads["step"].min()]
    zero_grads = int((grads["value"] == 0).sum())
    last = ev.weight_layers[-1].name if ev.weight_layers else "the output layer"
    back = (f"dL/dy is 0 in {len(backward.no_signal)} of {backward.n_layers} layers and " if backward else "")
    parts.append(f"(3) only the output bias learns: {back}{zero_grads} of {len(grads) or n} weight gradients are "
                 f"0, so nothing but the bias of the output layer '{last}' moves, and the model predicts the "
                 "same class for every input.")
    return " " + " ".join(parts)
