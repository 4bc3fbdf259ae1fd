"""Decision snapshots (edge/snapshots.py) and the daemon-owned switch (edge/switch.py)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import HomeAssistantConfig
from edge.decide import Decision
from edge.snapshots import (
    DENIED_BGR,
    GRANTED_BGR,
    SnapshotStore,
    Snapshotter,
    forget_snapshots,
    render_jpeg,
)
from edge.switch import FaceUnlockSwitch

BOX = (40, 30, 110, 100)
JPEG = b"\xff\xd8\xff\xe0" + bytes(64)


def smooth_frame() -> np.ndarray:
    """A grey ramp: JPEG keeps it nearly exact, so a drawn line stands out."""
    ramp = np.linspace(60, 120, 160, dtype=np.uint8)
    return np.repeat(np.repeat(ramp[None, :, None], 120, axis=0), 3, axis=2).copy()


def decision(verdict: str) -> Decision:
    return Decision(verdict, 1, BOX, 0.9, 5, 5, 0.2, 5)  # type: ignore[arg-type]


@pytest.fixture
def umask_open() -> Iterator[None]:
    """A permissive umask (a run outside systemd): file modes must not depend on it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# -- the picture ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("verdict", "colour"), [("granted", GRANTED_BGR), ("denied_spoof", DENIED_BGR)]
)
def test_render_draws_the_face_box_in_the_verdict_colour(verdict: str, colour: tuple) -> None:
    frame = smooth_frame()
    before = frame.copy()
    picture = cv2.imdecode(np.frombuffer(render_jpeg(frame, BOX, verdict), np.uint8), 1)
    assert np.array_equal(frame, before), "the frame loop's array is not drawn on"
    assert picture.shape == frame.shape
    x1, y1, x2, y2 = BOX
    edge = picture[y1, x1 + 10 : x2 - 10].astype(int).mean(axis=0)
    assert np.abs(edge - np.array(colour)).max() < 40, edge
    inside = picture[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].astype(int)
    assert np.abs(inside - before[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20].astype(int)).max() < 12


# -- the files ------------------------------------------------------------------------------------
def test_store_keeps_the_newest_owner_only(tmp_path: Path, umask_open: None) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir(mode=0o755)  # left wider by someone: tightened on the first save
    store = SnapshotStore(folder, keep=3)
    saved = [store.save(JPEG + bytes([i]), "granted") for i in range(5)]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = store.files()
    assert files == saved[-3:]
    assert [f.read_bytes()[-1] for f in files] == [2, 3, 4]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_store_orders_by_sequence_across_restarts_and_clock_jumps(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    now = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
    first = SnapshotStore(folder, keep=2)
    a = first.save(JPEG, "granted", now)
    b = first.save(JPEG, "granted", now + timedelta(seconds=1))
    # A restart after the Pi set its clock back (no real-time clock): the new file is still the
    # newest, and the oldest one is what goes.
    again = SnapshotStore(folder, keep=2)
    c = again.save(JPEG, "denied_spoof", now - timedelta(days=300))
    assert again.files() == [b, c]
    assert a is not None and not a.exists()


def test_store_keep_zero_stores_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", keep=0)
    assert store.save(JPEG, "granted") is None
    assert not (tmp_path / "snapshots").exists()


def stored_earlier(folder: Path, count: int) -> list[Path]:
    """``count`` snapshots left by an earlier run (say, with a larger snapshot_keep)."""
    earlier = SnapshotStore(folder, keep=count)
    return [p for i in range(count) if (p := earlier.save(JPEG + bytes([i]), "granted"))]


@pytest.mark.parametrize("keep", [2, 0])
def test_a_lower_keep_deletes_the_oldest_at_start(tmp_path: Path, keep: int) -> None:
    earlier = stored_earlier(tmp_path / "snapshots", 5)
    config = HomeAssistantConfig(snapshot=True, snapshot_keep=keep)
    shots = Snapshotter(config, tmp_path)  # no decision yet: nothing saved that would prune
    shots.close()
    assert shots.store.files() == earlier[len(earlier) - keep :]


def test_snapshots_off_deletes_the_stored_faces_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    stored_earlier(folder, 3)
    (folder / "notes.txt").write_text("the owner's")
    assert forget_snapshots(tmp_path) == 3
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert forget_snapshots(tmp_path / "never-used") == 0


# -- the thread -----------------------------------------------------------------------------------
def test_snapshotter_takes_only_the_configured_kinds(tmp_path: Path) -> None:
    published: list[bytes] = []
    config = HomeAssistantConfig(snapshot=True)
    assert set(config.snapshot_kinds) == {"granted", "denied_spoof"}  # the documented default
    shots = Snapshotter(config, tmp_path, publish=published.append)
    for verdict in ("granted", "denied_unknown", "denied_disabled", "denied_spoof"):
        shots.decision_frame(decision(verdict), smooth_frame())
    shots.close()
    names = [p.name.split("-", 2)[-1] for p in shots.store.files()]
    assert names == ["granted.jpg", "denied_spoof.jpg"]
    assert [p.read_bytes() for p in shots.store.files()] == published
    shots.decision_frame(decision("granted"), smooth_frame())  # after close: ignored
    shots.close()  # twice is fine
    assert len(published) == 2


def test_snapshotter_never_blocks_the_frame_loop(tmp_path: Path) -> None:
    gate = threading.Event()
    published: list[bytes] = []

    def slow_publish(jpeg: bytes) -> None:
        gate.wait(5)  # a stuck disk or network
        published.append(jpeg)

    shots = Snapshotter(HomeAssistantConfig(snapshot=True), tmp_path, publish=slow_publish)
    for _ in range(20):
        shots.decision_frame(decision("granted"), smooth_frame())  # returns at once
    assert shots.dropped > 0
    gate.set()
    shots.close()
    assert shots.taken == len(published) == 20 - shots.dropped


def test_a_failing_snapshot_does_not_stop_the_next(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(jpeg: bytes) -> None:
        calls.append(len(jpeg))
        if len(calls) == 1:
            raise OSError("broker gone")

    shots = Snapshotter(HomeAssistantConfig(snapshot=True), tmp_path, publish=flaky)
    shots.decision_frame(decision("granted"), smooth_frame())
    shots.decision_frame(decision("granted"), smooth_frame())
    shots.close()
    assert len(calls) == 2 and shots.taken == 1


# -- the face-unlock switch -----------------------------------------------------------------------
def test_switch_persists_owner_only_and_tells_listeners(tmp_path: Path, umask_open: None) -> None:
    switch = FaceUnlockSwitch(tmp_path)
    assert switch.enabled  # never set: on
    heard: list[bool] = []
    switch.add_listener(heard.append)
    assert switch.set(False)
    assert heard == [False] and not switch.enabled
    assert stat.S_IMODE(switch.path.stat().st_mode) == 0o600
    assert not FaceUnlockSwitch(tmp_path).enabled, "a new daemon reads it from disk"


@pytest.mark.parametrize("text", ['{"face_unlock": ', '{"face_unlock": "no"}', "[]"])
def test_unreadable_switch_starts_off(tmp_path: Path, text: str) -> None:
    (tmp_path / "ha_switch.json").write_text(text)
    assert not FaceUnlockSwitch(tmp_path).enabled
