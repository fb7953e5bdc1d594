"""The README's Quick start: exactly two commands, and CI runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

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
