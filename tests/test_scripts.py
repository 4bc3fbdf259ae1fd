"""The README's demo command when there is nothing to show: it says why and stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.conftest import REPO_ROOT


def test_demo_without_clips_or_camera_says_why_and_stops(tmp_path: Path) -> None:
    capture = cv2.VideoCapture(0)
    has_camera = capture.isOpened()
    capture.release()
    if has_camera:
        pytest.skip("this machine has a camera 0: the demo would rightly use it")
    empty = tmp_path / "no_clips"
    empty.mkdir()
    env = {**os.environ, "LIVEGATE_PY": sys.executable, "LIVEGATE_DEMO_VIDEOS": str(empty)}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "demo.sh")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "no camera" in result.stderr and str(empty) in result.stderr
    assert "retrying" not in result.stderr
