"""End-to-end time and peak memory of ``initdiag report`` next to the same experiment as a plain
PyTorch loop (benchmarks/plain_loop.py), alternated, in one run. Prints a table of ratios.

    python benchmarks/full_run.py --data-dir MNIST_DIR            # the full default run (~17 min)
    python benchmarks/full_run.py --data-dir MNIST_DIR --epochs 1 --rounds 1   # a quick look
    python benchmarks/full_run.py --data-dir MNIST_DIR --keep reports/example  # also keep the report

initdiag runs exactly as a user would run it (``initdiag report --model cnn --data-dir DIR``, plus
``--out``); the plain loop is a straightforward single-process PyTorch loop with torch's defaults.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from _measure import Measured, measure

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="alternations of (initdiag, plain loop)")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--keep", default=None, help="write the last initdiag report to this directory")
    args = parser.parse_args()
    common = ["--data-dir", args.data_dir] + (["--epochs", str(args.epochs)] if args.epochs != 5 else [])
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train)]
    ours: list[Measured] = []
    plain: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(args.keep) if args.keep and r == args.rounds - 1 else Path(tmp) / f"r{r}"
            cmd = [sys.executable, "-m", "initdiag", "report", "--model", "cnn", *common, "--out", str(out)]
            if args.jobs:
                cmd += ["--jobs", str(args.jobs)]
            ours.append(measure(cmd))
            plain.append(measure([sys.executable, str(HERE / "plain_loop.py"), *common]))
            for name, m in (("initdiag report", ours[-1]), ("plain PyTorch loop", plain[-1])):
                if m.returncode != 0:
                    sys.exit(f"{name} failed:\n{m.output}")
            accs = re.findall(r"^(\w+)\s+0\s+(0\.\d+)", ours[-1].output, re.M)
            print(f"round {r}: initdiag {ours[-1].seconds:.1f} s ({ours[-1].peak_rss_mib:.0f} MiB peak), "
                  f"plain {plain[-1].seconds:.1f} s ({plain[-1].peak_rss_mib:.0f} MiB peak); "
                  f"initdiag accuracies {dict(accs)}", flush=True)
            print("  plain accuracies: " + "; ".join(re.findall(r"^\w+: test accuracy [\d.]+", plain[-1].output,
                                                                re.M)), flush=True)
    t_ours = statistics.median(m.seconds for m in ours)
    t_plain = statistics.median(m.seconds for m in plain)
    print("\n| what | wall time (s) | ratio to plain loop | peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    print(f"| initdiag report (diagnostics + report) | {t_ours:.0f} | {t_ours / t_plain:.2f} | "
          f"{max(m.peak_rss_mib for m in ours):.0f} |")
    print(f"| plain PyTorch loop | {t_plain:.0f} | 1.00 | {max(m.peak_rss_mib for m in plain):.0f} |")


if __name__ == "__main__":
    main()
