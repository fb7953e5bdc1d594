"""``initdiag audit`` from the command line: references, inputs, outputs, exit codes, one-line errors."""

from __future__ import annotations

import gzip
import json
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest

from initdiag.cli import main

MODEL_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small CNN for 1x28x28 images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 13 * 13, classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def mlp30():
    layers = []
    for _ in range(29):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


def tokens():
    return nn.Sequential(nn.Embedding(30, 8), nn.Flatten(), nn.Linear(8 * 6, 4))


def broken():
    raise ValueError("this factory needs a GPU cluster")


def loud():
    net = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    with torch.no_grad():
        net[0].weight.mul_(1e5)  # activations of ~1e5 at init: beyond float16's 65504
    return net


def returns_int():
    return 3


instance = Net()
not_a_model = 42
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "user_models.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(out: Path) -> dict:
    def strict(token: str) -> None:
        raise ValueError(token)

    return json.loads((out / "summary.json").read_text(), parse_constant=strict)


def test_file_reference_compares_initializers_and_writes_the_report(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = run(capsys, f"{models}:Net", "--input-shape", "1,28,28", "--init", "keep,he,xavier",
                               "--batches", "2", "--batch-size", "8", "--out", str(out), "--format", "json,csv,html")
    assert code == 0, stderr
    for name in ("summary.json", "series.csv", "report.html"):
        assert (out / name).stat().st_size > 0
    assert "initialization" in stdout and "forward gain" in stdout and "<- recommended" in stdout
    assert "Recommendation:" in stdout and f"Report written to {out}/" in stdout
    summary = _summary(out)
    assert summary["kind"] == "audit" and summary["model"] == f"{models}:Net"
    assert [r["initializer"] for r in summary["runs"]] == ["keep", "he", "xavier"]
    assert summary["command"].startswith("initdiag audit ")
    assert summary["dataset"]["batch_shape"] == [8, 1, 28, 28]


def test_deep_relu_mlp_is_vanishing_recommends_he_and_fails_on_request(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mlp"
    code, stdout, stderr = run(capsys, f"{models}:mlp30", "--input-shape", "64", "--out", str(out),
                               "--format", "json", "--fail-on", "vanishing,exploding,symmetry")
    assert code == 3
    assert "--fail-on: failed checks: vanishing" in stderr
    assert "vanishing (forward)" in stdout and "Recommendation: use `he`" in stdout
    summary = _summary(out)  # the report is written before exit code 3
    assert summary["recommendation"]["initializer"] == "he" and summary["passed"] is False
    gain = next(v for v in summary["runs"][0]["verdicts"] if v["signal"] == "forward")["effect"]["gain"]
    assert 0.1 < gain < 0.25  # theory: 1/6 per layer
    code, _, _ = run(capsys, f"{models}:mlp30", "--input-shape", "64", "--init", "he", "--out", str(out),
                     "--format", "json", "--fail-on", "vanishing")
    assert code == 0


def test_instance_kwargs_and_package_reference(models: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, f"{models}:instance", "--input-shape", "1,28,28", "--batches", "1",
                          "--out", str(tmp_path / "a"), "--format", "json")
    assert code == 0, stderr
    code, _, stderr = run(capsys, f"{models}:Net", "--kwargs", '{"classes": 3}', "--input-shape", "1,28,28",
                          "--batches", "1", "--out", str(tmp_path / "b"), "--format", "json")
    assert code == 0, stderr
    assert _summary(tmp_path / "b")["config"]["model_kwargs"] == {"classes": 3}
    pytest.importorskip("torchvision")
    code, _, stderr = run(capsys, "torchvision.models:resnet18", "--input-shape", "3,32,32", "--kwargs",
                               '{"num_classes": 10}', "--batches", "1", "--batch-size", "2",
                               "--out", str(tmp_path / "c"), "--format", "json")
    assert code == 0, stderr
    assert "layer4.1.conv2" in {la["name"] for la in _summary(tmp_path / "c")["runs"][0]["layers"]}


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def test_mnist_and_token_inputs(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 8)):
        (data / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)), 2051)))
        (data / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(rng.integers(0, 10, n), 2049)))
    code, _, stderr = run(capsys, f"{models}:Net", "--inputs", "mnist", "--data-dir", str(data),
                               "--batches", "2", "--batch-size", "8", "--out", str(tmp_path / "m"),
                               "--format", "json")
    assert code == 0, stderr
    summary = _summary(tmp_path / "m")
    assert summary["dataset"]["name"] == "mnist" and summary["dataset"]["batch_shape"] == [8, 1, 28, 28]
    assert len(summary["dataset"]["files"]) == 4
    code, _, stderr = run(capsys, f"{models}:mlp30", "--inputs", "mnist", "--data-dir", str(data),
                          "--input-shape", "784", "--out", str(tmp_path / "n"), "--format", "json")
    assert code == 2 and "--batches 4 x --batch-size 16 is more than the 40 MNIST training images" in stderr
    code, _, stderr = run(capsys, f"{models}:mlp30", "--inputs", "mnist", "--data-dir", str(data), "--batches", "2",
                          "--input-shape", "784", "--out", str(tmp_path / "n"), "--format", "json")
    assert code == 2 and "(16, 784)" in stderr and "mat1 and mat2 shapes" in stderr  # 784 pixels, 64 inputs
    code, _, stderr = run(capsys, f"{models}:tokens", "--input-shape", "6", "--input-dtype", "long",
                          "--vocab", "30", "--out", str(tmp_path / "t"), "--format", "json")
    assert code == 0, stderr
    assert _summary(tmp_path / "t")["dataset"]["dtype"] == "int64"


BAD = [
    (["nonexistent_pkg_xyz.models:Net", "--input-shape", "3"],
     "cannot import module 'nonexistent_pkg_xyz.models': ModuleNotFoundError: No module named 'nonexistent_pkg_xyz'"),
    (["{file}:Nett", "--input-shape", "3"], "has no attribute 'Nett' (did you mean 'Net'?)"),
    (["{dir}/missing.py:Net", "--input-shape", "3"], "missing.py does not exist"),
    (["{file}:broken", "--input-shape", "3"], "failed: ValueError: this factory needs a GPU cluster"),
    (["{file}:not_a_model", "--input-shape", "3"], "is a int, not an nn.Module, class or factory"),
    (["{file}:returns_int", "--input-shape", "3"], "returned a int, not an nn.Module"),
    (["{file}:Net", "--input-shape", "3,32,32"],
     "the model rejected an input of shape (16, 3, 32, 32) (batch 16 x input shape 3,32,32): RuntimeError: "),
    (["{file}:Net", "--input-shape", "1,x,28"], "--input-shape '1,x,28' must be positive integers"),
    (["{file}:Net", "--input-shape", "1,0,28"], "--input-shape '1,0,28' must be positive integers"),
    (["{file}:Net"], "--input-shape is required"),
    (["{file}:Net", "--input-shape", "1,28,28", "--init", "keep,hee"],
     "unknown initializer 'hee' (did you mean 'he'?)"),
    (["{file}:Net", "--input-shape", "1,28,28", "--fail-on", "vanishng"],
     "unknown check 'vanishng' (did you mean 'vanishing'?)"),
    (["{file}:Net", "--input-shape", "1,28,28", "--loss", "mae"], "unknown --loss 'mae'"),
    (["{file}:Net", "--input-shape", "1,28,28", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
    (["{file}:Net", "--input-shape", "1,28,28", "--kwargs", "{oops"], "--kwargs is not valid JSON"),
    (["{file}:Net", "--input-shape", "1,28,28", "--kwargs", '{"bad": 1}'],
     "failed: TypeError: Net.__init__() got an unexpected keyword argument 'bad'"),
    (["{file}:Net", "--input-shape", "1,28,28", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["{file}:instance", "--input-shape", "1,28,28", "--kwargs", '{"classes": 3}'], "takes no --kwargs"),
    (["{file}:Net", "--input-shape", "1,28,28", "--out", "{blocker}/sub"], "cannot write to output directory"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str, models: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    argv = [a.replace("{file}", str(models)).replace("{dir}", str(tmp_path)).replace("{blocker}", str(blocker))
            for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, stdout, stderr = run(capsys, *argv)
    assert code == 2
    assert message in stderr
    assert stderr.startswith("initdiag: error: ") and stderr.count("\n") == 1
    assert "Traceback" not in stdout + stderr


def test_audits_of_a_users_class_repeat_exactly_with_the_default_seed(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The class draws its weights as it is built: --seed must cover that, whatever the RNG's state before.
    import torch

    seen = []
    for i in range(3):
        torch.manual_seed(1000 + i)  # what earlier work in the process left behind
        out = tmp_path / f"run{i}"
        code, _, stderr = run(capsys, f"{models}:Net", "--input-shape", "1,28,28", "--batches", "1",
                              "--batch-size", "4", "--out", str(out), "--format", "json")
        assert code == 0, stderr
        seen.append([v["effect"] for r in _summary(out)["runs"] for v in r["verdicts"]])
    assert seen[0] == seen[1] == seen[2]


def test_dtype_makes_precision_a_verdict_and_fail_on_gates_it(models: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loud"
    args = [f"{models}:loud", "--input-shape", "16", "--out", str(out), "--format", "json", "--fail-on", "precision"]
    code, _, _ = run(capsys, *args)
    assert code == 0  # float32: the headroom is information
    code, _, stderr = run(capsys, *args, "--dtype", "float16")
    assert code == 3 and "precision" in stderr
    verdict = next(v for v in _summary(out)["runs"][0]["verdicts"] if v["check"] == "precision")
    assert verdict["status"] == "fail" and verdict["effect"]["max_abs"] > 65504
    assert verdict["details"]["dtype"] == "float16"
    code, _, stderr = run(capsys, *args, "--dtype", "float8")
    assert code == 2 and "--dtype" in stderr
