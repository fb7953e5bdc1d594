"""Repairs side by side on the zoo's broken models: the ``lsuv`` package (ducha-aiki/lsuv), initdiag's
``lsuv_repair``, and ``initdiag.fix`` with ``method="theory"`` and ``method="lsuv"`` (when ``initdiag.fix``
exists).

For each case (``tests/zoo.py``) and repair: the forward passes it ran (a forward pre-hook on the root module:
partial forwards count as one each), the calls of its Conv/Linear modules (the work those forwards did), its
seconds (``fix``: both audits included), the ``initdiag.audit`` verdict of the repaired model (``pass`` or the
failing checks), and the cross-entropy of the original and each repaired model trained ``--steps`` Adam steps
(lr 1e-3) from the same seed on the same batches (standard normal inputs, random labels: a fit that only a
trainable initialization makes fast): the first step's loss and the mean over the last quarter of the steps.

The ``lsuv`` package and ``lsuv_repair`` run on the same batch, the audit's first (what ``fix`` uses), both
without orthogonal pre-initialization unless ``--orthogonal`` (the package's own default is with it). One
seed, one run: the losses are single trajectories, not intervals. Usage::

    python benchmarks/fix_vs_lsuv.py [--cases a,b] [--steps 50] [--threads 1] [--orthogonal] [--out rows.jsonl]

On 2 shared CPU cores the four small cases take about 2.5 minutes; ``vgg11_normal1`` alone about 13 more (its
128 M parameters make each Adam step seconds long: leave it out with ``--cases`` for a quick run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import initdiag
from initdiag.audit.inputs import Inputs
from initdiag.audit.run import audit_loss
from initdiag.repair.lsuv import lsuv_repair
from initdiag.structure import discover

TESTS = Path(__file__).resolve().parents[1] / "tests"
CASES = ("mlp30_relu_default", "cnn30_default", "vgg11_normal1", "resnet18_no_norm_he", "mlp10_tanh_normal1",
         "timm_vit_tiny_normal1", "gpt2_6l_normal1")
MAPS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _zoo() -> Any:
    """``tests/zoo.py`` (benchmarks/ has its own zoo.py, so tests/ goes first on the path)."""
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("zoo", None)
    return importlib.import_module("zoo")


@dataclass
class Row:
    case: str
    method: str
    forwards: int = 0
    layer_calls: int = 0
    seconds: float = 0.0
    verdict: str = ""
    unconverged: list[str] = field(default_factory=list)
    note: str = ""
    loss_first: float = math.nan
    loss_tail: float = math.nan
    losses: list[float] = field(default_factory=list)


@contextlib.contextmanager
def counting(model: nn.Module) -> Iterator[dict[str, int]]:
    """Counts root forwards and Conv/Linear calls while inside (hooks copied with the model count too)."""
    counts = {"forwards": 0, "layer_calls": 0}

    def root(*_: Any) -> None:
        counts["forwards"] += 1

    def layer(*_: Any) -> None:
        counts["layer_calls"] += 1

    handles = [model.register_forward_pre_hook(root)]
    handles += [m.register_forward_pre_hook(layer) for m in model.modules() if isinstance(m, MAPS)]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def verdict(model: nn.Module, case: Any) -> str:
    result = initdiag.audit(model, **case.audit_kwargs())
    failed = sorted({c for run in result.runs for c in run.failed})
    return "pass" if result.passed else ("fail: " + "+".join(failed) if failed else "fail")


def train(model: nn.Module, batches: list[tuple[torch.Tensor, str, int]], steps: int, seed: int) -> list[float]:
    """``steps`` Adam steps (lr 1e-3) on a copy, cycling through ``batches`` (input, loss mode, label seed); each
    step's loss (the audit's: cross-entropy against random labels fixed per batch for class outputs)."""
    model = copy.deepcopy(model).train()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for i in range(steps):
        x, mode, label_seed = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = audit_loss(model(x), mode, torch.Generator().manual_seed(label_seed))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def tail(losses: list[float]) -> float:
    part = losses[-max(1, len(losses) // 4):]
    return float(np.mean(part)) if part and all(math.isfinite(v) for v in part) else math.inf


def run_package(model: nn.Module, x: torch.Tensor, orthogonal: bool) -> tuple[nn.Module, list[str], str]:
    import lsuv

    lsuv.lsuv_with_singlebatch(model, x, do_orthonorm=orthogonal, verbose=False)
    return model, [], ""


def run_ours(model: nn.Module, x: torch.Tensor, orthogonal: bool) -> tuple[nn.Module, list[str], str]:
    out = lsuv_repair(model, Inputs((x,)), discover(model, x), orthogonal=orthogonal)
    return model, list(out.unconverged), f"{len(out.changes)} changed, {out.forwards} forwards counted"


def run_fix(method: str, case: Any) -> Callable[[nn.Module, torch.Tensor, bool], tuple[nn.Module, list[str], str]]:
    def repair(model: nn.Module, x: torch.Tensor, orthogonal: bool) -> tuple[nn.Module, list[str], str]:
        result = initdiag.fix(model, method=method, verify_steps=0, orthogonal=orthogonal, **case.audit_kwargs())
        note = f"{len(result.changes)} changed, {result.rounds} round(s)"
        if result.unrepaired:
            note += f"; unrepaired: {'; '.join(result.unrepaired)}"
        return result.model, list(result.unconverged), note

    return repair


def bench_case(case: Any, steps: int, orthogonal: bool, train_batches: int) -> list[Row]:
    from initdiag.audit import make_inputs
    from initdiag.config import AuditConfig

    original = case.build()
    cfg = AuditConfig(input_shape=case.input_shape, batches=case.batches, batch_size=case.batch_size,
                      input_dtype=case.input_dtype, vocab=case.vocab, loss=case.loss)
    x = make_inputs(original, cfg)[0][0].first  # the audit's first batch: what fix's LSUV measures on
    trained_on = make_inputs(original, replace(cfg, batches=train_batches, seed=1))[0]
    batches = [(b.first, case.loss, 100 + k) for k, b in enumerate(trained_on)]  # labels drawn per batch
    methods: list[tuple[str, Callable[[nn.Module, torch.Tensor, bool], tuple[nn.Module, list[str], str]]]] = [
        ("lsuv package", run_package)] if importlib.util.find_spec("lsuv") else []
    methods.append(("lsuv_repair", run_ours))
    if hasattr(initdiag, "fix"):
        methods += [("fix theory", run_fix("theory", case)), ("fix lsuv", run_fix("lsuv", case))]
    rows = [Row(case.name, "original", verdict=verdict(original, case))]
    repaired: dict[str, nn.Module] = {"original": original}
    for name, repair in methods:
        model = copy.deepcopy(original)
        with counting(model) as counts:
            start = time.perf_counter()
            model, unconverged, note = repair(model, x, orthogonal)
            seconds = time.perf_counter() - start
        repaired[name] = model
        rows.append(Row(case.name, name, counts["forwards"], counts["layer_calls"], seconds, verdict(model, case),
                        unconverged, note))
    trained: dict[str, list[float]] = {}
    for row in rows:
        model = repaired[row.method]
        same = next((k for k in trained if _same_weights(repaired[k], model)), None)
        row.losses = trained[same] if same is not None else train(model, batches, steps, seed=0)
        if same is not None and same != row.method:
            row.note += f"; weights bitwise those of {same}"
        trained[row.method] = row.losses
        row.loss_first, row.loss_tail = (row.losses[0] if row.losses else math.nan), tail(row.losses)
    return rows


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _finite(value: Any) -> Any:
    """``value`` with NaN and inf as None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.3g}")


def print_table(rows: list[Row]) -> None:
    head = (f"{'case':<22} {'repair':<13} {'fwd':>5} {'layer calls':>11} {'s':>7}  {'loss 1st':>9} {'loss end':>9}  "
            "verdict")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.case:<22} {r.method:<13} {r.forwards:>5} {r.layer_calls:>11} {r.seconds:>7.2f}  "
              f"{_fmt(r.loss_first):>9} {_fmt(r.loss_tail):>9}  {r.verdict}"
              + (f"  [unconverged: {', '.join(r.unconverged)}]" if r.unconverged else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated zoo case names")
    parser.add_argument("--steps", type=int, default=50, help="Adam steps of each trained model (default 50)")
    parser.add_argument("--train-batches", type=int, default=4, help="distinct batches the training cycles through")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--orthogonal", action="store_true", help="orthogonal pre-initialization in both LSUVs")
    parser.add_argument("--out", type=Path, help="write one JSON line per row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = _zoo()
    if importlib.util.find_spec("lsuv") is None:
        print("the lsuv package is not installed (pip install lsuv): its rows are left out")
    if not hasattr(initdiag, "fix"):
        print("initdiag.fix is not available: measuring the lsuv package and lsuv_repair only")
    rows: list[Row] = []
    for name in args.cases.split(","):
        case = zoo.by_name(name)
        if not case.available():
            print(f"{name}: skipped (needs {', '.join(case.missing())})")
            continue
        start = time.perf_counter()
        case_rows = bench_case(case, args.steps, args.orthogonal, args.train_batches)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        rows += case_rows
        if args.out:
            with args.out.open("a") as f:
                for r in case_rows:
                    f.write(json.dumps(_finite({**asdict(r), "steps": args.steps, "orthogonal": args.orthogonal}))
                            + "\n")
    print(f"\n{args.steps} Adam steps (lr 1e-3), loss end = mean of the last quarter; fwd = root forwards "
          f"(partial ones included), layer calls = Conv/Linear calls; fix rows include both audits")
    print_table(rows)
    notes = [r for r in rows if r.note]
    if notes:
        print()
        for r in notes:
            print(f"{r.case} / {r.method}: {r.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
