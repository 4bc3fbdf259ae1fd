"""The tree stays as ruff formats and lints it (pyproject.toml), so reviews see changes, not
reformatting: 35 files had drifted before this check existed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_finds_nothing_to_change(command: list[str]) -> None:
    pytest.importorskip("ruff")  # requirements-dev.txt
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
