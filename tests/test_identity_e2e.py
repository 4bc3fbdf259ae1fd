"""Enrolled people only, end to end on ../shared/videos.

What is used for what: Wolf is enrolled from the FIRST 40 % of wolf_real.mp4 (the enrol CLI's
``--end 0.4``); the daemon is then run on the REMAINING 60 % of that clip (written to a temporary
file), on Zubair's real clip (a person never enrolled) and on Wolf's replayed clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from gpiozero.pins.mock import MockFactory

from edge.__main__ import main
from edge.config import parse_config
from edge.daemon import Daemon, RunOptions
from tests.conftest import MODEL, REPO_ROOT

pytestmark = pytest.mark.slow
ENROL_FRACTION = 0.4


def tail_of_clip(clip: Path, fraction: float, out: Path) -> Path:
    """Write the frames after ``fraction`` of ``clip`` to ``out`` (mp4v)."""
    capture = cv2.VideoCapture(str(clip))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    writer = None
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index >= int(total * fraction):
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(frame)
        index += 1
    assert writer is not None
    writer.release()
    return out


@pytest.fixture(scope="module")
def enrolled_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    videos = REPO_ROOT.parent / "shared" / "videos"
    if not (videos / "wolf_real.mp4").exists() or not MODEL.exists():
        pytest.skip("sample clips or the shipped model missing")
    state = tmp_path_factory.mktemp("state")
    config = state / "config.yaml"
    config.write_text(f"state_dir: {state}\nliveness:\n  model: {MODEL}\nmqtt:\n  enabled: false\n")
    code = main(
        [
            "enroll",
            "add",
            "wolf",
            "--source",
            str(videos / "wolf_real.mp4"),
            "--end",
            str(ENROL_FRACTION),
            "--confidence",
            "0.75",
            "--config",
            str(config),
        ]
    )
    assert code == 0
    return state


def run(state: Path, clip: Path, tmp_path: Path) -> tuple[list[dict], list[bool]]:
    config = parse_config(
        {
            "state_dir": str(state),
            "liveness": {"model": str(MODEL)},
            "mqtt": {"enabled": False},
            "decision": {"cooldown_s": 0.0},
            "relay": {"pulse_s": 0.5},
        },
        REPO_ROOT,
    )
    factory = MockFactory()
    out = tmp_path / f"{clip.stem}.jsonl"
    code = Daemon(config, RunOptions(source=str(clip), pin_factory=factory, events_out=out)).run()
    assert code == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    return events, [s.state for s in factory.pin(config.relay.pin).states]


def test_enrolled_person_is_granted_by_name(
    enrolled_state: Path, tmp_path: Path, videos_dir: Path
) -> None:
    rest = tail_of_clip(videos_dir / "wolf_real.mp4", ENROL_FRACTION, tmp_path / "wolf_rest.mp4")
    events, states = run(enrolled_state, rest, tmp_path)
    grants = [e for e in events if e["kind"] == "granted"]
    assert grants, [e["kind"] for e in events]
    assert {g["person"] for g in grants} == {"wolf"}
    assert all(g["match_distance"] <= 0.38 for g in grants)
    assert True in states and states[-1] is False


def test_other_person_is_denied_unknown(
    enrolled_state: Path, tmp_path: Path, videos_dir: Path
) -> None:
    events, states = run(enrolled_state, videos_dir / "zubair_real.mov", tmp_path)
    kinds = [e["kind"] for e in events]
    assert "granted" not in kinds and "denied_unknown" in kinds
    assert all(e["person"] is None for e in events if e["kind"] == "denied_unknown")
    assert True not in states


def test_replay_of_enrolled_person_is_never_granted(
    enrolled_state: Path, tmp_path: Path, videos_dir: Path
) -> None:
    events, states = run(enrolled_state, videos_dir / "wolf_fake.mp4", tmp_path)
    assert "granted" not in [e["kind"] for e in events]
    assert True not in states


def test_corrupt_store_refuses_to_start(tmp_path: Path, mock_factory: MockFactory) -> None:
    if not MODEL.exists():
        pytest.skip("shipped model missing")
    (tmp_path / "enrolled.json").write_text("{not json")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state_dir: {tmp_path}\nliveness:\n  model: {MODEL}\nmqtt:\n  enabled: false\n"
    )
    assert main(["run", "--config", str(config), "--relay", "mock", "--source", "0"]) == 2
    assert mock_factory.pins == {}, "never falls back to any_live, never touches the relay"
