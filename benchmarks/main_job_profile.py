"""Where the time of the main job (``initdiag report --model cnn``) goes, part by part, and what bounds it.

Each worker of ``initdiag report`` trains its runs with one thread, channels-last, the heap kept for reuse;
this script measures the same, in one process:
  1. the training step (Adam, batch 64) split by operator with torch's profiler: the convolutions forward
     and backward, ReLU and max-pooling forward and backward, the optimizer, the rest; the convolutions'
     arithmetic rate (multiply-adds x 2 / their time) says how close they run to this core's peak;
  2. ``initdiag.training.train`` over the same steps with and without the ``Recorder`` (``every=10``, the
     report's default), alternated, and one evaluation of the 10,000 test images;
  3. with ``--compile``: the eager step against ``torch.compile(model)`` (inductor), and its compile time;
  4. the fixed costs of a whole run (``initdiag report`` on 640 images: start-up and data, the workers' start,
     the report), from the time stamps of its progress lines;
and prints the full run's time as these parts predict it: steps x step time / workers + evaluations + fixed.

    python benchmarks/main_job_profile.py --data-dir MNIST_DIR [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from initdiag.backends.local import default_jobs
from initdiag.data import load_mnist
from initdiag.memory import keep_heap
from initdiag.models import seed_cnn
from initdiag.recording import Recorder
from initdiag.training import evaluate, prepare_model, train

CATEGORIES = {
    "convolutions, backward": ("convolution_backward",),
    "convolutions, forward": ("mkldnn_convolution", "_convolution", "aten::convolution"),
    "ReLU and max-pooling, backward": ("threshold_backward", "max_pool2d_with_indices_backward", "aten::fill_"),
    "ReLU and max-pooling, forward": ("max_pool2d_with_indices", "relu", "clamp_min"),
    "optimizer (Adam)": ("Optimizer.step", "lerp", "addcdiv", "sqrt", "_foreach"),
}


def conv_flops(batch: int) -> float:
    """Floating-point operations (2 per multiply-add) of the seed CNN's three convolutions, forward and
    backward (weight gradients of all three, input gradients of the second and third), for one batch."""
    forward = [26 * 26 * 32 * 1 * 9, 11 * 11 * 64 * 32 * 9, 3 * 3 * 64 * 64 * 9]  # MACs per image
    return 2.0 * batch * (sum(forward) + sum(forward) + sum(forward[1:]))


def make_step(x: torch.Tensor, y: torch.Tensor, compile_model: bool = False) -> Callable[[int], None]:
    """One training step of a fresh seed CNN on batch ``i`` of ``(x, y)``, as a worker takes it (channels-last,
    Adam, batch 64); ``compile_model``: through ``torch.compile(model)``."""
    model = prepare_model(seed_cnn(), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile_model else model

    def step(i: int) -> None:
        lo = (i * 64) % (len(x) - 64)
        xb = x[lo:lo + 64].contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(xb), y[lo:lo + 64]).backward()
        opt.step()

    return step


def median_ms(step: Callable[[int], None], steps: int, warmup: int = 30) -> float:
    """Median wall milliseconds of ``step`` over ``steps`` calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def step_profile(x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, dict[str, float]]:
    """Median ms per training step, and self CPU ms per step by category (torch.profiler)."""
    step = make_step(x, y)
    step_ms = median_ms(step, steps)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(100):
            step(i)
    parts = dict.fromkeys([*CATEGORIES, "everything else"], 0.0)
    total = 0.0
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / 100
        total += ms
        name = next((c for c, keys in CATEGORIES.items() if any(k in event.key for k in keys)), "everything else")
        parts[name] += ms
    return step_ms, {k: v * step_ms / total for k, v in parts.items()}


def compiled_step(x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    """(seconds to the end of the first compiled step, median ms per compiled step)."""
    start = time.perf_counter()
    step = make_step(x, y, compile_model=True)
    step(0)
    first = time.perf_counter() - start
    return first, median_ms(step, steps)


def recorder_cost(x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                  rounds: int) -> tuple[float, float]:
    """Median ms per step of ``train`` (one epoch over ``x``, evaluation on a small set) without and with
    ``Recorder(every=10)``, alternated."""
    plain: list[float] = []
    recorded: list[float] = []
    for _ in range(rounds):
        for side in (plain, recorded):
            torch.manual_seed(0)
            model = prepare_model(seed_cnn(), "cpu")
            start = time.perf_counter()
            if side is recorded:
                with Recorder(model, every=10):
                    train(model, x, y, tx, ty, epochs=1)
            else:
                train(model, x, y, tx, ty, epochs=1)
            side.append((time.perf_counter() - start) / (len(x) // 64) * 1e3)
    return statistics.median(plain), statistics.median(recorded)


def fixed_costs(data_dir: str) -> dict[str, float]:
    """Seconds of a 640-image ``initdiag report`` from its start to: the data loaded, the first run's training
    started, the last run's last epoch, the report written, the process's end."""
    marks: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "initdiag", "report", "--model", "cnn", "--data-dir",
                                 data_dir, "--epochs", "1", "--limit-train", "640", "--out", str(Path(tmp) / "r")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            if "initdiag: data:" in line:
                marks["data loaded"] = now
            elif "training:" in line:
                marks.setdefault("first run training", now)
            elif "epoch 1/1" in line:
                marks["last run trained"] = now
            elif line.startswith("Report written"):
                marks["report written"] = now
        if proc.wait() != 0:
            sys.exit("initdiag report failed")
        marks["process ended"] = time.perf_counter() - start
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST files (default: the bundled sample)")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of train() with/without Recorder")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile's step")
    args = parser.parse_args()
    data = load_mnist(args.data_dir, "mnist" if args.data_dir else "mnist-sample")
    keep_heap()
    torch.set_num_threads(1)
    x, y = data.train_x[:19200], data.train_y[:19200]
    step_ms, parts = step_profile(x, y, args.steps)
    rate = conv_flops(64) / ((parts["convolutions, forward"] + parts["convolutions, backward"]) / 1e3) / 1e9
    print(f"training step (1 thread, channels-last, Adam, batch 64): {step_ms:.1f} ms")
    for name, ms in parts.items():
        print(f"  {name:34s} {ms:5.1f} ms ({ms / step_ms:4.0%})")
    print(f"  the convolutions run at {rate:.0f} GFLOP/s")
    plain_ms, rec_ms = recorder_cost(x, y, data.test_x[:500], data.test_y[:500], args.rounds)
    print(f"train() per step: plain {plain_ms:.1f} ms, Recorder(every=10) {rec_ms:.1f} ms "
          f"({rec_ms / plain_ms:.3f})")
    model = prepare_model(seed_cnn(), "cpu")
    evaluate(model, data.test_x, data.test_y)
    start = time.perf_counter()
    evaluate(model, data.test_x, data.test_y)
    eval_s = time.perf_counter() - start
    print(f"evaluation of {len(data.test_x)} test images: {eval_s:.2f} s")
    if args.compile:
        first, compiled_ms = compiled_step(x, y, args.steps)
        print(f"torch.compile: {compiled_ms:.1f} ms per step against {step_ms:.1f} eager "
              f"({compiled_ms / step_ms:.2f}); {first:.0f} s to the end of the first step (less when inductor's "
              "on-disk cache already holds the graphs)")
    marks = fixed_costs(args.data_dir) if args.data_dir else {}
    if marks:
        print("a 640-image run, seconds from its start: " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
        trained = marks["last run trained"] - marks["first run training"]
        fixed = marks["process ended"] - trained
        steps = 4 * 5 * -(-60000 // 64)  # 4 initializers x 5 epochs x 938 steps
        workers = default_jobs(4, torch.device("cpu"))
        predicted = steps * rec_ms / 1e3 / workers + 4 * 5 * eval_s / workers + fixed
        floor = steps * (parts["convolutions, forward"] + parts["convolutions, backward"]) / 1e3 / workers
        print(f"the default full run as these parts predict it ({workers} workers): {predicted:.0f} s "
              f"(steps {steps * rec_ms / 1e3 / workers:.0f} s, evaluations {4 * 5 * eval_s / workers:.0f} s, "
              f"fixed {fixed:.0f} s); its convolutions alone: {floor:.0f} s")


if __name__ == "__main__":
    main()
