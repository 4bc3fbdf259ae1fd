"""The one face preprocessing used by both the trainer and the daemon, so they cannot drift apart.

A face input is made in two steps, both here:
1. ``crop_with_margin``: the detector's box enlarged around its centre by ``margin`` (1.0 = the box
   itself), clipped at the frame edges and padded by reflection where it leaves the frame;
2. ``preprocess_crop``: resize to the model input, convert BGR (OpenCV's order) to the model's
   colour order (RGB, BGR or YCrCb), scale to float32 in [0, 1].
Training crops in ``../shared/data/faces`` are already tight res10 crops (margin 1.0), so the
trainer runs step 2 on them; the daemon runs both steps on camera frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

# A face box in frame pixels: x1, y1, x2, y2 with x2 > x1, y2 > y1 (x2/y2 exclusive).
Box = tuple[int, int, int, int]
# "YCrCb": luma and two chroma channels (OpenCV's conversion), which anti-spoofing work on colour
# texture found to carry over between cameras better than RGB.
ColourOrder = Literal["RGB", "BGR", "YCrCb"]
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

    def to_json(self) -> dict[str, object]:
        return {
            "input_height": self.input_height,
            "input_width": self.input_width,
            "colour_order": self.colour_order,
            "margin": self.margin,
            "scale": self.scale,
            "highpass_sigma": self.highpass_sigma,
        }

    def __post_init__(self) -> None:
        if self.colour_order not in COLOUR_CONVERSIONS:
            raise ValueError(
                f"unknown colour order {self.colour_order!r}; known: {sorted(COLOUR_CONVERSIONS)}"
            )

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PreprocessSpec:
        return cls(
            input_height=int(data["input_height"]),  # type: ignore[call-overload]
            input_width=int(data["input_width"]),  # type: ignore[call-overload]
            colour_order=str(data["colour_order"]),  # type: ignore[arg-type]
            margin=float(data["margin"]),  # type: ignore[arg-type]
            scale=float(data["scale"]),  # type: ignore[arg-type]
            highpass_sigma=float(data.get("highpass_sigma", 0.0)),  # type: ignore[arg-type]
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


def preprocess_crop(crop_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a BGR face crop to the model input, reorder colours, scale to float32."""
    if crop_bgr.ndim != 3 or crop_bgr.shape[2] != 3 or crop_bgr.size == 0:
        raise ValueError(f"expected a non-empty HxWx3 BGR crop, got shape {crop_bgr.shape}")
    shrinking = crop_bgr.shape[0] > spec.input_height or crop_bgr.shape[1] > spec.input_width
    resized = cv2.resize(
        crop_bgr,
        (spec.input_width, spec.input_height),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    conversion = COLOUR_CONVERSIONS[spec.colour_order]
    if conversion is not None:
        resized = cv2.cvtColor(resized, conversion)
    scaled = resized.astype(np.float32) * np.float32(spec.scale)
    if spec.highpass_sigma > 0.0:
        blurred = cv2.GaussianBlur(scaled, (0, 0), spec.highpass_sigma)
        scaled = scaled - blurred + np.float32(0.5)
    return scaled


def face_input(frame_bgr: np.ndarray, box: Box, spec: PreprocessSpec) -> np.ndarray:
    """Both steps: the model input for the face at ``box`` in a BGR frame."""
    return preprocess_crop(crop_with_margin(frame_bgr, box, spec.margin), spec)
