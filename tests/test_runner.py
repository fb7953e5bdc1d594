"""Parallel runs, saving runs as they end, interruption and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from initdiag.backends import local as runner
from initdiag.backends.local import execute, plan
from initdiag.cli import main
from initdiag.config import ExperimentConfig
from initdiag.data import load_mnist
from initdiag.initializers import parse_init_list
from initdiag.models import ModelSpec
from initdiag.store import RunStore, atomic_write

SMALL = ["--dataset", "mnist-sample", "--limit-train", "192", "--epochs", "1", "--format", "json,html"]


def _runs(path: Path) -> list[tuple[str, float, float]]:
    summary = json.loads((path / "summary.json").read_text())
    return [(r["name"], r["test_accuracy"], r["test_loss"]) for r in summary["runs"]]


def test_parallel_runs_equal_serial_runs() -> None:
    data = load_mnist(dataset="mnist-sample", limit_train=128)
    config = ExperimentConfig(model=ModelSpec("mlp"), initializers=parse_init_list("xavier,he,lecun"), epochs=1,
                              seeds=1, probe_size=64)
    tasks = plan(config)
    serial = execute(config, data, tasks, jobs=1, device=__import__("torch").device("cpu"))
    done: list[str] = []
    parallel = execute(config, data, tasks, jobs=2, device=__import__("torch").device("cpu"),
                       on_done=lambda r: done.append(r.name))
    assert [r.name for r in parallel] == [r.name for r in serial]
    assert sorted(done) == sorted(r.name for r in serial)
    for a, b in zip(serial, parallel, strict=True):
        assert a.test_accuracy == pytest.approx(b.test_accuracy, abs=2e-4)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-4)
        np.testing.assert_allclose(a.step_losses, b.step_losses, rtol=1e-4)
        va = a.frame[(a.frame.step == 0) & (a.frame.stat == "var")].value.to_numpy()
        vb = b.frame[(b.frame.step == 0) & (b.frame.stat == "var")].value.to_numpy()
        np.testing.assert_allclose(va, vb, rtol=1e-4)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.bin"
    atomic_write(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    from initdiag.errors import OutputError

    with pytest.raises(OutputError, match="No space left"):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_interrupt_keeps_finished_runs_and_resume_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    full = tmp_path / "full"
    assert main(["report", *SMALL, "--init", "zeros,xavier,he", "--jobs", "1", "--out", str(full)]) == 0
    capsys.readouterr()

    real = runner.run_one
    calls: list[str] = []

    def flaky(config, spec, seed, data, progress, device):  # type: ignore[no-untyped-def]
        calls.append(spec.label)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config, spec, seed, data, progress, device)

    monkeypatch.setattr(runner, "run_one", flaky)
    part = tmp_path / "part"
    assert main(["report", *SMALL, "--init", "zeros,xavier,he", "--jobs", "1", "--out", str(part)]) == 130
    err = capsys.readouterr().err
    assert "missing: he/seed0" in err and f"--resume {part}" in err
    summary = json.loads((part / "summary.json").read_text())
    assert summary["missing"] == ["he/seed0"]
    assert [r["name"] for r in summary["runs"]] == ["zeros/seed0", "xavier/seed0"]
    assert "he/seed0" in (part / "report.html").read_text()  # the banner names what is missing
    assert sorted(p.name for p in (part / ".initdiag" / "runs").iterdir()) == [
        "xavier_seed0.json", "xavier_seed0.npz", "zeros_seed0.json", "zeros_seed0.npz"]

    monkeypatch.setattr(runner, "run_one", real)
    assert main(["report", "--resume", str(part)]) == 0
    assert _runs(part) == _runs(full)
    assert json.loads((part / "summary.json").read_text())["missing"] == []


def test_resume_rejects_other_settings_and_non_report_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--resume", str(tmp_path)]) == 2
    assert "not an initdiag report directory" in capsys.readouterr().err
    RunStore(tmp_path).save_plan(ExperimentConfig(), ["report"])
    assert main(["report", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err


def test_sigterm_writes_partial_report_and_exits_143(tmp_path: Path) -> None:
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "initdiag", "report", "--dataset", "mnist-sample", "--limit-train", "128",
           "--epochs", "1", "--init", "zeros,xavier,he,lecun,orthogonal,he-uniform", "--jobs", "1",
           "--format", "json", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = out / ".initdiag" / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (runs.is_dir() and any(runs.iterdir())):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] and summary["missing"]
    assert len(summary["runs"]) + len(summary["missing"]) == 6
