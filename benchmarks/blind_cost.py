"""What the five checks variance cannot see cost an audit: ``initdiag.audit`` with them against the same audit
without them, alternated in pairs, on torchvision's ResNet-50 and a 12-layer GPT-2 (Hugging Face's default
``GPT2Config``, 124 M parameters).

"Without" removes exactly what they add: the measurements structure discovery takes at residual adds and
softmax attentions (its :class:`~initdiag.structure.measure.Measurer`), the one-batch extras of the audit's
first batch (:class:`~initdiag.recording.extras.Extras`) and the five checks themselves. Prints the median
ratio of the paired times with a 95% bootstrap interval, at the default thread count. Usage::

    python benchmarks/blind_cost.py --pairs 5
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from _measure import interval
from torch import nn

import initdiag
from initdiag.audit import run as audit_run
from initdiag.checks import CHECKS
from initdiag.structure import graph

NEW = ("output_scale", "branch_scale", "attention_entropy", "correlation", "precision")


class _Silent:
    def __init__(self, graph_: Any) -> None:
        self.graph = graph_

    def before(self, func: Any, args: Any) -> None:
        return None

    def after(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def without_blind_checks() -> Iterator[None]:
    """The audit as it is without the five checks and their measurements."""
    measurer, extras = graph.Measurer, audit_run.Extras
    checks = [c for c in CHECKS if c.name in NEW]
    graph.Measurer = _Silent  # type: ignore[assignment, misc]
    audit_run.Extras = lambda *a, **k: None  # type: ignore[assignment, misc]
    for check in checks:
        check.run = lambda ctx: []  # type: ignore[method-assign]
    try:
        yield
    finally:
        graph.Measurer, audit_run.Extras = measurer, extras  # type: ignore[misc]
        for check in checks:
            del check.run


def _models() -> dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]]:
    import torchvision
    from transformers import GPT2Config, GPT2LMHeadModel

    return {
        "resnet50 (4 x 8 at 3x128x128)": (lambda: torchvision.models.resnet50(),
                                          {"input_shape": (3, 128, 128), "batches": 4, "batch_size": 8}),
        "gpt2 12 layers (4 x 4 x 128 tokens)": (lambda: GPT2LMHeadModel(GPT2Config()),
                                                {"input_shape": (128,), "input_dtype": "long", "batches": 4,
                                                 "batch_size": 4}),
    }


def _seconds(model: nn.Module, kw: dict[str, Any]) -> float:
    start = time.perf_counter()
    initdiag.audit(model, **kw)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name, (build, kw) in _models().items():
        torch.manual_seed(0)
        model = build()
        _seconds(model, kw)  # warm-up: first-call costs (allocator, kernels) on neither side
        with_s, without_s = [], []
        for k in range(args.pairs):
            order = (True, False) if k % 2 == 0 else (False, True)
            for on in order:
                if on:
                    with_s.append(_seconds(model, kw))
                else:
                    with without_blind_checks():
                        without_s.append(_seconds(model, kw))
        ratio = np.asarray(with_s) / np.asarray(without_s)
        med, lo, hi = interval(ratio, rng)
        print(f"{name}: with {np.median(with_s):.2f} s, without {np.median(without_s):.2f} s, "
              f"ratio {med:.3f} (95% CI {lo:.3f}-{hi:.3f}), {args.pairs} pairs, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
