"""``python -m bench.memory``: which steps it measures for a config, its child process, its report.
No test asserts a memory figure: they depend on the machine and the library builds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench.memory import (
    EXTRA_LABELS,
    child_peak,
    default_steps,
    extra_steps,
    format_memory,
    parse_env,
    step_status,
)
from edge.config import parse_config
from tests.conftest import REPO_ROOT


def _keys(steps: list[tuple[str, str]]) -> list[str]:
    return [key for key, _ in steps]


def test_steps_follow_the_config() -> None:
    enrolled = parse_config({"access": {"policy": "enrolled"}}, REPO_ROOT)
    keys = _keys(default_steps(enrolled))
    assert keys[0] == "python" and keys[-3:] == ["camera", "detect", "parts"]
    assert keys.index("dlib") < keys.index("identity") < keys.index("camera")
    assert "blink" not in keys and "fleet" not in keys
    assert [label for _, label in extra_steps(enrolled)] == [
        EXTRA_LABELS["blink"],
        EXTRA_LABELS["fleet"],
    ]

    any_live = parse_config(
        {
            "access": {"policy": "any_live"},
            "liveness": {"blink": "required"},
            "device_guard": {"enabled": False},
        },
        REPO_ROOT,
    )
    keys = _keys(default_steps(any_live))
    assert "dlib" not in keys and "guard" not in keys and "blink" in keys
    assert (["dlib", "identity"], EXTRA_LABELS["dlib"]) in extra_steps(any_live)


def test_env_variants_are_name_value_words() -> None:
    assert parse_env("MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=131072") == {
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_TRIM_THRESHOLD_": "131072",
    }
    assert parse_env("") == {}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_env("MALLOC_ARENA_MAX")


def test_each_row_is_a_fresh_process_with_its_steps() -> None:
    config = parse_config({}, REPO_ROOT)
    bare = step_status(config, ["python"], 1)
    with_numpy = step_status(config, ["python", "numpy"], 1)
    for status in (bare, with_numpy):
        assert set(status) == {"rss_mb", "peak_mb", "anon_mb", "file_mb", "threads"}
        assert 0 < status["rss_mb"] <= status["peak_mb"]
    assert with_numpy["rss_mb"] > bare["rss_mb"]


def test_the_detect_step_runs_frames_through_the_detector(
    videos_dir: Path, res10_assets: Path
) -> None:
    # The detect row once failed on every run (it called a function the detectors had dropped)
    # while every other test here passed: run it on a few frames of a clip.
    clip = sorted(videos_dir.glob("*_real.*"))[0]
    config = parse_config({"camera": {"source": str(clip)}}, REPO_ROOT)
    status = step_status(config, ["config", "detector", "camera", "detect"], 3)
    assert status["rss_mb"] > 0


def test_a_command_peak_is_its_own_not_that_of_the_process_measuring_it() -> None:
    # The kernel keeps ru_maxrss across fork and exec: started straight from the bench's process,
    # every short command (`python -m edge lock`) showed the bench's own peak instead of its own.
    ballast = b"\x01" * (200 << 20)  # written, so resident: this process peaks above 200 MB
    bare = child_peak([sys.executable, "-c", "pass"])
    assert len(ballast) and bare["exit"] == 0
    assert 0 < bare["peak_mb"] < 100
    failed = child_peak([sys.executable, "-c", "import sys; print('out'); sys.exit('why')"])
    assert failed["exit"] == 1 and failed["stderr_tail"] == ["why"]


def _row(step: str, rss: float, added: float) -> dict[str, Any]:
    return {
        "step": step,
        "label": step,
        "rss_mb": rss,
        "added_mb": added,
        "peak_mb": rss,
        "anon_mb": rss / 2,
        "file_mb": rss / 2,
        "threads": 1,
    }


def test_report_lists_steps_extras_daemon_runs_and_failures() -> None:
    results = {
        "machine": {"cpu": "CPU", "cores": 2, "python": "3.11"},
        "clip": "a_real.mp4",
        "frames": 3,
        "detector": "res10+regions",
        "policy": "enrolled",
        "steps": {
            "rows": [_row("python", 10.0, 10.0), _row("numpy", 24.5, 14.5)],
            "extras": [_row("+ fleet", 30.0, 5.5)],
            "extras_after": "numpy",
        },
        "daemon": [
            {
                "policy": "enrolled",
                "env": "(as is)",
                "peak_mb": 270.0,
                "exit": 0,
                "stderr_tail": [],
            },
            {
                "policy": "enrolled",
                "env": "MALLOC_ARENA_MAX=2",
                "peak_mb": 1.0,
                "exit": 1,
                "stderr_tail": ["boom"],
            },
        ],
        "commands": [
            {"command": "python -m edge lock", "peak_mb": 40.0, "exit": 0, "stderr_tail": []}
        ],
    }
    text = format_memory(results)
    assert "numpy" in text and "+14.5" in text and 'after "numpy"' in text
    assert "270.0" in text and "failed (exit 1: boom)" in text
    assert "python -m edge lock" in text and "40.0" in text
