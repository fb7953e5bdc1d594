"""The README's Quick start: exactly two commands, and CI runs the second one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)\n```", quick, re.S)]


def test_quick_start_has_two_single_line_commands() -> None:
    blocks = _quick_start()
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks)
    assert "initdiag report --model cnn" in blocks[0] and "pip install ." in blocks[0]
    assert "pytest" in blocks[1] and "[test]" in blocks[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "blocks[1]" in ci


def _examples() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)\n```", text, re.S)
    return {name: code for code, name in blocks}


def test_the_readme_has_an_example_per_integration() -> None:
    assert set(_examples()) == {"lightning", "transformers", "tensorboard", "wandb"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lightning", "transformers", "tensorboard", "wandb"])
def test_each_integration_example_runs_as_it_stands(name: str, tmp_path: Path) -> None:
    pytest.importorskip({"lightning": "lightning", "transformers": "transformers", "tensorboard": "tensorboard",
                         "wandb": "wandb"}[name])
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "WANDB_DISABLE_GIT": "true", "WANDB_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _examples()[name]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if name == "lightning":
        assert (tmp_path / "reports" / "lightning" / "report.html").exists()
        assert "report.html" in done.stdout and "unstable" in done.stdout
    elif name == "transformers":
        assert (tmp_path / "reports" / "bert" / "summary.json").exists() and "bert." in done.stdout
    elif name == "tensorboard":
        assert done.stdout.strip().startswith("[") and done.stdout.count(",") == 2  # three steps
    else:
        assert done.stdout.strip().endswith("True")
