"""What ``python -m edge run`` loads on the shipped config's path, read from ``sys.modules`` of a
real daemon process: nothing that only another command, another setting or the trainer needs.
Each module named here costs the door resident memory for nothing (``python -m bench.memory``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edge.config import load_config, with_overrides
from tests.conftest import MODEL, REPO_ROOT

# Never on the daemon's path: the trainer's frameworks, and the parts of settings that are off
# in the shipped config (fleet sync, blink) or of other commands (bench, trainer).
NEVER = ("tensorflow", "keras", "torch", "onnxruntime", "mediapipe", "bench", "train_host")
NOT_WHEN_OFF = ("edge.fleet", "cryptography", "edge.blink")


def _clip(path: Path) -> Path:
    """A few frames of noise: the daemon runs its whole start-up and loop, finds no face."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def daemon_modules(tmp_path: Path, policy: str) -> set[str]:
    """``sys.modules`` of ``python -m edge run`` after it ran the shipped config with ``policy``
    (MQTT and Home Assistant on, towards a local port where nobody listens; mock relay)."""
    config = with_overrides(
        load_config(REPO_ROOT / "config.yaml"),
        state_dir=tmp_path / "state",
        camera={"source": str(_clip(tmp_path / "noise.mp4"))},
        access={"policy": policy},
        mqtt={"host": "127.0.0.1", "port": 9},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    code = (
        "import json, sys\n"
        "from edge.__main__ import main\n"
        f"code = main(['run', '--config', {str(path)!r}, '--relay', 'mock'])\n"
        "print(json.dumps({'exit': code, 'modules': sorted(sys.modules)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exit"] == 0, done.stderr[-2000:]
    return set(result["modules"])


def _loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


@pytest.mark.parametrize("policy", ["enrolled", "any_live"])
def test_the_daemon_loads_only_what_its_config_uses(tmp_path: Path, policy: str) -> None:
    if not MODEL.is_file():
        pytest.skip(f"no liveness model at {MODEL}")
    modules = daemon_modules(tmp_path, policy)
    # It did run: the models and the MQTT/Home Assistant side are loaded.
    for name in ("edge.daemon", "cv2", "ai_edge_litert", "paho", "edge.homeassistant"):
        assert _loaded(modules, name), name
    wrong = [name for name in NEVER + NOT_WHEN_OFF if _loaded(modules, name)]
    assert not wrong, f"loaded by the daemon for nothing: {wrong}"
    # dlib (face recognition) only when the policy recognises faces.
    assert _loaded(modules, "dlib") == (policy == "enrolled")
