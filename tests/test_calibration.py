"""Camera calibration (edge/calibration.py, `python -m edge calibrate`): the threshold rises to
this camera's live faces, never falls below the model's own, is bound to the model, and a broken
file refuses the start."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.__main__ import main
from edge.calibration import (
    MIN_FACES,
    apply_calibration,
    calibrate,
    load,
    save,
)
from edge.config import parse_config
from edge.errors import EXIT_REFUSED, ConfigError, InputError
from edge.liveness import LivenessModel
from tests.conftest import MODEL, REPO_ROOT
from tests.test_daemon_e2e import demo_config, run_clip


@pytest.fixture
def model() -> LivenessModel:
    return LivenessModel.load(MODEL)


def test_threshold_rises_to_the_live_quantile_and_never_falls(model: LivenessModel) -> None:
    own = model.threshold
    high = [0.95] * 10 + [0.8] * 50  # 5 % quantile: 0.8
    raised = calibrate(high, model, "cam")
    assert raised.live_quantile == pytest.approx(0.8) and raised.threshold == pytest.approx(0.8)
    assert raised.n_faces == 60 and raised.live_share == 1.0
    low = [own / 2] * 60  # a camera the model likes little (or a replay): no change
    assert calibrate(low, model, "cam").threshold == own
    # The ceiling: live faces at 0.99 do not push the threshold past max_threshold.
    assert calibrate([0.99] * 60, model, "cam", max_threshold=0.9).threshold == 0.9
    with pytest.raises(InputError, match=f"only {MIN_FACES - 1} faces"):
        calibrate([0.9] * (MIN_FACES - 1), model, "cam")


def test_calibration_keeps_no_camera_password(model: LivenessModel) -> None:
    source = "rtsp://admin:hunter2@10.0.0.5/stream"
    assert calibrate([0.7] * 60, model, source).source == "rtsp://***@10.0.0.5/stream"
    with pytest.raises(InputError, match="only 1 faces") as caught:
        calibrate([0.9], model, source)
    assert "hunter2" not in str(caught.value)


def test_file_round_trip_is_private_and_a_broken_file_is_refused(
    tmp_path: Path, model: LivenessModel
) -> None:
    path = tmp_path / "state" / "liveness_calibration.json"
    calibration = calibrate([0.7] * 60, model, "0")
    save(calibration, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == calibration
    assert load(tmp_path / "none.json") is None
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable camera calibration"):
        load(path)
    data = calibration.to_json()
    data["live_quantile"] = 3.0
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="out of range"):
        load(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_saved_by_root_the_file_belongs_to_the_owner_of_the_state_folder(
    tmp_path: Path, model: LivenessModel
) -> None:
    """The daemon (the state folder's owner) must be able to read a calibration written with
    sudo; a root-owned 0600 file made it refuse to start."""
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 4321, 4322)  # the service user owns the state directory
    save(calibrate([0.7] * 60, model, "0"), folder / "liveness_calibration.json")
    info = (folder / "liveness_calibration.json").stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322)
    assert stat.S_IMODE(info.st_mode) == 0o600


def test_applies_only_to_its_model_and_not_over_a_set_threshold(
    tmp_path: Path, model: LivenessModel, caplog: pytest.LogCaptureFixture
) -> None:
    def config(**liveness: object):  # noqa: ANN202
        return parse_config(
            {"state_dir": str(tmp_path), "liveness": {"model": str(MODEL), **liveness}}, REPO_ROOT
        )

    own = model.threshold
    calibration = calibrate([0.8] * 60, model, "0")
    save(calibration, config().calibration_path)
    assert apply_calibration(model, config()) == calibration and model.threshold == 0.8
    model.threshold = own
    assert apply_calibration(model, config(camera_calibration=False)) is None
    assert apply_calibration(model, config(threshold=0.3)) is None and model.threshold == own
    # A calibration of another model (e.g. before an update) is not used, and says so.
    data = calibration.to_json()
    data["model_sha256"] = "0" * 64
    config().calibration_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="edge.calibration"):
        assert apply_calibration(model, config()) is None
    assert model.threshold == own and "another liveness model" in caplog.text


def test_a_calibration_never_lowers_the_models_threshold(
    tmp_path: Path, model: LivenessModel
) -> None:
    # The file records the model's threshold of its day; the sidecar's may since be higher (a
    # re-export of the same model file), or the file edited by hand. The door's threshold is
    # never below the model's own, whatever the file says.
    config = parse_config(
        {"state_dir": str(tmp_path), "liveness": {"model": str(MODEL)}}, REPO_ROOT
    )
    own = model.threshold
    data = calibrate([own + 0.05] * 60, model, "0").to_json()
    data["model_threshold"] = own - 0.3
    data["live_quantile"] = own - 0.2
    config.calibration_path.write_text(json.dumps(data))
    assert apply_calibration(model, config) is not None
    assert model.threshold == own
    # And a raise is still a raise above the model's threshold of today.
    model.threshold = own + 0.1
    save(calibrate([own + 0.2] * 60, model, "0"), config.calibration_path)
    model.threshold = own + 0.15
    apply_calibration(model, config)
    assert model.threshold == pytest.approx(own + 0.2)


def _edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=300,
        cwd=REPO_ROOT,
    )  # fmt: skip


@pytest.mark.slow
def test_calibrate_on_a_live_clip_then_the_door_uses_it_and_still_opens(
    tmp_path: Path, videos_dir: Path, res10_assets: Path, mock_factory: MockFactory
) -> None:
    config = demo_config(tmp_path)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"state_dir: {tmp_path / 'state'}\nliveness:\n  model: {MODEL}\n"
        f"detector:\n  assets_dir: {res10_assets}\nmqtt:\n  enabled: false\n"
    )
    clip = videos_dir / "wolf_real.mp4"
    result = _edge("calibrate", "--config", str(config_file), "--source", str(clip))
    assert result.returncode == 0, result.stderr
    assert "(raised)" in result.stdout
    written = load(config.calibration_path)
    assert written is not None and written.n_faces == 60
    assert LivenessModel.load(MODEL).threshold < written.threshold <= 0.9
    result = _edge("check-config", "--config", str(config_file))
    assert result.returncode == 0 and "camera calibration" in result.stdout

    code, events, states = run_clip(config, clip, mock_factory, tmp_path / "events.jsonl")
    started = next(e for e in events if e["kind"] == "started")
    assert started["threshold_from"] == "camera_calibration"
    assert started["threshold"] == pytest.approx(written.threshold)
    assert code == 0 and any(e["kind"] == "granted" for e in events) and True in states

    # A broken calibration file stops the door before it starts (exit 2, the file named).
    config.calibration_path.write_text("garbage")
    result = _edge("check-config", "--config", str(config_file))
    assert result.returncode == 2 and "liveness_calibration.json" in result.stderr


def test_replay_splits_by_person_or_by_time_and_uses_the_daemons_rule() -> None:
    import numpy as np

    from train_host.calibration import calibrated_thresholds, calibration_split

    sources = np.array(["many"] * 8 + ["one"] * 6)
    subjects = np.array(["a", "a", "b", "b", "c", "c", "d", "d"] + ["z"] * 6)
    is_real = np.array([1, 0, 1, 0, 1, 0, 1, 0] + [1, 1, 1, 1, 0, 0], bool)
    order = [("cap", i) for i in range(8)] + [("zc", i) for i in (3, 1, 2, 0, 4, 5)]
    calibrate, test = calibration_split(sources, subjects, is_real, order, seed=0)
    assert not (calibrate & test).any()
    # Several people: two of them calibrate; only the other two are scored, live and attack.
    calibrating = set(subjects[calibrate & (sources == "many")].tolist())
    assert len(calibrating) == 2
    assert not set(subjects[test & (sources == "many")].tolist()) & calibrating
    assert test[sources == "many"].sum() == 4
    # One person: the earlier half of the live frames (capture order, not file order).
    assert np.flatnonzero(calibrate & (sources == "one")).tolist() == [9, 11]
    assert sorted(np.flatnonzero(test & (sources == "one")).tolist()) == [8, 10, 12, 13]

    scores = np.array([0.7] * 8 + [0.99, 0.2, 0.99, 0.2, 0.1, 0.1])
    thresholds = np.full(14, 0.4)
    raised = calibrated_thresholds(scores, thresholds, sources, calibrate, 0.05, 0.9)
    assert np.allclose(raised[sources == "many"], 0.7)  # the live quantile
    # "one" calibrates on 0.2 and 0.99 (quantile 0.2385): below the threshold, so unchanged.
    assert np.allclose(raised[sources == "one"], 0.4)
    capped = calibrated_thresholds(np.full(14, 0.99), thresholds, sources, calibrate, 0.05, 0.9)
    assert np.allclose(capped, 0.9)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--faces", "5"), ("--quantile", "2"), ("--max-threshold", "1.5"), ("--seconds", "0")],
)
def test_a_bad_option_is_refused_before_anyone_stands_at_the_camera(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    import edge.calibration

    def no_scoring(*_args: object) -> None:
        raise AssertionError("faces scored with an option that was going to be refused")

    monkeypatch.setattr(edge.calibration, "live_face_scores", no_scoring)
    argv = ["calibrate", "--source", str(MODEL), "--dry-run", option, value]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == EXIT_REFUSED
    assert f"argument {option}: {value!r}: give" in capfd.readouterr().err
