"""The resume store: JSON and .npz that execute nothing, every run read back as it was, and a damaged,
foreign or old file refused with one line and exit code 2."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from initdiag.cli import main
from initdiag.config import ExperimentConfig
from initdiag.data import load_mnist
from initdiag.errors import UsageError
from initdiag.experiment import run_one
from initdiag.initializers import InitSpec
from initdiag.models import ModelSpec
from initdiag.store import RunStore

SMALL = ["report", "--model", "mlp", "--dataset", "mnist-sample", "--limit-train", "128", "--epochs", "1",
         "--format", "json", "--jobs", "1"]


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("initdiag: error")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A finished run of the MLP (he), saved in a store, and the run itself."""
    data = load_mnist(dataset="mnist-sample", limit_train=96)
    config = ExperimentConfig(model=ModelSpec("mlp"), initializers=(InitSpec("he"),), epochs=1, probe_size=64,
                              device="cpu")
    run = run_one(config, InitSpec("he"), 0, data)
    root = tmp_path_factory.mktemp("store")
    store = RunStore(root)
    store.save_plan(config, ["report", "--model", "mlp"])
    store.save_run(run)
    return root, run


def test_a_saved_run_reads_back_as_it_was(saved: tuple[Path, object]) -> None:
    root, run = saved
    (back,) = RunStore(root).load_runs().values()
    assert back.name == run.name and back.spec == run.spec and back.seed == run.seed
    assert back.history == run.history and back.layers == run.layers
    for field in ("predictions", "step_losses", "grad_norms"):
        np.testing.assert_array_equal(getattr(back, field), getattr(run, field))
    pd.testing.assert_frame_equal(back.frame, run.frame, check_categorical=False)
    assert [v.check for v in back.verdicts] == [v.check for v in run.verdicts]
    assert [v.to_json() for v in back.verdicts] == [v.to_json() for v in run.verdicts]
    assert back.theory == run.theory and back.profiles == run.profiles
    assert back.test_accuracy == run.test_accuracy and back.diverged_step == run.diverged_step
    plan = RunStore(root).load_plan()
    assert plan.config == ExperimentConfig(model=ModelSpec("mlp"), initializers=(InitSpec("he"),), epochs=1,
                                           probe_size=64, device="cpu")
    assert plan.argv == ("report", "--model", "mlp")


def test_nothing_stored_needs_pickle(saved: tuple[Path, object]) -> None:
    root, _ = saved
    for path in (root / ".initdiag" / "runs").glob("*.npz"):
        with np.load(path, allow_pickle=False) as npz:
            assert all(npz[key].dtype.kind in "iufU" for key in npz.files)
    for path in (root / ".initdiag").rglob("*.json"):
        json.loads(path.read_text())


def _resume(tmp_path: Path) -> Path:
    out = tmp_path / "r"
    assert _cli([*SMALL, "--init", "xavier,he", "--out", str(out)])[0] == 0
    return out


@pytest.mark.parametrize("damage", ["truncated", "foreign", "other version", "swapped arrays", "bad frame",
                                    "pickled arrays"])
def test_a_damaged_or_foreign_run_file_is_one_line_and_exit_code_2(tmp_path: Path, damage: str) -> None:
    out = _resume(tmp_path)
    runs = out / ".initdiag" / "runs"
    record, arrays = runs / "he_seed0.json", runs / "he_seed0.npz"
    data = json.loads(record.read_text())
    if damage == "truncated":
        record.write_text(record.read_text()[:50])
    elif damage == "foreign":
        record.write_text(json.dumps({"hello": "world"}))
    elif damage == "other version":
        record.write_text(json.dumps({**data, "version": 99}))
    elif damage == "swapped arrays":
        arrays.write_bytes((runs / "xavier_seed0.npz").read_bytes())
    elif damage == "bad frame":
        with np.load(arrays) as npz:
            content = {k: npz[k] for k in npz.files}
        content["frame.layer.codes"] = content["frame.layer.codes"] + 1000
        buffer = io.BytesIO()
        np.savez(buffer, **content)
        arrays.write_bytes(buffer.getvalue())
        record.write_text(json.dumps({**data, "arrays": hashlib.sha256(buffer.getvalue()).hexdigest()}))
    else:  # an object array: np.load with allow_pickle=False must refuse it
        buffer = io.BytesIO()
        np.savez(buffer, predictions=np.array([{"a": 1}], dtype=object))
        arrays.write_bytes(buffer.getvalue())
        record.write_text(json.dumps({**data, "arrays": hashlib.sha256(buffer.getvalue()).hexdigest()}))
    line = _one_line(*_cli(["report", "--resume", str(out)]))
    assert str(record) in line


@pytest.mark.parametrize("damage", ["missing", "not json", "foreign", "bad config", "bad argv"])
def test_a_damaged_plan_is_one_line_and_exit_code_2(tmp_path: Path, damage: str) -> None:
    out = _resume(tmp_path)
    plan = out / ".initdiag" / "plan.json"
    data = json.loads(plan.read_text())
    if damage == "missing":
        plan.unlink()
    elif damage == "not json":
        plan.write_bytes(b"\x80\x04garbage")
    elif damage == "foreign":
        plan.write_text(json.dumps([1, 2, 3]))
    elif damage == "bad config":
        plan.write_text(json.dumps({**data, "config": {**data["config"], "epochs": -3}}))
    else:
        plan.write_text(json.dumps({**data, "argv": "report --model cnn"}))
    line = _one_line(*_cli(["report", "--resume", str(out)]))
    assert "--resume" in line and str(out) in line


class _Trap:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))


def test_pickles_left_in_a_results_folder_are_never_loaded(tmp_path: Path) -> None:
    """A results folder someone hands you, with the pickles an older initdiag wrote (or a trap): resuming reads
    only its JSON and .npz files."""
    out = _resume(tmp_path)
    trap = tmp_path / "pwned.txt"
    (out / ".initdiag" / "plan.pkl").write_bytes(pickle.dumps(_Trap(str(trap))))
    (out / ".initdiag" / "runs" / "evil.pkl").write_bytes(pickle.dumps(_Trap(str(trap))))
    assert _cli(["report", "--resume", str(out)])[0] == 0
    assert not trap.exists()
    (out / ".initdiag" / "plan.json").unlink()
    line = _one_line(*_cli(["report", "--resume", str(out)]))
    assert "not an initdiag report directory" in line and not trap.exists()


def test_load_runs_raises_usage_errors_naming_the_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.runs_dir.mkdir(parents=True)
    (store.runs_dir / "x.json").write_text("{")
    with pytest.raises(UsageError, match=r"x\.json"):
        store.load_runs()
