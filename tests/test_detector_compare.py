"""The detector comparison: both detectors agree on real frames; the counting is right."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.clips import read_frames
from bench.detector_compare import (
    ClipRecords,
    FrameRecord,
    best_iou,
    fit_box_adjustment,
    main,
    reference_faces,
    summarise,
)
from edge.assets import BLAZEFACE_SHORT_RANGE, DEFAULT_ASSETS_DIR, RES10_ASSETS
from edge.detectors.base import Detection
from edge.detectors.blazeface import IDENTITY_ADJUST, BoxAdjust
from edge.detectors.registry import make_detector
from edge.errors import InputError


@pytest.fixture(scope="module")
def all_assets() -> Path:
    for asset in (*RES10_ASSETS, BLAZEFACE_SHORT_RANGE):
        if not (DEFAULT_ASSETS_DIR / asset.name).exists():
            pytest.skip(f"{asset.name} missing (python scripts/fetch_assets.py)")
    return DEFAULT_ASSETS_DIR


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return best_iou(a, [b])[0]  # type: ignore[arg-type]


# --- the real detectors on real frames ---------------------------------------------------------


@pytest.mark.parametrize("clip", ["zubair_real.mov", "wolf_real.mp4"])
def test_both_detectors_agree_on_sample_frames(
    all_assets: Path, videos_dir: Path, clip: str
) -> None:
    """As the daemon builds them: BlazeFace's adjusted boxes land on res10's main face."""
    frames = read_frames(videos_dir / clip, max_frames=60, step=10)
    res10 = make_detector("res10", confidence=0.5, min_face_px=60, assets_dir=all_assets)
    blaze = make_detector("blazeface", confidence=0.5, min_face_px=60, assets_dir=all_assets)
    compared = agreed = 0
    for frame in frames:
        faces = sorted(res10.detect(frame), key=lambda d: d.area, reverse=True)
        if not faces:
            continue
        compared += 1
        boxes = [d.box for d in blaze.detect(frame)]
        agreed += int(best_iou(faces[0].box, boxes)[0] >= 0.5)
    assert compared >= 4
    assert agreed >= 0.9 * compared


def test_res10_box_cut_by_the_frame_edge_is_not_a_face_in_view(
    all_assets: Path, videos_dir: Path
) -> None:
    """On wolf_fake res10 scores the shirt below the face (box reaching far below the frame) at
    0.99; with ``min_visible`` only the face in view is left."""
    frames = read_frames(videos_dir / "wolf_fake.mp4", max_frames=20, step=1)
    frame = frames[9]
    height = frame.shape[0]
    loose = make_detector("res10", min_face_px=60, assets_dir=all_assets).detect(frame)
    strict = make_detector("res10", min_face_px=60, assets_dir=all_assets, min_visible=0.8)
    kept = strict.detect(frame)
    assert any(d.box[3] == height for d in loose), "the edge box this test is about"
    assert kept and all(d.box[3] < height for d in kept)
    assert {d.box for d in kept} < {d.box for d in loose}


def test_adjustment_brings_boxes_closer_on_a_sample_frame(
    all_assets: Path, videos_dir: Path
) -> None:
    (frame,) = read_frames(videos_dir / "zubair_real.mov", max_frames=1)
    (face,) = make_detector("res10", min_face_px=60, assets_dir=all_assets).detect(frame)
    own = make_detector("blazeface", assets_dir=all_assets)
    own.adjust = IDENTITY_ADJUST  # type: ignore[attr-defined]
    adjusted = make_detector("blazeface", assets_dir=all_assets)
    assert _iou(face.box, adjusted.detect(frame)[0].box) > _iou(face.box, own.detect(frame)[0].box)


def test_main_writes_json_for_a_folder_of_clips(
    all_assets: Path, videos_dir: Path, tmp_path: Path
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    frames = read_frames(videos_dir / "zubair_real.mov", max_frames=3)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(
        str(clips / "short.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (width, height)
    )
    for frame in frames:
        writer.write(frame)
    writer.release()
    out = tmp_path / "result.json"
    assert main(["--videos", str(clips), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    clip = result["clips"]["short.avi"]
    assert clip["frame_size"] == f"{width}x{height}" and clip["frames"] == 3
    blaze = result["total"]["detectors"]["blazeface"]
    assert blaze["main_faces"] == 3 and blaze["main_missed"] == 0
    assert blaze["ms_median"] > 0 and result["total"]["res10_ms_median"] > 0
    assert set(result["total"]["detectors"]) == {"blazeface", "blazeface_tiles", "res10+regions"}
    # res10 searching regions around the face it found on frame 0 finds it on frames 1 and 2.
    regions = result["total"]["detectors"]["res10+regions"]
    assert regions["main_faces"] == 3 and regions["main_missed"] == 0
    assert regions["iou_own_boxes"]["min"] >= 0.5
    assert main(["--videos", str(clips), "--every-n-frames", "1", "--json", str(out)]) == 0
    assert "res10+regions" not in json.loads(out.read_text())["total"]["detectors"]


def test_main_refuses_a_folder_without_clips(tmp_path: Path) -> None:
    assert main(["--videos", str(tmp_path)]) == 2
    with pytest.raises(InputError):
        read_frames(tmp_path / "missing.mp4")


# --- counting on hand-made records -----------------------------------------------------------


def _record(
    index: int, res10: list[tuple[int, int, int, int]], blaze: list[tuple[int, int, int, int]]
) -> FrameRecord:
    return FrameRecord(
        index=index,
        res10=[Detection(box, 0.9) for box in res10],
        res10_ms=50.0,
        found={"blazeface": [Detection(box, 0.8) for box in blaze]},
        ms={"blazeface": 2.0},
    )


def test_summarise_counts_faces_main_faces_frames_and_extras() -> None:
    face, false_positive, small = (100, 100, 200, 220), (300, 300, 380, 380), (10, 10, 40, 40)
    clip = ClipRecords("hand", 640, 480)
    clip.frames = [
        _record(0, [face, false_positive], [face]),  # main face found, the smaller one missed
        _record(1, [face], []),  # missed: the frame has no candidate face at all
        _record(2, [small], [small]),  # res10 face under min_face_px: does not count
        _record(3, [], [(500, 10, 600, 110)]),  # a face res10 does not have
        _record(4, [face], [(150, 100, 250, 220)]),  # IoU 50/150 = 0.33 < 0.5: missed
    ]
    result = summarise([clip], IDENTITY_ADJUST, min_face_px=60)
    stats = result["clips"]["hand"]["detectors"]["blazeface"]  # type: ignore[index]
    assert stats["faces"] == 4 and stats["missed"] == 3
    assert stats["main_faces"] == 3 and stats["main_missed"] == 2
    assert stats["frames_found_none"] == 2
    assert stats["extra_faces"] == 2  # frame 3's face, and frame 4's misplaced box
    assert stats["miss_rate"] == 0.75
    assert stats["iou_own_boxes"]["n"] == 2  # frames 0 and 4 pair a box with the face
    assert stats["iou_own_boxes"]["min"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["misses_by_res10_face_size"] == {
        "60-100": {"faces": 1, "missed": 1},
        "100-150": {"faces": 3, "missed": 2},
    }
    assert result["total"]["res10_ms_median"] == 50.0  # type: ignore[index]
    assert result["total"]["frames"] == 5  # type: ignore[index]


def test_summarise_applies_the_adjustment_and_size_filter() -> None:
    face = (100, 100, 200, 240)  # 100 x 140, like res10
    own = (100, 120, 200, 220)  # 100 x 100, square like BlazeFace
    clip = ClipRecords("hand", 640, 480, [_record(0, [face], [own])])
    taller = BoxAdjust(dx=0.0, dy=0.0, sw=1.0, sh=1.4)
    before = summarise([clip], IDENTITY_ADJUST)["total"]["detectors"]["blazeface"]  # type: ignore[index]
    after = summarise([clip], taller)["total"]["detectors"]["blazeface"]  # type: ignore[index]
    assert before["iou_adjusted"]["mean"] == pytest.approx(100 / 140, abs=1e-3)
    assert after["iou_adjusted"]["mean"] == pytest.approx(1.0)
    # A box shrunk under min_face_px by the adjustment no longer counts, as in the daemon.
    shrink = BoxAdjust(sw=0.5, sh=0.5)
    shrunk = summarise([clip], shrink, min_face_px=60)["total"]["detectors"]["blazeface"]  # type: ignore[index]
    assert shrunk["missed"] == 1


def test_reference_faces_are_largest_first_and_filtered() -> None:
    record = _record(0, [(0, 0, 70, 70), (0, 0, 200, 200), (0, 0, 50, 300)], [])
    record.res10.append(Detection((300, 300, 400, 400), 0.3))  # below the reference score
    assert reference_faces(record, 60) == [(0, 0, 200, 200), (0, 0, 70, 70)]


def test_fit_recovers_a_known_adjustment() -> None:
    truth = BoxAdjust(dx=0.03, dy=-0.1, sw=0.9, sh=1.35)
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(50):
        x, y, side = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(80, 200)
        own = np.array([x, y, x + side, y + side])
        ref = truth.apply(own)
        pairs.append((tuple(ref), tuple(own)))
    fitted = fit_box_adjustment(pairs)  # type: ignore[arg-type]
    assert fitted.dx == pytest.approx(truth.dx, abs=2e-3)
    assert fitted.dy == pytest.approx(truth.dy, abs=2e-3)
    assert fitted.sw == pytest.approx(truth.sw, abs=2e-3)
    assert fitted.sh == pytest.approx(truth.sh, abs=2e-3)
    with pytest.raises(ValueError):
        fit_box_adjustment([])


def test_best_iou_without_candidates() -> None:
    assert best_iou((0, 0, 10, 10), []) == (0.0, -1)
    assert best_iou((0, 0, 10, 10), [(20, 20, 30, 30), (0, 0, 10, 10)]) == (1.0, 1)
