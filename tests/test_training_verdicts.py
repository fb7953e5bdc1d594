"""``initdiag report`` judges training itself: the loss that rises (``unstable``), the first epoch that does not
learn under plain SGD (``stalled``, He et al. 2015), and the dashboards of ``--tensorboard``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from initdiag.cli import main

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def _runs(out: Path) -> dict[str, Any]:
    return {r["initializer"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}


def _verdict(run: dict[str, Any], check: str) -> dict[str, Any]:
    return next(v for v in run["verdicts"] if v["check"] == check)


def test_a_loss_that_rises_while_finite_is_unstable_though_the_init_is_healthy(tmp_path: Path) -> None:
    """30 linear layers at LeCun init keep unit gain at initialization (every signal check passes), and Adam at
    lr 0.003 sends the loss from ln 10 to ~50 without a NaN: only the training-phase verdict says so."""
    out = tmp_path / "r"
    code = main(["report", "--model", "deep-mlp", "--depth", "30", "--width", "128", "--activation", "linear",
                 "--init", "lecun", "--lr", "0.003", "--epochs", "1", "--limit-train", "1024",
                 "--dataset", "mnist-sample", "--format", "json", "--out", str(out), "--fail-on", "unstable"])
    assert code == 3
    run = _runs(out)["lecun"]
    assert {(v["signal"], v["outcome"]) for v in run["verdicts"] if v["family"] == "signal"} == {
        ("forward", "healthy"), ("backward", "healthy")}
    unstable = _verdict(run, "unstable")
    assert unstable["status"] == "fail" and unstable["phase"] == "training"
    assert unstable["effect"]["ratio"] > 5 and 0 <= unstable["effect"]["step"] < 16
    assert _verdict(run, "diverged")["status"] == "pass"
    assert not any(v["check"] == "stalled" for v in run["verdicts"])  # the rise is the finding


def test_sgd_on_a_30_layer_relu_net_stalls_under_xavier_and_learns_under_he(tmp_path: Path) -> None:
    """He et al. 2015 (Fig. 3): with plain SGD the 30-layer ReLU net does not learn under Xavier init."""
    out = tmp_path / "r"
    code = main(["report", "--model", "deep-mlp", "--depth", "30", "--width", "128", "--activation", "relu",
                 "--init", "xavier,he", "--optimizer", "sgd", "--lr", "0.01", "--epochs", "1",
                 "--limit-train", "2048", "--batch-size", "16", "--dataset", "mnist-sample", "--format", "json",
                 "--out", str(out),
                 "--jobs", "1", "--tensorboard", str(tmp_path / "tb")])
    assert code == 0
    runs = _runs(out)
    assert json.loads((out / "summary.json").read_text())["config"]["optimizer"] == "sgd"
    assert _verdict(runs["xavier"], "stalled")["status"] == "fail"
    assert _verdict(runs["he"], "stalled")["status"] == "pass"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("xavier_seed0", "he_seed0"):
        acc = EventAccumulator(str(tmp_path / "tb" / name), size_guidance={"scalars": 0})
        acc.Reload()
        assert "initdiag/forward/var/1" in acc.Tags()["scalars"]


def test_the_optimizer_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--optimizer", "rmsprop", "--dataset", "mnist-sample"]) == 2
    assert "optimizer" in capsys.readouterr().err
