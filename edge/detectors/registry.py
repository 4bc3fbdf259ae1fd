"""One entry per detector kind: its factory, its default confidence and whether it can search the
regions around known faces. The config's ``detector.kind`` accepts exactly these kinds.

A factory takes the keywords ``confidence``, ``min_face_px``, ``assets_dir``, ``num_threads`` and
``min_visible``; a region factory takes ``input_px`` too (the input size for a crop around one
face, where the detector has a choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.assets import BLAZEFACE_SHORT_RANGE, RES10_ASSETS, Asset
from edge.detectors.base import FaceDetector
from edge.detectors.blazeface import make_blazeface, make_blazeface_region, make_blazeface_tiles
from edge.detectors.regions import RegionDetector
from edge.detectors.res10 import RES10_INPUT_PX, make_res10
from edge.detectors.scaled import ScaledDetector

if TYPE_CHECKING:  # the config validates kinds against this module, not the other way round
    from edge.config import DetectorConfig


@dataclass(frozen=True)
class DetectorKind:
    factory: Callable[..., FaceDetector]  # whole frames
    default_confidence: float  # used when detector.confidence is null
    region_factory: Callable[..., FaceDetector] | None = None  # None: cannot search regions
    assets: tuple[Asset, ...] = ()  # fetched files it loads (checked by check-config and run)


# Default confidences, seen on every frame of the sample clips: res10 scores the real faces there
# from 0.5 up; BlazeFace (with tiles) scores every face res10 finds above 0.7, and a thumb at
# 0.50-0.53. res10 first: the bench lists the kinds in this order.
DETECTORS: dict[str, DetectorKind] = {
    "res10": DetectorKind(make_res10, 0.5, make_res10, RES10_ASSETS),
    "blazeface": DetectorKind(make_blazeface, 0.7, make_blazeface_region, (BLAZEFACE_SHORT_RANGE,)),
    "blazeface_tiles": DetectorKind(
        make_blazeface_tiles, 0.7, make_blazeface_region, (BLAZEFACE_SHORT_RANGE,)
    ),
}


def detector_kind(kind: str) -> DetectorKind:
    """The registry entry of ``kind``; ValueError naming the known kinds otherwise."""
    try:
        return DETECTORS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known: {sorted(DETECTORS)}") from None


def make_detector(
    kind: str,
    *,
    confidence: float = 0.5,
    min_face_px: int = 0,
    assets_dir: Path | None = None,
    num_threads: int | None = None,
    detect_width: int = 0,
    min_visible: float = 0.0,
) -> FaceDetector:
    """The detector of ``kind``; with ``detect_width`` > 0 it runs on frames downscaled to that
    width and still returns boxes in pixels of the frame it is given. Boxes with less than
    ``min_visible`` of their area inside the frame are dropped (``clip_box``)."""
    scaled = detect_width > 0
    detector = detector_kind(kind).factory(
        confidence=confidence,
        # Downscaled, the minimum face size is checked by ScaledDetector in full-frame pixels.
        min_face_px=0 if scaled else min_face_px,
        assets_dir=assets_dir,
        num_threads=num_threads,
        min_visible=min_visible,
    )
    return ScaledDetector(detector, detect_width, min_face_px=min_face_px) if scaled else detector


def make_region_detector(
    kind: str,
    *,
    confidence: float = 0.5,
    min_face_px: int = 0,
    assets_dir: Path | None = None,
    num_threads: int | None = None,
    min_visible: float = 0.0,
    input_px: int = RES10_INPUT_PX,
) -> FaceDetector:
    """The detector for crops around a known face (``edge.detectors.regions``), from the kind's
    region factory: res10 at an ``input_px`` input; BlazeFace (its input is fixed at 128 px)
    without tiles, which are for small faces."""
    factory = detector_kind(kind).region_factory
    if factory is None:
        raise ValueError(f"detector kind {kind!r} cannot search regions (every_n_frames: 1)")
    return factory(
        confidence=confidence,
        min_face_px=min_face_px,
        assets_dir=assets_dir,
        num_threads=num_threads,
        min_visible=min_visible,
        input_px=input_px,
    )


def detector_from_config(
    config: DetectorConfig, kind: str | None = None, num_threads: int | None = None
) -> FaceDetector:
    """The detector the ``detector`` config section asks for (``kind`` and ``num_threads``
    override it, for the bench). With ``every_n_frames`` > 1 it is a ``RegionDetector``: one per
    frame stream, it remembers the faces of the last frame."""
    kind = kind or config.kind
    threads = num_threads if num_threads is not None else (config.threads or None)
    whole = make_detector(
        kind,
        confidence=config.confidence_for(kind),
        min_face_px=config.min_face_px,
        assets_dir=config.assets_dir,
        num_threads=threads,
        detect_width=config.detect_width,
        min_visible=config.min_visible,
    )
    if config.every_n_frames <= 1:
        return whole
    regional = make_region_detector(
        kind,
        confidence=config.confidence_for(kind),
        min_face_px=config.min_face_px,
        assets_dir=config.assets_dir,
        num_threads=threads,
        min_visible=config.min_visible,
        input_px=config.region_input_px,
    )
    return RegionDetector(whole, regional, config.every_n_frames, config.region_scale)
