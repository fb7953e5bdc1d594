"""Reliability: diverging runs, interruption and resume, reproducibility, bad input, a full disk, an
interrupted download, and models left as they were found, also when something fails.

The end-to-end runs use the bundled sample with a few hundred training images and a 1,000-image test set
(the sample's first), one torch thread, so the whole module stays well under a minute on two busy cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import re
import shlex
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import initdiag
from initdiag import backends, experiment
from initdiag import data as data_mod
from initdiag.backends import local as runner
from initdiag.checks import RunEvidence, analyze
from initdiag.cli import main
from initdiag.config import ExperimentConfig
from initdiag.data import MnistData, load_mnist
from initdiag.errors import ModelLoadError
from initdiag.initializers import InitSpec, parse_init_list
from initdiag.models import ModelSpec
from initdiag.series import FRAME_COLUMNS
from initdiag.store import RunStore
from initdiag.training import train

TEST_IMAGES = 1000
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _one_thread_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """One torch thread (much faster on a small shared machine), no network, a private cache."""
    monkeypatch.setenv("INITDIAG_OFFLINE", "1")
    monkeypatch.delenv("INITDIAG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_test_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_mnist`` as the CLI calls it, with the test set cut to its first TEST_IMAGES images."""
    real = data_mod.load_mnist

    def load(*args: Any, **kwargs: Any) -> MnistData:
        got = real(*args, **kwargs)
        prov = dataclasses.replace(got.provenance, test_size=TEST_IMAGES)
        return MnistData(got.train_x, got.train_y, got.test_x[:TEST_IMAGES], got.test_y[:TEST_IMAGES], prov)

    monkeypatch.setattr(data_mod, "load_mnist", load)


def strict_json(path: Path) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity (which Python's json would accept)."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> str:
    """Assert the CLI's contract for a known error: exit 2, the error in one line (the last one on stderr,
    after any progress lines), no traceback; return that line."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("initdiag: error: "), err
    assert sum(line.startswith("initdiag: error") for line in lines) == 1, err
    return lines[-1]


def small_data(n_train: int = 128, n_test: int = 300) -> MnistData:
    got = load_mnist(dataset="mnist-sample", limit_train=n_train)
    return MnistData(got.train_x, got.train_y, got.test_x[:n_test], got.test_y[:n_test], got.provenance)


# == diverging runs ==========================================================================================
DIVERGING = ["report", "--model", "deep-mlp", "--depth", "30", "--width", "64", "--init", "he,random:std=3",
             "--dataset", "mnist-sample", "--limit-train", "128", "--jobs", "1"]
"""random with std 3 on 30 ReLU layers of 64 units: each layer multiplies the variance by 64 x 9 / 2, so the
logits overflow float32 and the loss is NaN/Inf at the very first step; He trains normally."""


def _svg_blocks(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)


def test_diverging_run_stops_at_the_first_bad_step_and_the_report_carries_on(
        tmp_path: Path, small_test_set: None) -> None:
    out = tmp_path / "r"
    code, stdout, err = run_cli([*DIVERGING, "--epochs", "2", "--out", str(out)])
    assert code == 0, err
    assert "Traceback" not in err
    assert "[random:std=3/seed0] diverged" in err and "step 0" in err
    assert re.search(r"random:std=3\s+0\s+\S+\s+\S+\s+diverged", stdout)

    summary = strict_json(out / "summary.json")
    runs = {r["initializer"]: r for r in summary["runs"]}
    bad, good = runs["random:std=3"], runs["he"]
    assert (bad["status"], bad["diverged_step"]) == ("diverged", 0)
    assert [h["epoch"] for h in bad["history"]] == [1]  # stopped in epoch 1, not trained on
    assert bad["test_loss"] is None  # inf -> null, with the status saying why
    (verdict,) = [v for v in bad["verdicts"] if v["check"] == "diverged"]
    assert verdict["status"] == "fail" and verdict["layers"]  # the first layer whose statistics overflow
    # already the probe before the first step overflows (step -1); the loss is not finite at step 0
    assert verdict["effect"]["step"] == -1 and verdict["message"].startswith("Diverged at initialization")
    assert (good["status"], good["diverged_step"]) == ("ok", None)
    assert [h["epoch"] for h in good["history"]] == [1, 2]
    assert isinstance(good["test_loss"], float) and good["test_accuracy"] > 0
    assert [v["status"] for v in good["verdicts"] if v["check"] == "diverged"] == ["pass"]

    series = pd.read_csv(out / "series.csv")
    assert series["value"].dtype == np.float64
    assert set(series["run"]) == {"he/seed0", "random:std=3/seed0"}
    bad_train = series[(series["run"] == "random:std=3/seed0") & (series["phase"] == "train")]
    assert bad_train["step"].max() == 0  # nothing recorded after the step that diverged
    assert series.loc[series["run"] == "he/seed0", "step"].max() == 3  # 2 epochs x 2 steps

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "diverged at step 0" in html
    svgs = _svg_blocks(html)
    assert svgs
    for svg in svgs:  # a NaN or Inf coordinate would draw nothing (or break the figure)
        assert not re.search(r'="[^"]*\b(?:nan|inf)\b', svg, flags=re.IGNORECASE), svg[:300]
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_fail_on_diverged_exits_3_after_writing_the_report(tmp_path: Path, small_test_set: None) -> None:
    out = tmp_path / "r"
    code, _, err = run_cli([*DIVERGING, "--epochs", "1", "--format", "json", "--fail-on", "diverged",
                            "--out", str(out)])
    assert code == 3, err
    assert "failed checks: diverged" in err
    assert [r["status"] for r in strict_json(out / "summary.json")["runs"]] == ["ok", "diverged"]


class BlowUp(nn.Module):
    """A linear classifier whose logits become NaN from its ``at``-th training forward pass on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls > self.at:
                out = out * float("nan")
        return out


class Amplify(nn.Module):
    """Inputs x 1e25 into a linear layer of weights 1e-27: the logits (and so the loss) stay small, but
    dL/dW is ~1e24 per entry, beyond what a float32 gradient norm can hold."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.fill_(1e-27)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) * 1e25)


def test_training_stops_at_the_first_non_finite_loss_and_restores_the_mode() -> None:
    data = small_data(n_train=64 * 5, n_test=100)
    model = BlowUp(at=2)
    model.eval()
    outcome = train(model, data.train_x, data.train_y, data.test_x, data.test_y, epochs=3, batch_size=64)
    assert outcome.diverged_step == 2
    assert len(outcome.step_losses) == 3 and np.isfinite(outcome.step_losses[:2]).all()
    assert np.isnan(outcome.step_losses[2])
    assert len(outcome.history) == 1  # the epoch it diverged in is evaluated; no later epoch runs
    assert model.training is False  # the mode it was given


def test_a_gradient_norm_beyond_float32_stops_training_and_fails_the_check() -> None:
    data = small_data(n_train=128, n_test=100)
    outcome = train(Amplify(), data.train_x, data.train_y, data.test_x, data.test_y, epochs=1, batch_size=64)
    assert outcome.diverged_step == 0
    assert np.isfinite(outcome.step_losses).all() and np.isinf(outcome.grad_norms[0])
    ev = RunEvidence("r", "he", pd.DataFrame(columns=list(FRAME_COLUMNS)), (), {}, {},
                     outcome.step_losses, grad_norms=outcome.grad_norms)
    (verdict,) = [v for v in analyze(ev).verdicts if v.check == "diverged"]
    assert (verdict.status, verdict.effect["step"]) == ("fail", 0.0)
    assert "gradient norm is inf" in verdict.message


def test_a_run_whose_statistics_overflow_is_diverged_and_stops_there() -> None:
    """lr 10 on a deep ReLU net: the loss stays finite (~1e26) but activations and gradients overflow."""
    config = ExperimentConfig(model=ModelSpec("deep-mlp", depth=12, width=64), initializers=(InitSpec("he"),),
                              epochs=2, lr=10.0, probe_size=64, device="cpu")
    run = experiment.run_one(config, InitSpec("he"), 0, small_data(n_train=256, n_test=200))
    (verdict,) = [v for v in run.verdicts if v.check == "diverged"]
    assert verdict.status == "fail"
    assert run.status == "diverged" and run.diverged_step == verdict.effect["step"]
    assert len(run.step_losses) == run.diverged_step + 1 and len(run.history) == 1


def test_status_is_diverged_exactly_when_the_check_fails() -> None:
    ev = RunEvidence("r", "he", pd.DataFrame(columns=list(FRAME_COLUMNS)), (), {}, {},
                     np.array([1.0, 0.5]))
    assert experiment.diverged_step(analyze(ev).verdicts, None) is None
    frame = pd.DataFrame.from_records([{
        "run": "r", "initializer": "he", "seed": 0, "epoch": 0, "step": -1, "phase": "init", "layer": "fc",
        "depth": 0, "module": "Linear", "kind": "forward", "stat": "var", "value": np.inf}], columns=FRAME_COLUMNS)
    verdicts = analyze(dataclasses.replace(ev, frame=frame)).verdicts
    assert experiment.diverged_step(verdicts, None) == 0  # overflow at the init probe: step 0
    assert experiment.diverged_step(verdicts, 5) == 0


# == the model is left as found ===============================================================================
class FailsAtStep(nn.Module):
    """A small classifier (with BatchNorm buffers) whose ``at``-th forward pass with gradients raises."""

    def __init__(self, at: int, in_features: int = 784) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Linear(16, 10))
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                raise RuntimeError(f"boom at forward pass {self.at}")
        return self.net(x)


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def _assert_as_found(model: nn.Module, before: dict[str, Any], user_hooked: nn.Module) -> None:
    after = _state(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grads"], before["grads"], strict=True))
    for a, b in zip(after["grad_values"], before["grad_values"], strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert torch.equal(after["rng"], before["rng"])
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key
    for module in model.modules():
        assert not module._forward_pre_hooks
        assert len(module._forward_hooks) == (1 if module is user_hooked else 0)
        assert not module._backward_hooks
    assert all(not p._backward_hooks for p in model.parameters() if p._backward_hooks is not None)


def test_report_run_removes_its_hooks_and_restores_the_mode_when_training_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = FailsAtStep(at=3)
    model.eval()
    model.net[2].train()  # a mixed mode, restored module by module
    calls: list[int] = []
    model.net[1].register_forward_hook(lambda m, i, o: calls.append(1))
    monkeypatch.setattr(experiment, "build_model", lambda spec: model)
    config = ExperimentConfig(model=ModelSpec("mlp"), initializers=(InitSpec("he"),), epochs=1, probe_size=32,
                              device="cpu")
    with pytest.raises(RuntimeError, match="boom at forward pass 3"):
        experiment.run_one(config, InitSpec("he"), 0, small_data(n_train=256, n_test=100))
    modes = [m.training for m in model.modules()]
    assert modes == [False, False, False, False, True, False, False]
    for module in model.modules():
        assert not module._forward_pre_hooks
        assert len(module._forward_hooks) == (1 if module is model.net[1] else 0)
    assert all(not p._backward_hooks for p in model.parameters() if p._backward_hooks is not None)
    calls.clear()
    model(torch.rand(4, 1, 28, 28))
    assert calls == [1]  # the user's own hook still fires


class NoCopy(FailsAtStep):
    """Cannot be deep-copied, so the audit works on the model itself and must restore it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> NoCopy:
        raise TypeError("no copies")


@pytest.mark.parametrize("cls", [FailsAtStep, NoCopy])
def test_audit_leaves_the_model_as_found_when_the_model_fails(cls: Callable[..., FailsAtStep]) -> None:
    model = cls(at=2, in_features=12)
    model.net[4].eval()
    model.net[1].weight.grad = torch.ones_like(model.net[1].weight)
    model.net[4].bias.requires_grad_(False)
    model.net[1].register_forward_hook(lambda m, i, o: None)
    before = _state(model)
    with pytest.raises(ModelLoadError, match="boom at forward pass 2"):
        initdiag.audit(model, input_shape=(12,), inits=("keep", "he"), batches=3, batch_size=8)
    _assert_as_found(model, before, model.net[1])


# == reproducibility =========================================================================================
def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json without what legitimately changes between two runs: the creation time and durations."""
    summary = json.loads(json.dumps(summary))
    for key in ("created", "duration_seconds"):
        summary.pop(key)
    for run in summary["runs"]:
        run.pop("seconds")
    return summary


def test_the_recorded_command_reruns_to_identical_numbers(tmp_path: Path, small_test_set: None) -> None:
    out = tmp_path / "r"
    code, _, err = run_cli(["report", "--model", "mlp", "--init", "xavier,he", "--dataset", "mnist-sample",
                            "--limit-train", "192", "--epochs", "1", "--seed", "7", "--format", "json,html",
                            "--out", str(out)])
    assert code == 0, err
    first = strict_json(out / "summary.json")

    # everything needed to rerun it: the command, versions, seeds, the data and its checksums
    env = first["environment"]
    assert env["initdiag"] == initdiag.__version__ and env["torch"] == torch.__version__ and env["python"]
    assert (first["config"]["seed"], first["config"]["seeds"]) == (7, 1)
    files = first["dataset"]["files"]
    assert sorted(files) == sorted(NAMES) and all(re.fullmatch(r"[0-9a-f]{32}", md5) for md5 in files.values())
    html = (out / "report.html").read_text(encoding="utf-8")
    for text in (*files.values(), torch.__version__, "--seed 7", "--limit-train 192"):
        assert text in html, text

    argv = shlex.split(first["command"])
    assert argv[0] == "initdiag"
    code, _, err = run_cli(argv[1:])
    assert code == 0, err
    assert _stable(strict_json(out / "summary.json")) == _stable(first)


def test_resume_equals_the_uninterrupted_run_with_default_jobs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs left after an interruption run with the thread count they would have had, so the numbers
    are identical (a different thread count changes the last bits)."""
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    torch.set_num_threads(2)
    data = small_data(n_train=128, n_test=300)
    config = ExperimentConfig(model=ModelSpec("mlp"), initializers=parse_init_list("xavier,he,lecun"), epochs=1,
                              probe_size=64, device="cpu")
    full = runner.run_experiment(config, data, store=RunStore(tmp_path / "full"))
    store = RunStore(tmp_path / "part")
    for run in full.runs[:2]:
        store.save_run(run)
    resumed = runner.run_experiment(config, data, store=store)
    assert [r.name for r in resumed.runs] == [r.name for r in full.runs]
    for a, b in zip(full.runs, resumed.runs, strict=True):
        assert a.test_loss == b.test_loss, a.name
        np.testing.assert_array_equal(a.step_losses, b.step_losses)
        np.testing.assert_array_equal(a.frame["value"].to_numpy(), b.frame["value"].to_numpy())


def test_a_new_report_in_an_old_directory_does_not_reuse_its_runs(tmp_path: Path, small_test_set: None) -> None:
    argv = ["report", "--model", "mlp", "--init", "he", "--dataset", "mnist-sample", "--limit-train", "64",
            "--format", "json", "--jobs", "1", "--out", str(tmp_path / "r")]
    assert run_cli([*argv, "--epochs", "1"])[0] == 0
    code, _, err = run_cli([*argv, "--epochs", "2"])
    assert code == 0, err
    assert "resuming" not in err
    (run,) = strict_json(tmp_path / "r" / "summary.json")["runs"]
    assert [h["epoch"] for h in run["history"]] == [1, 2]


# == bad input ===============================================================================================
def test_debug_shows_the_traceback_of_a_known_error(tmp_path: Path) -> None:
    for argv in (["--debug", "report", "--model", "cnnn"], ["report", "--model", "cnnn", "--debug"]):
        code, _, err = run_cli([*argv, "--out", str(tmp_path / "o")])
        assert code == 2
        assert "Traceback (most recent call last)" in err and "UsageError" in err
        assert err.strip().splitlines()[-1] == ("initdiag: error: unknown model 'cnnn' (did you mean 'cnn'?); "
                                                "choose from cnn, mlp, deep-mlp")
    code, _, err = run_cli(["report", "--model", "cnnn", "--out", str(tmp_path / "o")])
    assert "did you mean 'cnn'" in one_line_error(code, err)


@pytest.mark.parametrize("argv,message", [
    (["--seed", "99999999999999999999"], "--seed must be at most 4294967295"),
    (["--seeds", "100000000000"], "--seeds must be at most 1000"),
    (["--seed", "4294967295", "--seeds", "2"], "the last seed (--seed + --seeds - 1) must be at most"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--record-every", "0"], "--record-every must be at least 1"),
    (["--init", "random:std=-1"], "std=-1 is out of range"),
    (["--limit-train", "10001"], "--limit-train 10,001 is larger than the 10,000 training images"),
])
def test_out_of_range_numbers(argv: list[str], message: str, tmp_path: Path) -> None:
    code, _, err = run_cli(["report", "--dataset", "mnist-sample", "--epochs", "1", *argv,
                            "--out", str(tmp_path / "o")])
    assert message in one_line_error(code, err)


def test_a_model_too_large_to_build_is_one_line(tmp_path: Path) -> None:
    code, _, err = run_cli(["report", "--model", "deep-mlp", "--width", "99999999999999999999999999",
                            "--init", "he", "--dataset", "mnist-sample", "--limit-train", "64", "--epochs", "1",
                            "--jobs", "1", "--format", "json", "--out", str(tmp_path / "o")])
    assert "he/seed0: deep-mlp" in (line := one_line_error(code, err))
    assert "too large to build" in line and "--width" in line


def _idx(array: np.ndarray, magic: int | None = None) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic or 0x0800 + array.ndim, *array.shape) + array.tobytes()


def _write_mnist(directory: Path, n_train: int = 64, n_test: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
              NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (directory / name).write_bytes(_idx(array))
    return arrays


@pytest.mark.parametrize("damage,expected", [
    ("missing", r"missing t10k-labels-idx1-ubyte\[\.gz\]"),
    ("truncated", r"train-images-idx3-ubyte is truncated: header says 64 x 28 x 28 \(50,192 bytes\), file has"),
    ("swapped", r"train-images-idx3-ubyte has magic number 2049, expected MNIST images \(2051\)"),
    ("label", r"t10k-labels-idx1-ubyte has label 11, expected labels 0-9"),
])
def test_a_damaged_data_directory_names_the_file_and_what_was_expected(damage: str, expected: str,
                                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "mnist"
    arrays = _write_mnist(data_dir)
    if damage == "missing":
        (data_dir / NAMES[3]).unlink()
    elif damage == "truncated":
        path = data_dir / NAMES[0]
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "swapped":  # the labels file under the images' name
        (data_dir / NAMES[0]).write_bytes(_idx(arrays[NAMES[1]]))
    else:
        (data_dir / NAMES[3]).write_bytes(_idx(np.array([1, 11, 2], dtype=np.uint8)))
    code, _, err = run_cli(["report", "--data-dir", str(data_dir), "--epochs", "1", "--out", str(tmp_path / "o")])
    line = one_line_error(code, err)
    assert f"--data-dir {data_dir}" in line
    assert re.search(expected, line), line


def test_an_output_path_that_cannot_be_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub", Path("/proc/initdiag-cannot-write-here")):
        code, _, err = run_cli(["report", "--out", str(out)])
        line = one_line_error(code, err)
        assert str(out) in line and ("not a directory" in line or "cannot write" in line), line
    assert blocker.read_text() == "x"


class _FullDisk(io.FileIO):
    """A file whose writes stop half-way with ENOSPC, as on a disk that fills up."""

    def write(self, data: Any) -> int:
        view = memoryview(data)
        super().write(view[: len(view) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_that_fills_while_the_report_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       small_test_set: None) -> None:
    out = tmp_path / "r"
    (out).mkdir()
    (out / "summary.json").write_text('{"old": true}\n')  # from an earlier report: kept whole
    real_run = runner.run_experiment
    real_fdopen = __import__("os").fdopen

    def run_then_fill_the_disk(*args: Any, **kwargs: Any) -> Any:
        result = real_run(*args, **kwargs)
        monkeypatch.setattr("os.fdopen", lambda fd, mode="r", *a, **k: _FullDisk(fd, "wb"))
        return result

    monkeypatch.setattr(backends, "run_experiment", run_then_fill_the_disk)  # where the CLI looks it up
    code, _, err = run_cli(["report", "--model", "mlp", "--init", "he", "--dataset", "mnist-sample",
                            "--limit-train", "64", "--epochs", "1", "--jobs", "1", "--format", "json,csv",
                            "--out", str(out)])
    monkeypatch.setattr("os.fdopen", real_fdopen)
    line = one_line_error(code, err)
    assert f"cannot write {out / 'summary.json'}: No space left on device" in line
    assert (out / "summary.json").read_text() == '{"old": true}\n'
    assert not (out / "series.csv").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_download_leaves_no_cache_and_the_next_run_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INITDIAG_OFFLINE")
    cache = tmp_path / "xdg" / "initdiag" / "mnist"

    def interrupted(root: Path) -> None:
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / NAMES[0]).write_bytes(b"\x00\x00\x08\x03 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(data_mod, "_download_into", interrupted)
    code, _, err = run_cli(["report", "--model", "mlp", "--init", "he", "--epochs", "1", "--format", "json",
                            "--out", str(tmp_path / "o")])
    assert code == 130 and "Traceback" not in err
    assert [p for p in cache.parent.rglob("*") if p.is_file()] == []  # nothing half-downloaded is kept

    tries: list[Path] = []

    def works(root: Path) -> None:
        tries.append(root)
        _write_mnist(root / "MNIST" / "raw")

    monkeypatch.setattr(data_mod, "_download_into", works)
    got = load_mnist()
    assert len(tries) == 1 and got.provenance.kind == "download"
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)
    assert load_mnist().provenance.kind == "cache" and len(tries) == 1


def test_the_readme_lists_the_exit_codes_and_what_happens_on_interruption_and_divergence() -> None:
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    codes = text[text.index("### Exit codes"):]
    assert all(f"| {code} |" in codes for code in ("0", "2", "3", "130 / 143"))
    section = text[text.index("### Interruption and divergence"):]
    section = section[:section.index("\n## ")]
    for phrase in ("--resume", "130 or 143", "diverged", "null", "partial report"):
        assert phrase in section, phrase
