"""BlazeFace decoding against hand-made cases, and the real model on frames of the sample clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.assets import BLAZEFACE_SHORT_RANGE, DEFAULT_ASSETS_DIR
from edge.detectors.base import Detection, FaceDetector, iou
from edge.detectors.blazeface import (
    IDENTITY_ADJUST,
    NUM_ANCHORS,
    RES10_MATCH_ADJUST,
    TILE_OVERLAP_SHARE,
    BlazeFaceDetector,
    BoxAdjust,
    decode_boxes,
    letterbox,
    scores_from_logits,
    ssd_anchors,
    tile_grid,
    to_model_input,
    weighted_nms,
)
from edge.detectors.registry import make_detector
from edge.detectors.scaled import ScaledDetector, rescale_detections
from edge.errors import ModelError


@pytest.fixture(scope="module")
def blaze_assets() -> Path:
    if not (DEFAULT_ASSETS_DIR / BLAZEFACE_SHORT_RANGE.name).exists():
        pytest.skip("BlazeFace model missing (python scripts/fetch_assets.py)")
    return DEFAULT_ASSETS_DIR


@pytest.fixture(scope="module")
def blaze(blaze_assets: Path) -> BlazeFaceDetector:
    return BlazeFaceDetector(assets_dir=blaze_assets, num_threads=1, adjust=IDENTITY_ADJUST)


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    """A frame of a real clip with one face near the middle (landscape 960x540)."""
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "videos" / "zubair_real.mov"
    if not path.exists():
        pytest.skip(f"sample clip not found at {path}")
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


# --- anchors ---------------------------------------------------------------------------------


def test_anchor_count_and_layout() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (NUM_ANCHORS, 2)
    # Stride 8: a 16x16 map, 2 anchors per cell, row by row, the two anchors of a cell together.
    fine, coarse = anchors[:512], anchors[512:]
    assert np.allclose(fine[0], [0.5 / 16, 0.5 / 16]) and np.allclose(fine[1], fine[0])
    assert np.allclose(fine[2], [1.5 / 16, 0.5 / 16])  # next cell to the right
    assert np.allclose(fine[32], [0.5 / 16, 1.5 / 16])  # first cell of the second row
    assert np.allclose(fine[-1], [15.5 / 16, 15.5 / 16])
    # Three stride-16 layers share one 8x8 map: 6 anchors per cell.
    assert len(coarse) == 384
    assert np.allclose(coarse[:6], [0.5 / 8, 0.5 / 8])
    assert np.allclose(coarse[6], [1.5 / 8, 0.5 / 8])
    assert np.allclose(coarse[6 * 8], [0.5 / 8, 1.5 / 8])
    assert np.allclose(coarse[-1], [7.5 / 8, 7.5 / 8])
    # Each map covers the input evenly: the mean centre is the image centre.
    assert np.allclose(fine.mean(axis=0), 0.5) and np.allclose(coarse.mean(axis=0), 0.5)


def test_anchor_layers_group_only_equal_strides() -> None:
    anchors = ssd_anchors(input_size=64, strides=(8, 16, 8), anchors_per_layer=1)
    # 8 -> 8x8, then 16 -> 4x4, then 8 again is a new map (only consecutive layers group).
    assert len(anchors) == 64 + 16 + 64
    assert np.allclose(anchors[64], [0.5 / 4, 0.5 / 4])


# --- decoding --------------------------------------------------------------------------------


def test_decode_boxes_relative_to_anchor() -> None:
    anchors = np.array([[0.5, 0.5], [0.25, 0.75]])
    raw = np.zeros((2, 16))
    raw[0, :4] = [12.8, -6.4, 32.0, 64.0]  # shift +0.1, -0.05; size 0.25 x 0.5 (of 128 px)
    raw[1, :4] = [0.0, 0.0, 12.8, 12.8]
    boxes = decode_boxes(raw, anchors)
    assert np.allclose(boxes[0], [0.475, 0.2, 0.725, 0.7])
    assert np.allclose(boxes[1], [0.2, 0.7, 0.3, 0.8])


def test_scores_clip_logits_without_overflow() -> None:
    with np.errstate(over="raise"):
        scores = scores_from_logits(np.array([0.0, 1e6, -1e6, np.log(3.0)]))
    assert scores[0] == pytest.approx(0.5)
    assert scores[1] == pytest.approx(1.0)
    assert scores[2] == pytest.approx(1.0 / (1.0 + np.exp(100.0)))  # clipped at -100, not 0
    assert scores[3] == pytest.approx(0.75)


def test_iou_hand_cases() -> None:
    box = np.array([0.0, 0.0, 10.0, 10.0])
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [2, 2, 2, 8]], float)
    assert np.allclose(iou(box, others), [1.0, 50 / 150, 0.0, 0.0])


# --- non-maximum suppression -----------------------------------------------------------------


def test_nms_merges_overlapping_boxes_weighted_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], float)  # IoU 90/110
    kept = weighted_nms(boxes, np.array([0.9, 0.6]))
    assert len(kept) == 1
    merged, score = kept[0]
    assert score == pytest.approx(0.9)  # the group keeps its best score
    assert np.allclose(merged, [0.4, 0.0, 10.4, 10.0])  # (0*.9 + 1*.6)/1.5 = 0.4


def test_nms_keeps_separate_faces_best_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [7, 0, 17, 10]], float)
    # The third overlaps the first by IoU 30/170 = 0.18 < 0.3: a different face.
    kept = weighted_nms(boxes, np.array([0.7, 0.95, 0.6]))
    assert [round(score, 2) for _, score in kept] == [0.95, 0.7, 0.6]
    assert np.allclose(kept[0][0], boxes[1])
    assert np.allclose(kept[1][0], boxes[0])


def test_nms_suppresses_only_boxes_overlapping_the_kept_one() -> None:
    # B overlaps A (0.43) and C (0.43), C does not overlap A (0.11): A takes B, C stays.
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], float)
    kept = weighted_nms(boxes, np.array([0.9, 0.8, 0.7]))
    assert len(kept) == 2
    assert np.allclose(kept[0][0], [(0 * 0.9 + 4 * 0.8) / 1.7, 0, (10 * 0.9 + 14 * 0.8) / 1.7, 10])
    assert np.allclose(kept[1][0], boxes[2]) and kept[1][1] == pytest.approx(0.7)


def test_nms_threshold_is_a_parameter_and_empty_input_is_fine() -> None:
    boxes = np.array([[0, 0, 10, 10], [7, 0, 17, 10]], float)  # IoU 0.18
    assert len(weighted_nms(boxes, np.array([0.9, 0.8]), min_iou=0.1)) == 1
    assert weighted_nms(np.zeros((0, 4)), np.zeros(0)) == []
    with pytest.raises(ValueError):
        weighted_nms(boxes, np.array([0.9]))


# --- letterbox and input ---------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(200, 100), (100, 200), (640, 480), (128, 128)])
def test_letterbox_maps_the_image_area_back_to_the_frame(width: int, height: int) -> None:
    frame = np.full((height, width, 3), 200, np.uint8)
    square, box_map = letterbox(frame)
    assert square.shape == (128, 128, 3)
    # The image occupies the centred, non-black part of the square.
    ys, xs = np.nonzero(square[:, :, 0])
    image_area = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 128.0
    assert xs.min() == box_map.pad_x and ys.min() == box_map.pad_y
    assert abs((128 - xs.max() - 1) - xs.min()) <= 1 and abs((128 - ys.max() - 1) - ys.min()) <= 1
    assert np.allclose(box_map.to_frame(image_area), [0, 0, width, height])


def test_letterbox_keeps_positions() -> None:
    frame = np.zeros((300, 600, 3), np.uint8)
    frame[100:200, 400:500] = 255  # a white square in frame pixels
    square, box_map = letterbox(frame)
    ys, xs = np.nonzero(square[:, :, 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 128.0
    assert np.allclose(box_map.to_frame(found), [400, 100, 500, 200], atol=600 / 128)


def test_model_input_is_rgb_in_minus_one_to_one() -> None:
    square = np.zeros((128, 128, 3), np.uint8)
    square[..., 0] = 255  # pure blue in BGR
    x = to_model_input(square)
    assert x.shape == (1, 128, 128, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 0, 0], [-1.0, -1.0, 1.0])


def test_box_adjust() -> None:
    box = np.array([10.0, 20.0, 30.0, 60.0])  # 20 x 40, centre (20, 40)
    assert np.allclose(IDENTITY_ADJUST.apply(box), box)
    moved = BoxAdjust(dx=0.5, dy=-0.25, sw=2.0, sh=0.5).apply(box)
    assert np.allclose(moved, [10.0, 20.0, 50.0, 40.0])  # centre (30, 30), 40 x 20


# --- the real model --------------------------------------------------------------------------


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        BlazeFaceDetector(assets_dir=tmp_path)


def test_finds_the_face_in_a_clip_frame(blaze: BlazeFaceDetector, face_frame: np.ndarray) -> None:
    found = blaze.detect(face_frame)
    assert len(found) == 1
    x1, y1, x2, y2 = found[0].box
    height, width = face_frame.shape[:2]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert 0.1 * width < x2 - x1 < 0.5 * width  # a face, not the whole frame
    assert found[0].score >= blaze.confidence


def test_blank_frame_has_no_face(blaze: BlazeFaceDetector) -> None:
    assert blaze.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_boxes_follow_the_face_when_padded_or_mirrored(
    blaze: BlazeFaceDetector, face_frame: np.ndarray
) -> None:
    (reference,) = blaze.detect(face_frame)
    height, width = face_frame.shape[:2]
    # Same pixels inside a taller canvas at an offset: the letterbox changes, the box must not.
    canvas = np.zeros((height + 300, width, 3), np.uint8)
    canvas[200 : 200 + height] = face_frame
    (padded,) = blaze.detect(canvas)
    shifted = np.array(padded.box) - [0, 200, 0, 200]
    assert iou(np.array(reference.box, float), shifted[None].astype(float))[0] > 0.85
    mirrored = blaze.detect(face_frame[:, ::-1].copy())
    x1, y1, x2, y2 = mirrored[0].box
    assert (
        iou(np.array(reference.box, float), np.array([[width - x2, y1, width - x1, y2]], float))[0]
        > 0.85
    )


def test_min_face_px_and_confidence_filter(blaze_assets: Path, face_frame: np.ndarray) -> None:
    (face,) = BlazeFaceDetector(assets_dir=blaze_assets, adjust=IDENTITY_ADJUST).detect(face_frame)
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    assert BlazeFaceDetector(assets_dir=blaze_assets, min_face_px=side + 1).detect(face_frame) == []
    strict = BlazeFaceDetector(assets_dir=blaze_assets, confidence=min(1.0, face.score + 1e-6))
    assert strict.detect(face_frame) == []


def test_default_adjustment_moves_boxes_as_documented(
    blaze_assets: Path, face_frame: np.ndarray
) -> None:
    (own,) = BlazeFaceDetector(assets_dir=blaze_assets, adjust=IDENTITY_ADJUST).detect(face_frame)
    (adjusted,) = BlazeFaceDetector(assets_dir=blaze_assets).detect(face_frame)
    expected = RES10_MATCH_ADJUST.apply(np.array(own.box, float))
    assert np.allclose(adjusted.box, expected, atol=1.0)


# --- registry and downscaled detection -------------------------------------------------------


class BoxesAt(FaceDetector):
    """A detector reporting fixed boxes relative to the image it is given."""

    name = "fixed"

    def __init__(self, relative: list[tuple[float, float, float, float]]) -> None:
        self.relative = relative
        self.seen: list[tuple[int, ...]] = []

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        self.seen.append(frame_bgr.shape)
        height, width = frame_bgr.shape[:2]
        return [
            Detection((int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height)), 0.9)
            for x1, y1, x2, y2 in self.relative
        ]


def test_scaled_detector_runs_small_and_maps_boxes_back() -> None:
    inner = BoxesAt([(0.25, 0.25, 0.5, 0.75), (0.9, 0.9, 0.95, 0.95)])
    scaled = ScaledDetector(inner, detect_width=320, min_face_px=60)
    found = scaled.detect(np.zeros((960, 1280, 3), np.uint8))
    assert inner.seen == [(240, 320, 3)]
    # The small face (64 x 48 px at full size) is under 60 px on its short side: dropped there.
    assert [d.box for d in found] == [(320, 240, 640, 720)]


def test_scaled_detector_leaves_small_frames_alone_and_maps_lores_images() -> None:
    inner = BoxesAt([(0.5, 0.5, 1.0, 1.0)])
    scaled = ScaledDetector(inner, detect_width=640)
    assert [d.box for d in scaled.detect(np.zeros((240, 320, 3), np.uint8))] == [
        (160, 120, 320, 240)
    ]
    assert inner.seen == [(240, 320, 3)]
    lores = scaled.detect_on(np.zeros((240, 320, 3), np.uint8), (1920, 1080))
    assert [d.box for d in lores] == [(960, 540, 1920, 1080)]


def test_rescale_detections_clips() -> None:
    dets = [Detection((300, 200, 330, 250), 0.8)]
    assert rescale_detections(dets, (320, 240), (640, 480))[0].box == (600, 400, 640, 480)


def test_make_detector_knows_blazeface(blaze_assets: Path) -> None:
    detector = make_detector("blazeface", assets_dir=blaze_assets, num_threads=1)
    assert detector.name == "blazeface" and isinstance(detector, BlazeFaceDetector)
    assert not detector.tiles
    tiled = make_detector("blazeface_tiles", assets_dir=blaze_assets)
    assert isinstance(tiled, BlazeFaceDetector) and tiled.tiles
    scaled = make_detector("blazeface", assets_dir=blaze_assets, detect_width=320, min_face_px=60)
    assert isinstance(scaled, ScaledDetector) and scaled.name == "blazeface"
    assert scaled.min_face_px == 60 and scaled.inner.min_face_px == 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("yolo")


# --- tiles for small faces -------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(960, 540), (640, 480), (544, 960), (2000, 500)])
def test_tile_grid_covers_the_frame_with_enough_overlap(width: int, height: int) -> None:
    tiles = tile_grid(width, height)
    long_side, short_side = max(width, height), min(width, height)
    assert len(tiles) >= 2
    starts = sorted(x if width > height else y for x, y, _ in tiles)
    for x, y, side in tiles:
        assert side == short_side
        assert 0 <= x and x + side <= width and 0 <= y and y + side <= height
    assert starts[0] == 0 and starts[-1] + short_side == long_side
    overlaps = [short_side - (b - a) for a, b in zip(starts, starts[1:], strict=False)]
    assert min(overlaps) >= TILE_OVERLAP_SHARE * long_side


def test_tile_grid_skips_square_frames() -> None:
    assert tile_grid(128, 128) == [] and tile_grid(1000, 990) == []


@pytest.mark.parametrize("offset", [(0, 0), (250, 150), (500, 300)])
def test_tiles_find_a_face_too_small_for_the_whole_frame(
    blaze_assets: Path, face_frame: np.ndarray, offset: tuple[int, int]
) -> None:
    plain = BlazeFaceDetector(assets_dir=blaze_assets, adjust=IDENTITY_ADJUST)
    tiled = BlazeFaceDetector(assets_dir=blaze_assets, adjust=IDENTITY_ADJUST, tiles=True)
    (reference,) = plain.detect(face_frame)
    # The same scene at 40 % inside a grey 960x540 frame: a face of ~70 px.
    scale = 0.4
    small = cv2.resize(face_frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full_like(face_frame, 127)
    x, y = offset
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    expected = np.array(reference.box, float) * scale + [x, y, x, y]
    assert plain.detect(canvas) == []
    found = tiled.detect(canvas)
    assert len(found) == 1  # one face, not one per tile
    assert iou(expected, np.array([found[0].box], float))[0] > 0.7
    assert tiled.name == "blazeface_tiles"


def test_tiles_keep_a_large_face_single(blaze_assets: Path, face_frame: np.ndarray) -> None:
    plain = BlazeFaceDetector(assets_dir=blaze_assets).detect(face_frame)
    tiled = BlazeFaceDetector(assets_dir=blaze_assets, tiles=True).detect(face_frame)
    assert len(plain) == len(tiled) == 1
    assert iou(np.array(plain[0].box, float), np.array([tiled[0].box], float))[0] > 0.8


def test_boxes_mostly_outside_the_frame_are_dropped() -> None:
    from edge.detectors.base import clip_box

    # 640x480 frame; a box hanging 60 % below the bottom edge (res10's "chin/shirt" faces).
    assert clip_box(100, 400, 300, 600, 640, 480) == (100, 400, 300, 480)
    assert clip_box(100, 400, 300, 600, 640, 480, min_visible=0.8) is None
    # A box 10 % over the edge is still a face in view.
    assert clip_box(100, 300, 300, 500, 640, 480, min_visible=0.8) == (100, 300, 300, 480)
    assert clip_box(-20, 100, 180, 300, 640, 480, min_visible=0.8) == (0, 100, 180, 300)
