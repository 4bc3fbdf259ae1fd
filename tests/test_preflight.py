"""check-config and run refuse (exit 2, no traceback, no event) when a file the config names is
missing; no error ever shows a secret's value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.errors import ConfigError
from edge.preflight import preflight
from tests.conftest import MODEL, REPO_ROOT

SECRET = "hunter2secret"


def edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"liveness:\n  model: {MODEL}\nmqtt:\n  enabled: false\n" + text)
    return path


CASES = [
    "model",
    "password_file",
    "unlock_code_file",
    "state_dir_is_a_file",
    "state_dir_cannot_be_created",
    "assets_dir",
]


def case_config(tmp_path: Path, case: str) -> tuple[Path, str, Path]:
    """(config file, key the error must name, path it must name) of one missing-file case."""
    missing = tmp_path / "nowhere" / "file"
    model, state, extra = MODEL, tmp_path / "state", "mqtt:\n  enabled: false\n"
    if case == "model":
        model = key_path = tmp_path / "models" / "gone.tflite"
        key = "liveness.model"
    elif case == "password_file":
        extra = f"mqtt:\n  username: door\n  password_file: {missing}\n"
        key, key_path = "mqtt.password_file", missing
    elif case == "unlock_code_file":
        extra += f"homeassistant:\n  remote_unlock: true\n  unlock_code_file: {missing}\n"
        extra = extra.replace("enabled: false", "enabled: true")
        key, key_path = "homeassistant.unlock_code_file", missing
    elif case == "assets_dir":  # check-config said OK; run refused after loading the model
        extra += f"detector:\n  assets_dir: {missing.parent}\n"
        key, key_path = "detector.assets_dir", missing.parent / "deploy.prototxt"
    elif case == "state_dir_is_a_file":
        state = key_path = tmp_path / "state_file"
        state.write_text("")
        key = "state_dir"
    else:
        blocker = tmp_path / "blocker"
        blocker.write_text("")
        state = key_path = blocker / "state"
        key = "state_dir"
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {state}\nliveness:\n  model: {model}\n{extra}")
    return config, key, key_path


@pytest.mark.parametrize("case", CASES)
def test_check_config_refuses_a_missing_file(tmp_path: Path, case: str) -> None:
    config, key, path = case_config(tmp_path, case)
    result = edge("check-config", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", CASES)
def test_run_refuses_a_missing_file_before_any_event(tmp_path: Path, case: str) -> None:
    config, key, path = case_config(tmp_path, case)
    events = tmp_path / "events.jsonl"
    result = edge(
        "run",
        "--config",
        str(config),
        "--relay",
        "mock",
        "--source",
        str(MODEL),
        "--events-out",
        str(events),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not events.exists(), "no started/stopped event for a run that never started"


def test_run_refuses_a_missing_source_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"state_dir: {tmp_path / 's'}\n")
    missing = tmp_path / "no_such_clip.mp4"
    result = edge("run", "--config", str(config), "--relay", "mock", "--source", str(missing))
    assert result.returncode == 2, result.stderr
    assert "--source" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_run_refuses_an_events_out_it_cannot_write(tmp_path: Path, where: str) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path, f"state_dir: {state}\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker / "events.jsonl" if where == "under_a_file" else tmp_path
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    result = edge(
        "run", "--config", str(config), "--relay", "mock", "--source", str(clip),
        "--events-out", str(target),
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--events-out" in result.stderr and str(target) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state / "audit.log").exists(), "refused before the audit log's start entry"


def test_a_required_blink_needs_the_face_mesh_file(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in ("deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel"):
        (assets / name).symlink_to(REPO_ROOT / "assets" / name)
    data = {"liveness": {"model": str(MODEL)}, "detector": {"assets_dir": str(assets)}}
    assert preflight(parse_config(data, tmp_path))[0] == []
    data["liveness"]["blink"] = "required"
    problems, _notes = preflight(parse_config(data, tmp_path))
    assert len(problems) == 1
    assert problems[0].startswith("detector.assets_dir:") and "face_landmark.tflite" in problems[0]


def test_check_config_accepts_the_repository_config() -> None:
    result = edge("check-config", "--config", str(REPO_ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr


# -- item 8: secrets never echoed -------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        {"mqtt": {"password": SECRET}},  # unknown key: the value must not be shown
        {"homeassistant": {"unlock_code": SECRET}},
        {"mqtt": {"secret_key": SECRET}},
        {"mqtt": {"tls": {"key_password": SECRET}}},
        {"mqtt": {"token": [SECRET]}},
    ],
    ids=["mqtt.password", "unlock_code", "secret_key", "tls.key_password", "token"],
)
def test_config_errors_never_show_a_secret(tmp_path: Path, data: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, tmp_path)
    text = str(caught.value)
    assert SECRET not in text
    assert "unknown key" in text  # still says what is wrong, and where


def test_yaml_syntax_error_does_not_quote_the_secret_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"mqtt:\n  password: '{SECRET}\n  host: x\n")  # unclosed quote
    result = edge("check-config", "--config", str(config))
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert "line" in result.stderr


def test_check_config_refuses_a_detector_the_model_was_not_validated_on(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"liveness:\n  model: {MODEL}\nstate_dir: {tmp_path / 'state'}\nmqtt:\n  enabled: false\n"
        "detector:\n  kind: blazeface\n"
    )
    result = edge("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "detector.kind = 'blazeface'" in result.stderr and "box_detectors" in result.stderr
    config.write_text(config.read_text().replace("blazeface", "res10"))
    assert edge("check-config", "--config", str(config)).returncode == 0


# Run as another user than the owner of the clip's folder: ``sudo livegate`` is the service user,
# and a home folder is 0700 on Debian 12. As root here, the check drops to nobody (after the
# imports, which that user may not be able to read).
_AS_ANOTHER_USER = """
import os, sys
from edge.enroll import _check_source
from edge.errors import InputError
from edge.preflight import source_problem
if os.geteuid() == 0:
    os.setegid(65534)
    os.seteuid(65534)
print(source_problem(sys.argv[1]))
try:
    _check_source(sys.argv[1])
except InputError as exc:
    print(exc)
"""


def test_a_source_the_user_cannot_reach_is_named_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    clip = home / "alice.mp4"
    clip.write_bytes(b"not looked at")
    home.chmod(0o700 if os.geteuid() == 0 else 0o000)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _AS_ANOTHER_USER, str(clip)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )
    finally:
        home.chmod(0o700)
    assert result.returncode == 0, result.stderr  # no PermissionError traceback
    run_line, enroll_line = result.stdout.splitlines()
    assert run_line.startswith(f"--source: {clip}: user ")
    for line in (run_line, enroll_line):
        assert str(clip) in line and "cannot reach it" in line
