"""``python -m edge lock``, the service's stop hook (``ExecStopPost``): it drives the relay pin to
its locked level after every stop, a crash or a kill included, so it depends on as little as
possible. It reads the config's relay section alone: a bad relay section is refused (the pin or
its locked level would be a guess), a problem anywhere else does not keep the door unlocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from edge.__main__ import main
from edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config.yaml"
# What the other commands load and the stop hook must not: each can be broken, slow or missing on
# a Pi without the door's lock depending on it.
HEAVY = (
    "cv2",
    "numpy",
    "ai_edge_litert",
    "tflite_runtime",
    "dlib",
    "face_recognition_models",
    "paho",
    "cryptography",
    "picamera2",
    "tensorflow",
    "keras",
    "mediapipe",
)


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def lock_modules(config: Path) -> tuple[int, set[str]]:
    """Exit code and ``sys.modules`` of ``python -m edge lock --relay mock --config config``."""
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['edge', 'lock', '--relay', 'mock', '--config', {str(config)!r}]\n"
        "try:\n"
        "    runpy.run_module('edge', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'exit': code, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["exit"], set(result["modules"])


def test_lock_loads_no_detector_model_or_network_library() -> None:
    exit_code, modules = lock_modules(CONFIG)
    assert exit_code == EXIT_OK
    assert _loaded(modules, "gpiozero") and _loaded(modules, "edge.relay")  # it did drive the pin
    heavy = [name for name in HEAVY if _loaded(modules, name)]
    assert not heavy, f"loaded by the stop hook: {heavy}"


def test_lock_works_with_opencv_and_numpy_broken(tmp_path: Path) -> None:
    # Packages that fail as a damaged install does: not with an ImportError, which callers that
    # treat a library as optional would catch.
    broken = tmp_path / "broken"
    for name in ("cv2", "numpy", "ai_edge_litert", "dlib", "paho"):
        (broken / name).mkdir(parents=True)
        (broken / name / "__init__.py").write_text("raise RuntimeError('damaged install')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken), str(REPO_ROOT)])}
    argv = [sys.executable, "-m", "edge", "lock", "--relay", "mock", "--config", str(CONFIG)]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OK, done.stderr[-2000:]
    assert "driven to its locked level" in done.stdout


def _config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_config_bad_elsewhere_still_locks(
    tmp_path: Path, mock_factory: MockFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = {
        "detector": {"kind": "res11"},
        "camera": {"fps": -1},
        "mqtt": {"port": 0},
        "no_such_section": True,
        "relay": {"pin": 22, "active_high": False},
    }
    path = _config(tmp_path, bad)
    assert main(["check-config", "--no-files", "--config", str(path)]) == EXIT_REFUSED  # bad
    assert main(["lock", "--config", str(path)]) == EXIT_OK
    assert mock_factory.pin(22).state is True  # active low: locked is high
    assert "relay pin 22 driven to its locked level" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"pin": 99}, "relay.pin = 99: Input should be less than or equal to 53"),
        ({"pin": 22, "active_hihg": False}, "did you mean 'relay.active_high'?"),
        ({"active_high": "sometimes"}, "relay.active_high = 'sometimes'"),
        ({"pin": 22, "active_high": "sometimes", "pulse_s": 60}, "relay.active_high = 'sometimes'"),
        ("17", "relay = '17'"),
    ],
)
def test_a_bad_relay_section_is_refused_as_check_config_refuses_it(
    tmp_path: Path,
    mock_factory: MockFactory,
    capfd: pytest.CaptureFixture[str],
    relay: object,
    message: str,
) -> None:
    path = _config(tmp_path, {"relay": relay})
    assert main(["lock", "--config", str(path)]) == EXIT_REFUSED
    refused = capfd.readouterr()
    assert message in refused.err and not refused.out
    assert not mock_factory.pins, "no pin was touched"
    # The same key, value and reason as the full validation gives.
    assert main(["check-config", "--no-files", "--config", str(path)]) == EXIT_REFUSED
    assert capfd.readouterr().err == refused.err


@pytest.mark.parametrize("pulse_s", [60, -1, "long"])
def test_a_bad_pulse_length_does_not_keep_the_door_unlocked(
    tmp_path: Path, mock_factory: MockFactory, capfd: pytest.CaptureFixture[str], pulse_s: object
) -> None:
    # How long a grant holds the strike open does not matter for locking: say, an edit the running
    # daemon never saw, found by the stop hook after a crash. Reported, and the door is locked.
    path = _config(tmp_path, {"relay": {"pin": 22, "active_high": False, "pulse_s": pulse_s}})
    assert main(["check-config", "--no-files", "--config", str(path)]) == EXIT_REFUSED
    capfd.readouterr()
    assert main(["lock", "--config", str(path)]) == EXIT_OK
    assert mock_factory.pin(22).state is True  # active low: locked is high
    said = capfd.readouterr()
    assert "relay pin 22 driven to its locked level" in said.out
    assert f"relay.pulse_s = {pulse_s!r}" in said.err and "not needed to lock" in said.err


@pytest.mark.parametrize("text", ["relay: [pin: 17", "- relay\n- pin\n"])
def test_an_unreadable_config_is_refused(
    tmp_path: Path, mock_factory: MockFactory, text: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main(["lock", "--config", str(path)]) == EXIT_REFUSED
    assert main(["lock", "--config", str(tmp_path / "missing.yaml")]) == EXIT_REFUSED
    assert not mock_factory.pins


def test_a_pin_it_cannot_open_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # No GPIO here (or lgpio missing, or no permission): gpiozero's traceback said none of it.
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "no_such_factory"}
    argv = [sys.executable, "-m", "edge", "lock", "--config", str(CONFIG)]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_FAILURE, done.stderr[-2000:]  # not locked: a failure
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: relay.pin 17: cannot open the GPIO pin")
    assert "no_such_factory" in done.stderr
