"""The wheel ships the templates and the bundled sample, and they load from another directory."""

from __future__ import annotations

import os
import re
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
def test_wheel_carries_the_compiled_kernel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("initdiag/recording/_kernel") and n.endswith((".so", ".pyd")) for n in names), names


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


def test_wheel_ships_every_module_of_the_source_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "initdiag").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


def _readme_examples() -> list[str]:
    """The Python blocks of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```", section, re.S)


@pytest.mark.parametrize("where", ["clone root", "another folder"])
def test_the_readme_api_examples_run_after_pip_install(wheel: Path, tmp_path: Path, where: str) -> None:
    """As after ``pip install .``: the wheel on the path (no editable finder: ``python -S``). From the clone's
    root Python imports the source tree instead of the wheel, and the templates must still be found."""
    examples = _readme_examples()
    assert len(examples) == 4 and "result.write(" in examples[1] and "initdiag.fix(" in examples[2]
    assert "CHECKS.register(" in examples[3]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = tmp_path / "my-net"
    code = "\n".join(examples).replace('"reports/my-net"', repr(str(out)))
    cwd = ROOT if where == "clone root" else tmp_path
    packages = [p for p in sys.path if p.endswith("site-packages")]
    run = subprocess.run([sys.executable, "-S", "-c", code + "\nimport initdiag; print('FROM', initdiag.__file__)"],
                         cwd=cwd, capture_output=True, text=True, check=False, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *packages])})
    assert run.returncode == 0, run.stderr[-3000:]
    source = run.stdout.rsplit("FROM ", 1)[1].strip()
    assert source.startswith(str(ROOT if where == "clone root" else site)), source
    assert (out / "report.html").stat().st_size > 0 and (out / "summary.json").stat().st_size > 0
    assert "keep" in run.stdout and "vanishing" in run.stdout
    assert "False True" in run.stdout  # fix: the model as given fails, the repaired one passes
