"""``initdiag.fix`` on every known-good model of the zoo (``tests/zoo.py``): each must pass its audit and come
back unchanged, its ``state_dict`` bitwise equal to the model as built.

    python benchmarks/fix_zoo.py [--only NAME,NAME]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

import initdiag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated zoo case names")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    sys.modules.pop("zoo", None)
    zoo = importlib.import_module("zoo")
    changed: list[str] = []
    n = 0
    for case in zoo.select([s for s in args.only.split(",") if s]):
        if not case.healthy or not case.available():
            continue
        model = case.build()
        given = {k: v.detach().clone() for k, v in model.state_dict().items()}
        start = time.perf_counter()
        result = initdiag.fix(model, **case.audit_kwargs())
        after = result.model.state_dict()
        same = after.keys() == given.keys() and all(torch.equal(given[k], v) for k, v in after.items())
        n += 1
        if not (result.before.passed and not result.changes and same):
            changed.append(case.name)
        print(f"{case.name:32s} audit passed {result.before.passed}  changes {len(result.changes)}  state_dict "
              f"bitwise equal {same}  {time.perf_counter() - start:.1f} s", flush=True)
    print(f"\n{n} known-good zoo models: {n - len(changed)} unchanged; changed or failing: {changed or 'none'}")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
