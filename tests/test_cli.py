"""The CLI end to end on a few hundred images, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from initdiag.cli import main
from initdiag.initializers import INITIALIZERS
from initdiag.models import MODELS


def _strict_json(path: Path) -> dict:
    def bad(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def test_list_prints_models_and_initializers_with_formulas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    for name, init in INITIALIZERS.items():
        assert name in out
        assert init.formula in out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    out = tmp_path_factory.mktemp("run") / "report"
    import contextlib
    import io

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["report", "--dataset", "mnist-sample", "--limit-train", "320", "--epochs", "2",
                     "--init", "zeros,he", "--out", str(out), "--fail-on", "no_signal"])
    return code, out, buf_out.getvalue() + buf_err.getvalue()


def test_report_end_to_end_writes_all_four_files(small_run: tuple[int, Path, str]) -> None:
    _, out, text = small_run
    for name in ("report.html", "report.pdf", "summary.json", "series.csv"):
        assert (out / name).stat().st_size > 0, name
    assert str(out) in text
    assert "zeros" in text and "he" in text  # the summary table
    summary = _strict_json(out / "summary.json")
    assert summary["model"] == "cnn"
    assert summary["dataset"]["name"] == "mnist-sample"
    assert summary["dataset"]["train_size"] == 320
    assert summary["dataset"]["test_size"] == 10000
    runs = {r["initializer"]: r for r in summary["runs"]}
    assert set(runs) == {"zeros", "he"}
    for run in runs.values():
        assert [h["epoch"] for h in run["history"]] == [1, 2]
        assert {"train_loss", "test_loss", "test_accuracy"} <= set(run["history"][0])
        assert [lay["name"] for lay in run["layers"]][:2] == ["0", "1"]
        assert {"activation_variance_init", "gradient_variance_init"} <= set(run["layers"][0])
        assert run["verdicts"]
    # zero init: no signal at init, and the net can only predict one class
    assert runs["zeros"]["layers"][0]["activation_variance_init"] == 0
    labels = np.bincount(np.frombuffer(__import__("gzip").open(
        Path(__import__("initdiag").sample.__file__).parent / "t10k-labels-idx1-ubyte.gz").read()[8:],
        dtype=np.uint8), minlength=10) / 10000
    assert any(runs["zeros"]["test_accuracy"] == pytest.approx(share, abs=1e-9) for share in labels)
    assert runs["he"]["test_accuracy"] > 0.5
    assert "p_value" in summary["comparisons"][0]
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html.replace("https://creativecommons", "")


def test_fail_on_exit_code_after_writing_the_report(small_run: tuple[int, Path, str]) -> None:
    code, out, _ = small_run
    assert code == 3  # zeros fails no_signal
    assert (out / "report.html").exists()


@pytest.mark.parametrize("argv,match", [
    (["report", "--model", "cnnn"], "did you mean 'cnn'"),
    (["report", "--init", "xavierr"], "did you mean 'xavier'"),
    (["report", "--epochs", "0"], "--epochs must be at least 1"),
    (["report", "--epochs", "-1"], "--epochs must be at least 1"),
    (["report", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["report", "--epochs", "two"], "not an integer"),
    (["report", "--lr", "-1"], "--lr must be a positive"),
    (["report", "--fail-on", "vanish"], "did you mean 'vanishing'"),
    (["report", "--format", "htm"], "did you mean 'html'"),
    (["report", "--dataset", "mnist-sample", "--limit-train", "20000", "--epochs", "1"], "larger than"),
    (["report", "--nope"], "unrecognized arguments"),
])
def test_bad_input_one_line_exit_2(argv: list[str], match: str, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    code = main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "report" and "--nope" not in argv else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert match in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "usage" in err


def test_output_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["report", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_missing_data_dir_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "Traceback" not in err


def test_console_script_runs_main_then_freezes_what_is_alive(tmp_path: Path) -> None:
    """The installed ``initdiag`` script and ``python -m initdiag`` go through :func:`initdiag.cli.run`: main's
    exit code, the objects alive at the end frozen (the shutdown's garbage collections skip them); ``main``
    called in a process that goes on freezes nothing."""
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"initdiag": "initdiag.cli:run"}
    probe = ("import gc, sys; from initdiag.cli import {f}; code = {f}(); "
             "print(code, gc.get_freeze_count() > 0, file=sys.stderr)")
    for f, frozen in (("run", "True"), ("main", "False")):
        done = subprocess.run([sys.executable, "-c", probe.format(f=f), "report", "--epochs", "x"],
                              capture_output=True, text=True, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"2 {frozen}", done.stderr
    module = subprocess.run([sys.executable, "-m", "initdiag", "report", "--epochs", "x"], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert module.returncode == 2 and "--epochs" in module.stderr
