"""The wheel ships the templates and the bundled sample, and they load from another directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    return next(out.glob("initdiag-*.whl"))


def test_wheel_contains_templates_and_sample(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "initdiag/templates/report.html.j2" in names
    assert "initdiag/templates/report.css" in names
    for f in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert f"initdiag/sample/{f}" in names


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_wheel_carries_the_compiled_moments_kernel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("initdiag/_fastmoments") and n.endswith((".so", ".pyd")) for n in names), names


def test_templates_and_sample_load_from_installed_wheel_elsewhere(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import initdiag, initdiag.templates, jinja2\n"
        "from initdiag.data import load_mnist\n"
        "env = jinja2.Environment(loader=jinja2.PackageLoader('initdiag.templates', '.'))\n"
        "env.get_template('report.html.j2')\n"
        "d = load_mnist(dataset='mnist-sample')\n"
        "print(initdiag.__file__, initdiag.templates.__file__, len(d.train_x), len(d.test_x))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=False)
    assert run.returncode == 0, run.stderr
    init_file, templates_file, n_train, n_test = run.stdout.split()
    assert init_file.startswith(str(site)) and templates_file.startswith(str(site))
    assert (n_train, n_test) == ("10000", "10000")
