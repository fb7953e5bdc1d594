"""How fast the CLI answers: what needs no model (``initdiag --help``, ``initdiag list`` and a usage error) and a
small audit (torchvision's ResNet-18, 2 batches of 4 at 3 x 64 x 64, the summary as JSON: the imports a first
audit pays, next to its own work), each in a fresh process (as a user types it), against ``python -c "import
torch"`` (what every answer cost when the CLI imported torch before parsing), alternated. Prints the median wall
time of each with a 95% bootstrap interval of the median."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _measure import interval

COMMANDS = {
    "initdiag --help": ["--help"],
    "initdiag list": ["list"],
    "initdiag report --epochs x (usage error)": ["report", "--epochs", "x"],
    "initdiag audit (ResNet-18, 2 x 4 x 3 x 64 x 64)": ["audit", "torchvision.models:resnet18", "--input-shape",
                                                        "3,64,64", "--batches", "2", "--batch-size", "4",
                                                        "--format", "json", "--out"],
}


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-audit", action="store_true", help="leave the audit out")
    args = parser.parse_args()
    exe = shutil.which("initdiag")
    cli = [exe] if exe else [sys.executable, "-m", "initdiag"]
    torch_import = [sys.executable, "-c", "import torch"]
    commands = {k: v for k, v in COMMANDS.items() if not (args.no_audit and v[0] == "audit")}
    times: dict[str, list[float]] = {name: [] for name in [*commands, "python -c 'import torch'"]}
    with tempfile.TemporaryDirectory(prefix="initdiag-cli-") as out:
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(_seconds([*cli, *argv, *([out] if argv[-1] == "--out" else [])]))
            times["python -c 'import torch'"].append(_seconds(torch_import))
    rng = np.random.default_rng(0)
    for name, values in times.items():
        median, low, high = interval(np.array(values), rng)
        print(f"{name:<45} median {median:.2f} s ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
