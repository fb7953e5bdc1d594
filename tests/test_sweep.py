"""``initdiag sweep``: the grid complete and each run once, the same numbers on a real local Ray instance as
on local worker processes, a Ray worker killed mid-run and the sweep still complete, ``--resume`` after the
driver is interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from initdiag.cli import main

pytestmark = pytest.mark.slow

GRID = ["--model", "deep-mlp", "--depth", "3,6", "--width", "24", "--activation", "relu", "--init", "he,xavier",
        "--seeds", "1", "--epochs", "1", "--limit-train", "384", "--record-every", "4", "--dataset", "mnist-sample",
        "--format", "json"]


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def _accuracies(out: Path) -> dict[tuple[int, str, int], float]:
    return {(r["depth"], r["initializer"], r["seed"]): r["test_accuracy"] for r in _summary(out)["runs"]}


def _saved(out: Path) -> list[Path]:
    return sorted(out.glob("cells/*/.initdiag/runs/*.json"))


def test_the_grid_on_ray_gives_the_numbers_of_local_workers(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    assert main(["sweep", *GRID, "--out", str(tmp_path / "local")]) == 0
    assert main(["sweep", *GRID, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    ray_summary = _summary(tmp_path / "ray")
    assert ray_summary["kind"] == "sweep" and ray_summary["backend"] == "ray"
    assert {r["backend"] for r in ray_summary["runs"]} == {"ray"}
    local, on_ray = _accuracies(tmp_path / "local"), _accuracies(tmp_path / "ray")
    assert len(on_ray) == 4 and sorted(on_ray) == sorted(local)
    assert on_ray == local  # same seeds, same thread count: the same numbers, bit for bit
    assert len(_saved(tmp_path / "ray")) == 4  # each run once


def _ray_task_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"ray::_task" in cmdline:
                found.append(int(entry.name))
    return found


def test_a_ray_worker_killed_mid_run_is_retried_and_counted_once(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from initdiag.backends.sweep import run_sweep
    from initdiag.config import ExperimentConfig
    from initdiag.data import load_mnist
    from initdiag.initializers import parse_init_list
    from initdiag.sweep_config import SweepConfig, sweep_models

    models = sweep_models("deep-mlp", "3,6", "24", "relu")
    base = ExperimentConfig(model=models[0], initializers=parse_init_list("he,xavier"), epochs=2, limit_train=1024,
                            record_every=4, dataset="mnist-sample")
    config = SweepConfig(base, models, "ray")
    data = load_mnist(None, "mnist-sample", 1024)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while not killed and time.monotonic() < deadline:
            pids = _ray_task_pids()
            if pids:
                time.sleep(1.0)  # mid-run, not at its start
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_sweep(config, data, tmp_path / "out")
    thread.join(timeout=1)
    assert killed, "no Ray worker was found running a task"
    assert not result.missing and sum(len(c.runs) for c in result.cells) == 4
    assert len(_saved(tmp_path / "out")) == 4
    local = run_sweep(SweepConfig(base, models, "local"), data, tmp_path / "local")
    assert [r.test_accuracy for c in result.cells for r in c.runs] == \
        [r.test_accuracy for c in local.cells for r in c.runs]


def test_an_interrupted_sweep_resumes_and_runs_only_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "initdiag", "sweep", *GRID, "--jobs", "1", "--out", str(out)]
    # a test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then
    # leaves it ignored: the child gets the default back, as a terminal's Ctrl-C would find it
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not _saved(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    kept = len(_saved(out))
    assert 1 <= kept < 4 and "--resume" in err
    assert main(["sweep", "--resume", str(out)]) == 0
    assert len(_saved(out)) == 4 and len(_summary(out)["runs"]) == 4
    assert main(["sweep", "--resume", str(out), "--depth", "9"]) == 2  # settings come from the directory


def test_a_sweep_takes_the_seed_cnn_and_a_model_given_by_reference(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n"
        "def small():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    out = tmp_path / "s"
    code = main(["sweep", "--model", f"cnn,{tmp_path / 'mynet.py'}:small", "--init", "he", "--seeds", "1",
                 "--epochs", "1", "--limit-train", "256", "--dataset", "mnist-sample", "--format", "json",
                 "--out", str(out)])
    assert code == 0
    runs = _summary(out)["runs"]
    assert len(runs) == 2 and {r["model"] for r in runs} == {"cnn", f"{tmp_path / 'mynet.py'}:small"}
    assert main(["sweep", "--model", "nope", "--dataset", "mnist-sample"]) == 2
