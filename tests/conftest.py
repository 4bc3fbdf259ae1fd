"""Shared fixtures: gpiozero's MockFactory, a real mosquitto, paths of shared data and assets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from edge.assets import DEFAULT_ASSETS_DIR, RES10_ASSETS
from tests.fakes import FakeClock
from tests.mosquitto import Mosquitto

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
VIDEOS = SHARED / "videos"
FACES = SHARED / "data" / "faces"
MODEL = REPO_ROOT / "models" / "liveness.tflite"


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """gpiozero's own mock pins, reset after each test (as gpiozero's test suite does)."""
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = previous


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _need(path: Path, what: str) -> None:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}")


@pytest.fixture
def videos_dir() -> Path:
    _need(VIDEOS, "../shared/videos")
    return VIDEOS


@pytest.fixture
def faces_dir() -> Path:
    _need(FACES, "../shared/data/faces")
    return FACES


@pytest.fixture
def res10_assets() -> Path:
    for asset in RES10_ASSETS:
        _need(DEFAULT_ASSETS_DIR / asset.name, "res10 assets (python scripts/fetch_assets.py)")
    return DEFAULT_ASSETS_DIR
