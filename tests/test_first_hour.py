"""A new user's first hour with the CLI: answers without loading torch, leaves nothing behind when a command
fails, keeps a late interrupt's runs, and resumes no code that a results folder hands over."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from initdiag.cli import main
from initdiag.errors import Interrupted

SMALL = ["report", "--model", "mlp", "--dataset", "mnist-sample", "--limit-train", "128", "--epochs", "1",
         "--init", "he", "--format", "json", "--jobs", "1"]


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["audit"], ["report", "--epochs", "x"],
                                  ["report", "--fail-on", "bogus"], ["sweep", "--model", "nope"],
                                  ["audit", "m.py:Net", "--input-shape", "3,x"]])
def test_help_list_and_usage_errors_answer_without_loading_torch(argv: list[str]) -> None:
    """What makes ``--help`` slow is importing torch, scipy, pandas and the report: none of them loads before
    the options parse (the time itself is a benchmark line in the README, not an assertion)."""
    code = ("import sys\nfrom initdiag.cli import main\ncode = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('torch', 'scipy', 'pandas', 'matplotlib', 'jinja2') if m in sys.modules)\n"
            "print('HEAVY', ','.join(heavy))\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2), proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY", proc.stdout[-500:]


@pytest.mark.parametrize("extra", [["--data-dir", "/nonexistent/mnist", "--dataset", "mnist"],
                                   *([["--device", "cuda"]] if not torch.cuda.is_available() else [])])
def test_a_report_that_fails_before_its_first_run_leaves_no_folder(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "r"
    argv = [a for a in SMALL if a not in ("--dataset", "mnist-sample")] if "--dataset" in extra else SMALL
    code, err = _cli([*argv, *extra, "--out", str(out)])
    assert code == 2 and "Traceback" not in err, err
    assert not out.exists()
    default = tmp_path / "cwd"
    default.mkdir()
    with contextlib.chdir(default):
        code, _ = _cli([*argv, *extra])
    assert code == 2 and list(default.iterdir()) == []  # not even reports/


def test_an_audit_whose_model_rejects_the_input_leaves_no_folder(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("from torch import nn\n\nclass Net(nn.Module):\n"
                                   "    def __init__(self):\n        super().__init__()\n"
                                   "        self.fc = nn.Linear(10, 2)\n\n"
                                   "    def forward(self, x):\n        return self.fc(x)\n")
    out = tmp_path / "a"
    code, err = _cli(["audit", f"{tmp_path / 'm.py'}:Net", "--input-shape", "7", "--out", str(out)])
    assert code == 2 and "Traceback" not in err and not out.exists(), err


def test_an_interrupt_while_the_report_is_written_keeps_the_runs_and_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r"
    report = importlib.import_module("initdiag.report")
    real = report.write_report

    def interrupted(*args: object, **kwargs: object) -> None:
        raise Interrupted(130)

    monkeypatch.setattr(report, "write_report", interrupted)
    code, err = _cli([*SMALL, "--out", str(out)])
    assert code == 130
    assert f"initdiag report --resume {out}" in err and "every run finished" in err
    assert list((out / ".initdiag" / "runs").glob("*.json"))
    monkeypatch.setattr(report, "write_report", real)
    code, err = _cli(["report", "--resume", str(out)])
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["runs"]


_MARKER = "pwned.txt"
_EVIL = ("import pathlib\npathlib.Path(__file__).with_name('" + _MARKER + "').write_text('ran')\n"
         "from torch import nn\n\ndef Net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")


def _plan(folder: Path, file: str) -> Path:
    return folder / ".initdiag" / file


def _craft(folder: Path, file: str, model: str) -> None:
    """Point the folder's plan at ``model`` as someone handing the folder over could."""
    path = _plan(folder, file)
    data = json.loads(path.read_text())
    if file == "plan.json":
        data["config"]["model"]["name"] = model
    else:
        data["config"]["models"] = [{**m, "name": model} for m in data["config"]["models"]]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("command", ["report", "sweep"])
def test_a_crafted_plan_that_names_code_in_the_results_folder_runs_nothing(tmp_path: Path, command: str) -> None:
    out = tmp_path / "handed-over"
    argv = [*SMALL, "--out", str(out)]
    if command == "sweep":
        argv = ["sweep", *argv[1:]]
    assert _cli(argv)[0] == 0
    (out / "evil.py").write_text(_EVIL)
    _craft(out, "plan.json" if command == "report" else "sweep.json", "evil.py:Net")
    with contextlib.chdir(out):  # the reference resolves against the working directory
        code, err = _cli([command, "--resume", "."])
    assert code == 2 and "resume runs no code" in err, err
    assert not (out / _MARKER).exists()


def test_a_resume_runs_a_model_file_only_as_the_run_recorded_it_or_when_named_again(tmp_path: Path) -> None:
    model = tmp_path / "mine.py"
    model.write_text("from torch import nn\n\ndef Net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    out = tmp_path / "r"
    argv = ["report", "--model", f"{model}:Net", "--out", str(out)]
    plan = _plan(out, "plan.json")
    out.mkdir()
    # an interrupted run: its plan records the model file's SHA-256
    from initdiag.config import ExperimentConfig
    from initdiag.initializers import parse_init_list
    from initdiag.models import ModelSpec
    from initdiag.store import RunStore
    from initdiag.trust import check_resume, fingerprints

    config = ExperimentConfig(model=ModelSpec(f"{model}:Net"), initializers=parse_init_list("he"), epochs=1,
                              limit_train=128, dataset="mnist-sample", formats=("json",), out=out)
    RunStore(out).save_plan(config, argv, fingerprints([f"{model}:Net"]))
    recorded = json.loads(plan.read_text())["fingerprints"]
    assert recorded[f"{model}:Net"][0]["path"] == str(model.resolve())
    check_resume([f"{model}:Net"], recorded, [], out)  # unchanged, outside the folder: trusted as recorded
    model.write_text(model.read_text() + "\n# changed after the run started\n")
    code, err = _cli(["report", "--resume", str(out)])
    assert code == 2 and "SHA-256" in err and not list(out.glob("summary.json")), err
    code, err = _cli(["report", "--resume", str(out), "--model", "other.py:Net"])
    assert code == 2 and "not the plan's model" in err, err
    code, err = _cli(["report", "--resume", str(out), "--model", f"{model}:Net"])  # named again: the user's call
    assert code == 0, err


def test_runs_of_a_users_model_repeat_whatever_the_global_random_state(tmp_path: Path) -> None:
    """A report's or sweep's run builds the user's model from the run's seed: parameters no initializer redraws
    (here a learned input scale) are the same in every run with that seed."""
    from initdiag.config import ExperimentConfig
    from initdiag.data import load_mnist
    from initdiag.experiment import run_one
    from initdiag.initializers import InitSpec
    from initdiag.models import ModelSpec

    (tmp_path / "scaled.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.scale = nn.Parameter(torch.rand(784) + 0.5)\n"
        "        self.fc = nn.Linear(784, 10)\n\n    def forward(self, x):\n"
        "        return self.fc(x.flatten(1) * self.scale)\n")
    data = load_mnist(dataset="mnist-sample", limit_train=64)
    config = ExperimentConfig(model=ModelSpec(f"{tmp_path / 'scaled.py'}:Net"), initializers=(InitSpec("he"),),
                              epochs=1, probe_size=32, device="cpu")
    frames = []
    for state in (1, 2):
        torch.manual_seed(state)
        run = run_one(config, InitSpec("he"), 0, data)
        frames.append(run.frame.query("step == 0 and kind == 'forward' and stat == 'var'")["value"].to_numpy())
    assert len(frames[0]) and (frames[0] == frames[1]).all()
