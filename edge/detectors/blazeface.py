"""MediaPipe's short-range BlazeFace detector (Apache-2.0) in ai-edge-litert, decoded here.

The model gives raw SSD outputs only: 896 anchor regressions (x, y, w, h and 6 key points, in
pixels of the 128x128 input relative to the anchor) and 896 logits. Decoding follows MediaPipe's
``face_detection_short_range`` graph: ``SsdAnchorsCalculator`` (4 layers, strides 8/16/16/16,
anchor offset 0.5, fixed anchor size), ``TensorsToDetectionsCalculator`` (scales 128, sigmoid of
the logit clipped to +-100) and ``NonMaxSuppressionCalculator`` (weighted, IoU 0.3). The frame is
letterboxed to a square first (as MediaPipe's ``ImageToTensorCalculator`` with keep_aspect_ratio),
so faces keep their shape, and boxes are mapped back through the same letterbox.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.assets import BLAZEFACE_SHORT_RANGE, checked_asset
from edge.detectors.base import Detection, FaceDetector, clip_box, iou
from edge.errors import ModelError

logger = logging.getLogger(__name__)

INPUT_SIZE = 128
# SsdAnchorsCalculatorOptions of face_detection_short_range.pbtxt.
ANCHOR_STRIDES = (8, 16, 16, 16)
ANCHOR_OFFSET = 0.5
# One anchor of aspect ratio 1 plus the interpolated-scale anchor, per layer.
ANCHORS_PER_LAYER = 2
NUM_ANCHORS = 896
NUM_COORDS = 16  # box (4) + 6 key points x 2
# TensorsToDetectionsCalculatorOptions: raw regressions are in input pixels.
COORD_SCALE = 128.0
SCORE_CLIP = 100.0
# NonMaxSuppressionCalculatorOptions.min_suppression_threshold.
NMS_MIN_IOU = 0.3


@dataclass(frozen=True)
class BoxAdjust:
    """A fixed change of a box, relative to its own size: shift the centre by ``dx`` widths and
    ``dy`` heights, then scale width by ``sw`` and height by ``sh``."""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, box: np.ndarray) -> np.ndarray:
        """Adjusted copies of boxes ``(..., 4)`` as x1, y1, x2, y2 floats."""
        box = np.asarray(box, dtype=np.float64)
        w = box[..., 2] - box[..., 0]
        h = box[..., 3] - box[..., 1]
        cx = (box[..., 0] + box[..., 2]) / 2.0 + self.dx * w
        cy = (box[..., 1] + box[..., 3]) / 2.0 + self.dy * h
        half_w, half_h = w * self.sw / 2.0, h * self.sh / 2.0
        return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


IDENTITY_ADJUST = BoxAdjust()
# BlazeFace boxes are square-ish and tighter (brows to chin) than res10's (forehead to chin, taller
# than wide), and the liveness model was trained on res10 crops, so by default BlazeFace boxes are
# mapped onto res10's on average. Fitted with `python -m bench.detector_compare --fit` on the 649
# frames of ../shared/videos (medians over 502 faces both found): mean IoU with res10's boxes
# 0.67 before, 0.81 after (0.74-0.83 per clip when fitted on the other three clips only).
RES10_MATCH_ADJUST = BoxAdjust(dx=0.025, dy=-0.096, sw=0.899, sh=1.341)


def ssd_anchors(
    input_size: int = INPUT_SIZE,
    strides: tuple[int, ...] = ANCHOR_STRIDES,
    offset: float = ANCHOR_OFFSET,
    anchors_per_layer: int = ANCHORS_PER_LAYER,
) -> np.ndarray:
    """Anchor centres ``(N, 2)`` as x, y in [0, 1], in the order the model emits them.

    As MediaPipe's SsdAnchorsCalculator: consecutive layers with the same stride share one
    feature map, whose cells each get ``anchors_per_layer`` anchors per layer; cells run row by
    row, anchors of a cell are consecutive. Fixed anchor size: every anchor is 1 x 1.
    """
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer < len(strides) and strides[layer] == stride:
            same += 1
            layer += 1
        cells = math.ceil(input_size / stride)
        grid = (np.arange(cells, dtype=np.float64) + offset) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")  # row-major: y outer, x inner
        cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, same * anchors_per_layer, axis=0))
    return np.concatenate(centres, axis=0)


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, scale: float = COORD_SCALE) -> np.ndarray:
    """Boxes ``(N, 4)`` as x1, y1, x2, y2 in [0, 1] of the model input from raw regressions.

    The regressors hold x-centre, y-centre, width, height first (MediaPipe's
    ``reverse_output_order``), in input pixels, the centre relative to the anchor.
    """
    cx = raw[:, 0] / scale + anchors[:, 0]
    cy = raw[:, 1] / scale + anchors[:, 1]
    half_w = raw[:, 2] / scale / 2.0
    half_h = raw[:, 3] / scale / 2.0
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def scores_from_logits(logits: np.ndarray, clip: float = SCORE_CLIP) -> np.ndarray:
    """Sigmoid of the logits, clipped first to +-``clip`` as MediaPipe does (no overflow)."""
    clipped = np.clip(np.asarray(logits, dtype=np.float64), -clip, clip)
    return 1.0 / (1.0 + np.exp(-clipped))


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, min_iou: float = NMS_MIN_IOU
) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression, best first.

    Take the best remaining box; every remaining box overlapping it by IoU > ``min_iou`` (itself
    included) is removed and the group becomes one box, the score-weighted mean of their
    coordinates, with the best box's score. Averaging the many anchors that fire on one face gives
    a steadier box than keeping one of them.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    remaining = order
    kept: list[tuple[np.ndarray, float]] = []
    while remaining.size:
        best = remaining[0]
        overlaps = iou(boxes[best], boxes[remaining]) > min_iou
        overlaps[0] = True  # a degenerate (zero-area) best box still forms its own group
        group = remaining[overlaps]
        weights = scores[group]
        total = float(weights.sum())
        if total > 0.0:
            merged = (boxes[group] * weights[:, None]).sum(axis=0) / total
        else:
            merged = boxes[best].copy()
        kept.append((merged, float(scores[best])))
        remaining = remaining[~overlaps]
    return kept


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the square model input: scaled by ``sx``/``sy`` (input pixels
    per frame pixel) and placed at ``pad_x``/``pad_y`` input pixels from the corner."""

    frame_width: int
    frame_height: int
    size: int
    sx: float
    sy: float
    pad_x: int
    pad_y: int

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``(..., 4)`` in [0, 1] of the model input -> frame pixels (not clipped)."""
        boxes = np.asarray(boxes, dtype=np.float64) * self.size
        out = np.empty_like(boxes)
        out[..., 0::2] = (boxes[..., 0::2] - self.pad_x) / self.sx
        out[..., 1::2] = (boxes[..., 1::2] - self.pad_y) / self.sy
        return out


def letterbox(frame_bgr: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """The frame resized into a ``size`` square keeping its aspect ratio, centred on black."""
    height, width = frame_bgr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty frame of shape {frame_bgr.shape}")
    scale = size / max(width, height)
    new_w = min(size, max(1, int(round(width * scale))))
    new_h = min(size, max(1, int(round(height * scale))))
    shrinking = new_w < width or new_h < height
    resized = cv2.resize(
        frame_bgr,
        (new_w, new_h),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    square = np.zeros((size, size, 3), dtype=np.uint8)
    square[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # Per-axis scales from the rounded size, so mapping back is exact at the image edges.
    return square, Letterbox(width, height, size, new_w / width, new_h / height, pad_x, pad_y)


def to_model_input(square_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 square -> 1 x H x W x 3 RGB float32 in [-1, 1], as the model was trained."""
    rgb = cv2.cvtColor(square_bgr, cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0))[None]


# Tiles: the short-range model misses faces under ~10 % of the frame's long side (measured on the
# sample clips: a face of 102 px in a 960 px frame found 10/10, 85 px 2/10), because the whole
# frame is squeezed into 128 px with padding. Square tiles as tall as the frame's short side zoom
# in by long/short (1.33 for 4:3, 1.78 for 16:9) with no padding. They overlap by at least this
# share of the long side, so that a face too small for the whole-frame pass lies whole in a tile.
TILE_OVERLAP_SHARE = 0.12
# Tiles of a nearly square frame would zoom in too little to find anything new.
MIN_TILE_ZOOM = 1.2
# A tile's box nearer a cut edge than this many pixels plus this share of its own size is taken
# for a face cut by the tile (the model boxes half faces too): left to the other passes.
TILE_EDGE_PX = 2
TILE_EDGE_SHARE = 0.15


def tile_grid(width: int, height: int) -> list[tuple[int, int, int]]:
    """Square tiles (x, y, side) along the frame's long axis, each as tall as the short side and
    overlapping by >= ``TILE_OVERLAP_SHARE`` of the long side; [] for a (nearly) square frame."""
    long_side, side = max(width, height), min(width, height)
    if long_side < MIN_TILE_ZOOM * side:
        return []
    overlap = min(side - 1, int(math.ceil(TILE_OVERLAP_SHARE * long_side)))
    count = int(math.ceil((long_side - overlap) / (side - overlap)))
    starts = [int(round(v)) for v in np.linspace(0, long_side - side, count)]
    return [(start, 0, side) if width > height else (0, start, side) for start in starts]


class BlazeFaceDetector(FaceDetector):
    """MediaPipe's short-range BlazeFace (meant for faces near the camera) in ai-edge-litert.

    On the whole frame it finds faces down to ~11 % of the frame's long side (see ``tile_grid``).
    One interpreter: use one detector per thread.

    ``adjust`` maps its boxes onto res10-like boxes (the liveness model's training crops);
    pass ``IDENTITY_ADJUST`` for the model's own boxes. ``tiles`` adds passes on overlapping
    square tiles of the frame (``tile_grid``) to find faces too small for the whole-frame pass,
    at the cost of one more model run per tile (2 for 4:3 and 16:9 frames).
    """

    name = "blazeface"

    def __init__(
        self,
        confidence: float = 0.5,
        min_face_px: int = 0,
        assets_dir: Path | None = None,
        num_threads: int | None = None,
        adjust: BoxAdjust = RES10_MATCH_ADJUST,
        tiles: bool = False,
        min_visible: float = 0.0,
    ) -> None:
        # Imported here so that a res10-only daemon does not need the interpreter loaded.
        from ai_edge_litert.interpreter import Interpreter

        path = checked_asset(BLAZEFACE_SHORT_RANGE, assets_dir)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load {path} in ai-edge-litert: {exc}") from exc
        inputs = self.interpreter.get_input_details()
        outputs = {d["name"]: d for d in self.interpreter.get_output_details()}
        expected = {
            "regressors": (1, NUM_ANCHORS, NUM_COORDS),
            "classificators": (1, NUM_ANCHORS, 1),
        }
        shapes = {name: tuple(int(v) for v in d["shape"]) for name, d in outputs.items()}
        input_shape = tuple(int(v) for v in inputs[0]["shape"]) if len(inputs) == 1 else ()
        if input_shape != (1, INPUT_SIZE, INPUT_SIZE, 3) or any(
            shapes.get(name) != shape for name, shape in expected.items()
        ):
            raise ModelError(
                f"{path} is not the short-range BlazeFace this code decodes (input {input_shape},"
                f" outputs {shapes}): run `python scripts/fetch_assets.py`"
            )
        self._input_index = int(inputs[0]["index"])
        self._regressors_index = int(outputs["regressors"]["index"])
        self._scores_index = int(outputs["classificators"]["index"])
        self.anchors = ssd_anchors()
        self.confidence = confidence
        self.min_face_px = min_face_px
        self.adjust = adjust
        self.tiles = tiles
        self.min_visible = min_visible
        if tiles:
            self.name = "blazeface_tiles"

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """All faces scoring at least ``confidence``, best first, in frame pixels, clipped."""
        height, width = frame_bgr.shape[:2]
        boxes, scores = self._run(frame_bgr)
        if self.tiles:
            boxes, scores = self._add_tiles(frame_bgr, boxes, scores)
        found: list[Detection] = []
        for box_px, score in zip(boxes, scores, strict=True):
            x1, y1, x2, y2 = self.adjust.apply(box_px)
            box = clip_box(x1, y1, x2, y2, width, height, self.min_visible)
            if box is None:
                continue
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face_px:
                continue
            found.append(Detection(box, score, (float(x1), float(y1), float(x2), float(y2))))
        found.sort(key=lambda d: d.score, reverse=True)
        return found

    def _run(self, image_bgr: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """One model pass: the model's own boxes (float, pixels of ``image_bgr``) and scores."""
        square, box_map = letterbox(image_bgr)
        self.interpreter.set_tensor(self._input_index, to_model_input(square))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._regressors_index)[0]
        logits = self.interpreter.get_tensor(self._scores_index)[0, :, 0]
        scores = scores_from_logits(logits)
        keep = scores >= self.confidence
        if not keep.any():
            return [], []
        merged = weighted_nms(decode_boxes(raw[keep], self.anchors[keep]), scores[keep])
        return [box_map.to_frame(box) for box, _ in merged], [score for _, score in merged]

    def _add_tiles(
        self, frame_bgr: np.ndarray, boxes: list[np.ndarray], scores: list[float]
    ) -> tuple[list[np.ndarray], list[float]]:
        height, width = frame_bgr.shape[:2]
        boxes, scores = list(boxes), list(scores)
        for x, y, side in tile_grid(width, height):
            for box, score in zip(*self._run(frame_bgr[y : y + side, x : x + side]), strict=True):
                # A face cut by the tile border gives a cut box: the other passes see it whole.
                margin_x = TILE_EDGE_PX + TILE_EDGE_SHARE * (box[2] - box[0])
                margin_y = TILE_EDGE_PX + TILE_EDGE_SHARE * (box[3] - box[1])
                cut = (
                    (box[0] < margin_x and x > 0)
                    or (box[1] < margin_y and y > 0)
                    or (box[2] > side - margin_x and x + side < width)
                    or (box[3] > side - margin_y and y + side < height)
                )
                if not cut:
                    boxes.append(box + np.array([x, y, x, y], dtype=np.float64))
                    scores.append(score)
        if len(boxes) < 2:
            return boxes, scores
        # The same face seen by several passes becomes one box.
        merged = weighted_nms(np.stack(boxes), np.asarray(scores))
        return [box for box, _ in merged], [score for _, score in merged]


def make_blazeface(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
    tiles: bool = False,
) -> FaceDetector:
    """The registry's factory of kind ``blazeface`` (whole frames)."""
    return BlazeFaceDetector(
        confidence=confidence,
        min_face_px=min_face_px,
        assets_dir=assets_dir,
        num_threads=num_threads,
        min_visible=min_visible,
        tiles=tiles,
    )


def make_blazeface_tiles(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
) -> FaceDetector:
    """Kind ``blazeface_tiles``: BlazeFace plus passes on 2 square tiles, for faces under ~10 %
    of the frame."""
    return make_blazeface(confidence, min_face_px, assets_dir, num_threads, min_visible, tiles=True)


def make_blazeface_region(
    confidence: float,
    min_face_px: int,
    assets_dir: Path | None,
    num_threads: int | None,
    min_visible: float = 0.0,
    input_px: int = INPUT_SIZE,
) -> FaceDetector:
    """For crops around a known face (``edge.detectors.regions``): BlazeFace without tiles, which
    are for small faces; its input is fixed at 128 px, so ``input_px`` is not used."""
    return make_blazeface(confidence, min_face_px, assets_dir, num_threads, min_visible)
