"""The one face preprocessing used by both the trainer and the daemon, so they cannot drift apart.

A face input is made in two steps, both here:
1. the crop, by the spec's ``geometry``:
   - ``"margin"``: ``crop_with_margin``, the detector's box enlarged around its centre by
     ``margin`` (1.0 = the box itself), clipped at the frame edges and padded by reflection where
     it leaves the frame (the v1 LivenessNet, trained on tight crops);
   - ``"context_shift"``: ``context_crop``, the face WITH its surroundings the way Silent-Face's
     MiniFASNet weights were trained: the box scaled by each of ``context_scales`` (the scale
     clamped so the box fits the frame), shifted to lie inside the frame, never padded. Padding
     breaks those weights and lets a model learn "more black = attack" (../shared/FACTS.md);
2. ``preprocess_crop``: resize to the model input, convert BGR (OpenCV's order) to the model's
   colour order (RGB, BGR or YCrCb), scale to float32. With several context scales the crops are
   stacked on the channel axis (3 channels each), so the model still has one input.
The trainer cuts its crops from whole frames (``../shared/data/frames``) with this module; the
daemon cuts them from camera frames with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

# A face box in frame pixels: x1, y1, x2, y2 with x2 > x1, y2 > y1 (x2/y2 exclusive).
Box = tuple[int, int, int, int]
# The same with fractional pixels (the trainer's manifest boxes); context crops take either.
FloatBox = tuple[float, float, float, float]
# "YCrCb": luma and two chroma channels (OpenCV's conversion), which anti-spoofing work on colour
# texture found to carry over between cameras better than RGB.
ColourOrder = Literal["RGB", "BGR", "YCrCb"]
# Crop geometries this module can cut; a sidecar naming another one is refused.
CropGeometry = Literal["margin", "context_shift"]
CROP_GEOMETRIES: tuple[str, ...] = ("margin", "context_shift")
# "area": INTER_AREA when shrinking, linear when enlarging (v1); "linear": cv2.resize's default
# always, as Silent-Face's own crop code does (the pretrained weights saw that).
ResizeMode = Literal["area", "linear"]
RESIZE_MODES: tuple[str, ...] = ("area", "linear")
COLOUR_CONVERSIONS: dict[str, int | None] = {
    "RGB": cv2.COLOR_BGR2RGB,
    "BGR": None,
    "YCrCb": cv2.COLOR_BGR2YCrCb,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its face input; stored in the model's JSON sidecar."""

    input_height: int
    input_width: int
    colour_order: ColourOrder = "RGB"
    margin: float = 1.0
    scale: float = 1.0 / 255.0  # float input = pixel * scale
    # > 0: feed the model only the fine texture (the scaled crop minus its Gaussian blur of this
    # sigma, in input pixels, plus 0.5), where screens leave moire and pixel grids, and drop the
    # overall colour and lighting that differ between cameras.
    highpass_sigma: float = 0.0
    geometry: CropGeometry = "margin"
    # "context_shift" only: one crop per scale (face box side times the scale), in this order.
    context_scales: tuple[float, ...] = ()
    resize: ResizeMode = "area"

    @property
    def channels(self) -> int:
        """Channels of the model input: 3 per crop."""
        return 3 * len(self.context_scales) if self.geometry == "context_shift" else 3

    def to_json(self) -> dict[str, object]:
        return {
            "input_height": self.input_height,
            "input_width": self.input_width,
            "colour_order": self.colour_order,
            "margin": self.margin,
            "scale": self.scale,
            "highpass_sigma": self.highpass_sigma,
            "geometry": self.geometry,
            "context_scales": list(self.context_scales),
            "resize": self.resize,
        }

    def __post_init__(self) -> None:
        if self.colour_order not in COLOUR_CONVERSIONS:
            raise ValueError(
                f"unknown colour order {self.colour_order!r}; known: {sorted(COLOUR_CONVERSIONS)}"
            )
        if self.geometry not in CROP_GEOMETRIES:
            raise ValueError(
                f"unknown crop geometry {self.geometry!r}: this version cuts only"
                f" {list(CROP_GEOMETRIES)}; update LiveGate or use a model made for it"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; known: {list(RESIZE_MODES)}")
        if self.geometry == "context_shift":
            if not self.context_scales or any(not 1.0 <= s <= 8.0 for s in self.context_scales):
                raise ValueError(
                    f"context_shift needs context_scales between 1 and 8, got"
                    f" {list(self.context_scales)}"
                )
            if self.highpass_sigma > 0.0:
                raise ValueError("highpass_sigma is not supported with context_shift crops")
        elif self.context_scales:
            raise ValueError(f"context_scales {list(self.context_scales)} need context_shift")

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PreprocessSpec:
        return cls(
            input_height=int(data["input_height"]),  # type: ignore[call-overload]
            input_width=int(data["input_width"]),  # type: ignore[call-overload]
            colour_order=str(data["colour_order"]),  # type: ignore[arg-type]
            margin=float(data["margin"]),  # type: ignore[arg-type]
            scale=float(data["scale"]),  # type: ignore[arg-type]
            highpass_sigma=float(data.get("highpass_sigma", 0.0)),  # type: ignore[arg-type]
            # Sidecars written before v2 have no geometry: they are tight "margin" models.
            geometry=str(data.get("geometry", "margin")),  # type: ignore[arg-type]
            context_scales=tuple(float(v) for v in data.get("context_scales", ())),  # type: ignore[attr-defined]
            resize=str(data.get("resize", "area")),  # type: ignore[arg-type]
        )


def margin_box(box: Box, margin: float) -> Box:
    """The box enlarged by ``margin`` around its centre (not clipped)."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half_w, half_h = (x2 - x1) * margin / 2.0, (y2 - y1) * margin / 2.0
    return (
        int(round(cx - half_w)),
        int(round(cy - half_h)),
        int(round(cx + half_w)),
        int(round(cy + half_h)),
    )


def crop_with_margin(frame: np.ndarray, box: Box, margin: float = 1.0) -> np.ndarray:
    """Cut ``box`` enlarged by ``margin`` out of ``frame``; parts outside it are reflected."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 frame, got shape {frame.shape}")
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = margin_box(box, margin)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face box {box}")
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
    crop = frame[cy1:cy2, cx1:cx2]
    pads = (cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2)
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, borderType=cv2.BORDER_REFLECT_101)
    return crop


def context_window(
    frame_width: int, frame_height: int, box: FloatBox, scale: float
) -> tuple[int, int, int, int]:
    """Silent-Face's window (``generate_patches.CropImage._get_new_box``), inclusive corners.

    The box scaled by ``scale`` around its centre, the scale first clamped so the scaled box fits
    in the frame, then shifted to lie inside the frame. Returns x1, y1, x2, y2 with x2/y2
    INCLUSIVE, as the original cuts ``img[y1:y2 + 1, x1:x2 + 1]``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    box_w, box_h = x2 - x1, y2 - y1
    if box_w <= 0 or box_h <= 0:
        raise ValueError(f"empty face box {box}")
    scale = min((frame_height - 1) / box_h, (frame_width - 1) / box_w, scale)
    new_w, new_h = box_w * scale, box_h * scale
    cx, cy = x1 + box_w / 2.0, y1 + box_h / 2.0
    left, top, right, bottom = cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2
    if left < 0:
        right -= left
        left = 0
    if top < 0:
        bottom -= top
        top = 0
    if right > frame_width - 1:
        left -= right - frame_width + 1
        right = frame_width - 1
    if bottom > frame_height - 1:
        top -= bottom - frame_height + 1
        bottom = frame_height - 1
    return int(left), int(top), int(right), int(bottom)


def context_crop(frame: np.ndarray, box: FloatBox, scale: float) -> np.ndarray:
    """The face at ``box`` with its surroundings: ``context_window`` cut from ``frame``."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 frame, got shape {frame.shape}")
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = context_window(width, height, box, scale)
    if x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
        raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
    crop = frame[max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1]
    if crop.size == 0:
        raise ValueError(f"face box {box} gives an empty crop in the {width}x{height} frame")
    return crop


def preprocess_crop(crop_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a BGR face crop to the model input, reorder colours, scale to float32."""
    if crop_bgr.ndim != 3 or crop_bgr.shape[2] != 3 or crop_bgr.size == 0:
        raise ValueError(f"expected a non-empty HxWx3 BGR crop, got shape {crop_bgr.shape}")
    shrinking = crop_bgr.shape[0] > spec.input_height or crop_bgr.shape[1] > spec.input_width
    resized = cv2.resize(
        crop_bgr,
        (spec.input_width, spec.input_height),
        interpolation=cv2.INTER_AREA if shrinking and spec.resize == "area" else cv2.INTER_LINEAR,
    )
    conversion = COLOUR_CONVERSIONS[spec.colour_order]
    if conversion is not None:
        resized = cv2.cvtColor(resized, conversion)
    scaled = resized.astype(np.float32) * np.float32(spec.scale)
    if spec.highpass_sigma > 0.0:
        blurred = cv2.GaussianBlur(scaled, (0, 0), spec.highpass_sigma)
        scaled = scaled - blurred + np.float32(0.5)
    return scaled


def face_input(frame_bgr: np.ndarray, box: FloatBox, spec: PreprocessSpec) -> np.ndarray:
    """Both steps: the model input (H x W x ``spec.channels``) for the face at ``box``."""
    if spec.geometry == "context_shift":
        crops = [
            preprocess_crop(context_crop(frame_bgr, box, s), spec) for s in spec.context_scales
        ]
        return crops[0] if len(crops) == 1 else np.concatenate(crops, axis=2)
    return preprocess_crop(crop_with_margin(frame_bgr, box, spec.margin), spec)
