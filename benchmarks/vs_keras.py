"""initdiag against the original Keras script, alternated on the same machine and MNIST files.

TensorFlow is not a dependency of initdiag and not part of CI: install it in its own venv first,
    python3 -m venv TF_VENV && TF_VENV/bin/pip install tensorflow-cpu
then
    python benchmarks/vs_keras.py --tf-python TF_VENV/bin/python --data-dir MNIST_DIR [--rounds 2]
It prints each run's wall time and accuracies and the median ratio initdiag / Keras.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from _measure import measure

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", required=True, help="a python with TensorFlow installed")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", default=None, help="keep the last initdiag report in this directory")
    args = parser.parse_args()
    keras_s, ours_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            k = measure([args.tf_python, str(HERE / "keras_original.py"), "--data-dir", args.data_dir,
                         "--epochs", str(args.epochs)], env={"TF_CPP_MIN_LOG_LEVEL": "2"})
            out = Path(args.keep) if args.keep and r == args.rounds - 1 else Path(tmp) / f"r{r}"
            epochs = ["--epochs", str(args.epochs)] if args.epochs != 5 else []  # the default run, as users run it
            o = measure([sys.executable, "-m", "initdiag", "report", "--model", "cnn", "--data-dir", args.data_dir,
                         *epochs, "--out", str(out)])
            for name, m in (("keras", k), ("initdiag", o)):
                if m.returncode != 0:
                    sys.exit(f"{name} failed:\n{m.output[-3000:]}")
            keras_s.append(k.seconds)
            ours_s.append(o.seconds)
            print(f"round {r}: keras {k.seconds:.0f} s, initdiag {o.seconds:.0f} s, ratio {o.seconds / k.seconds:.2f}; "
                  f"peak memory (PSS of the process tree) keras {k.peak_rss_mib:.0f} MiB, "
                  f"initdiag {o.peak_rss_mib:.0f} MiB")
            print("  keras:    " + "; ".join(re.findall(r"^\w+: test accuracy [\d.]+", k.output, re.M)))
            print("  initdiag: " + "; ".join(f"{a}: test accuracy {b}" for a, b in
                                             re.findall(r"^(\w+)\s+0\s+(0\.\d+)", o.output, re.M)))
    print(f"\nmedian wall time: Keras {statistics.median(keras_s):.0f} s, initdiag {statistics.median(ours_s):.0f} s; "
          f"ratio initdiag / Keras = {statistics.median(ours_s) / statistics.median(keras_s):.2f}")


if __name__ == "__main__":
    main()
