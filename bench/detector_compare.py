"""Does a faster detection path find the faces res10 finds? Measured on every frame of the clips.

Each clip is used as the daemon sees it: a file source hands out frames at the clip's own size
(``--detect-width`` downscales before detection, as ``detector.detect_width`` does). A res10 face
counts when it scores >= 0.5 and its box is at least ``min_face_px`` on its short side (the door's
working distance). A candidate (BlazeFace on the whole frame, and BlazeFace with tiles) finds it
when one of its boxes, adjusted to res10's box shape and passing the same size filter as in the
daemon, overlaps it with IoU >= 0.5.

Three miss rates, because res10 itself has false positives on these clips (it reports a "face"
on the shirt in the portrait clips, up to score 0.99): over every res10 face; over the *main*
face of each frame (res10's largest: the person nearest the door); and over frames (the
candidate finds none of res10's faces). Also: IoU of matched faces before and after the box
adjustment, misses by face size, candidate faces res10 does not have, and the median and mean
milliseconds per frame of each detector on one thread.

The third candidate, ``res10+regions``, is res10 itself searching regions around the faces it
found on the frame before (``edge.detectors.regions``, as ``detector.every_n_frames`` > 1 runs
it): its boxes are res10's own and need no adjustment; its frames are played in order, since it
keeps state.

    python -m bench.detector_compare [--videos DIR] [--detect-width N] [--fit] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench.clips import clip_paths, read_frames
from edge.assets import REPO_ROOT
from edge.config import DetectorConfig
from edge.detectors.base import Detection, FaceDetector, clip_box, iou
from edge.detectors.blazeface import (
    IDENTITY_ADJUST,
    RES10_MATCH_ADJUST,
    BlazeFaceDetector,
    BoxAdjust,
)
from edge.detectors.registry import detector_from_config
from edge.detectors.res10 import Res10Detector
from edge.detectors.scaled import ScaledDetector
from edge.errors import InputError
from edge.preprocess import Box

logger = logging.getLogger(__name__)

DEFAULT_VIDEOS = REPO_ROOT.parent / "shared" / "videos"
REFERENCE_SCORE = 0.5
MATCH_IOU = 0.5
# A candidate box overlapping a res10 face by at least this much is the same face: used to fit
# the box adjustment and for the IoU statistics (looser than MATCH_IOU, so that the raw boxes'
# misfit does not decide which faces are measured).
PAIR_IOU = 0.3
DEFAULT_MIN_FACE_PX = 60
SIZE_BINS = (60, 100, 150, 250)
CANDIDATES = ("blazeface", "blazeface_tiles")
REGIONS = "res10+regions"


@dataclass
class FrameRecord:
    """What the detectors saw on one frame (candidate boxes are the model's own, unadjusted)."""

    index: int
    res10: list[Detection]
    res10_ms: float
    found: dict[str, list[Detection]]
    ms: dict[str, float]


@dataclass
class ClipRecords:
    clip: str
    width: int
    height: int
    frames: list[FrameRecord] = field(default_factory=list)


def _timed(detector: FaceDetector, frame: np.ndarray) -> tuple[list[Detection], float]:
    start = time.perf_counter()
    found = detector.detect(frame)
    return found, (time.perf_counter() - start) * 1000.0


def make_detectors(
    assets_dir: Path | None = None,
    detect_width: int = 0,
    min_visible: float = 0.0,
    regions: DetectorConfig | None = None,
) -> tuple[FaceDetector, dict[str, FaceDetector]]:
    """res10 and the candidates (their own boxes), one thread each, no size filter. res10 keeps
    only boxes with ``min_visible`` of their area in the frame, as the daemon does. With
    ``regions`` (its every_n_frames, region_input_px, region_scale, min_face_px), res10 searching
    regions is a candidate too."""
    res10: FaceDetector = Res10Detector(
        confidence=REFERENCE_SCORE, assets_dir=assets_dir, min_visible=min_visible
    )
    candidates: dict[str, FaceDetector] = {
        name: BlazeFaceDetector(
            confidence=REFERENCE_SCORE,
            assets_dir=assets_dir,
            num_threads=1,
            adjust=IDENTITY_ADJUST,
            tiles=name == "blazeface_tiles",
        )
        for name in CANDIDATES
    }
    if detect_width > 0:
        res10 = ScaledDetector(res10, detect_width)
        candidates = {n: ScaledDetector(d, detect_width) for n, d in candidates.items()}
    if regions is not None and regions.every_n_frames > 1:
        # Built as the daemon builds it, with the reference's score and in-frame rules.
        settings = regions.model_copy(
            update={
                "kind": "res10",
                "confidence": REFERENCE_SCORE,
                "assets_dir": assets_dir,
                "detect_width": detect_width,
                "min_visible": min_visible,
            }
        )
        candidates[REGIONS] = detector_from_config(settings, num_threads=1)
    return res10, candidates


def collect(
    videos_dir: Path = DEFAULT_VIDEOS,
    assets_dir: Path | None = None,
    detect_width: int = 0,
    max_frames: int | None = None,
    step: int = 1,
    min_visible: float = 0.0,
    regions: DetectorConfig | None = None,
) -> list[ClipRecords]:
    """Run every detector on the frames of every clip, in order (OpenCV on one thread
    meanwhile)."""
    res10, candidates = make_detectors(assets_dir, detect_width, min_visible, regions)
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        clips: list[ClipRecords] = []
        for path in clip_paths(videos_dir):
            frames = read_frames(path, max_frames, step)
            height, width = frames[0].shape[:2]
            records = ClipRecords(path.name, width, height)
            for detector in candidates.values():
                detector.reset()  # a new clip is a new scene (a no-op for stateless detectors)
            for index, frame in enumerate(frames):
                found_res10, res10_ms = _timed(res10, frame)
                found: dict[str, list[Detection]] = {}
                ms: dict[str, float] = {}
                for name, detector in candidates.items():
                    found[name], ms[name] = _timed(detector, frame)
                records.frames.append(FrameRecord(index, found_res10, res10_ms, found, ms))
            logger.info("%s: %d frames of %dx%d", path.name, len(frames), width, height)
            clips.append(records)
        return clips
    finally:
        cv2.setNumThreads(previous_threads)


def _short_side(box: Box) -> int:
    return min(box[2] - box[0], box[3] - box[1])


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def reference_faces(record: FrameRecord, min_face_px: int) -> list[Box]:
    """res10's faces that count, largest first: score >= 0.5, at the door's working distance."""
    faces = [
        d.box
        for d in record.res10
        if d.score >= REFERENCE_SCORE and _short_side(d.box) >= min_face_px
    ]
    return sorted(faces, key=_area, reverse=True)


def adjusted_boxes(
    detections: Sequence[Detection], adjust: BoxAdjust, width: int, height: int
) -> list[Box]:
    boxes: list[Box] = []
    for det in detections:
        x1, y1, x2, y2 = adjust.apply(np.asarray(det.box, dtype=np.float64))
        box = clip_box(x1, y1, x2, y2, width, height)
        if box is not None:
            boxes.append(box)
    return boxes


def best_iou(box: Box, candidates: Sequence[Box]) -> tuple[float, int]:
    """The highest IoU of ``box`` with any candidate, and that candidate's index (-1: none)."""
    if not candidates:
        return 0.0, -1
    overlaps = iou(np.asarray(box, dtype=np.float64), np.asarray(candidates, dtype=np.float64))
    best = int(np.argmax(overlaps))
    return float(overlaps[best]), best


def matched_pairs(
    clips: Sequence[ClipRecords], min_face_px: int, candidate: str = "blazeface"
) -> list[tuple[Box, Box]]:
    """(res10 face, candidate's own box) pairs of the same face on every frame."""
    pairs: list[tuple[Box, Box]] = []
    for clip in clips:
        for record in clip.frames:
            own = [d.box for d in record.found[candidate]]
            for face in reference_faces(record, min_face_px):
                overlap, index = best_iou(face, own)
                if overlap >= PAIR_IOU:
                    pairs.append((face, own[index]))
    return pairs


def fit_box_adjustment(pairs: Sequence[tuple[Box, Box]]) -> BoxAdjust:
    """The fixed adjustment taking BlazeFace boxes onto res10 boxes: medians over the pairs of
    the centre offset (in BlazeFace box widths/heights) and of the width and height ratios."""
    if not pairs:
        raise ValueError("no matched face pairs to fit a box adjustment on")
    ref = np.asarray([p[0] for p in pairs], dtype=np.float64)
    own = np.asarray([p[1] for p in pairs], dtype=np.float64)
    ref_w, ref_h = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    own_w, own_h = own[:, 2] - own[:, 0], own[:, 3] - own[:, 1]
    dx = ((ref[:, 0] + ref[:, 2]) - (own[:, 0] + own[:, 2])) / 2.0 / own_w
    dy = ((ref[:, 1] + ref[:, 3]) - (own[:, 1] + own[:, 3])) / 2.0 / own_h
    return BoxAdjust(
        dx=round(float(np.median(dx)), 3),
        dy=round(float(np.median(dy)), 3),
        sw=round(float(np.median(ref_w / own_w)), 3),
        sh=round(float(np.median(ref_h / own_h)), 3),
    )


def _iou_stats(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {
        "n": len(values),
        "mean": round(float(array.mean()), 3),
        "median": round(float(np.median(array)), 3),
        "p10": round(float(np.percentile(array, 10)), 3),
        "min": round(float(array.min()), 3),
    }


def _rate(missed: int, total: int) -> float | None:
    return round(missed / total, 4) if total else None


def _median_ms(times: Sequence[float]) -> float | None:
    return round(statistics.median(times), 2) if times else None


def _size_bin(short_side: int) -> str:
    label = f"<{SIZE_BINS[0]}"
    for low, high in zip(SIZE_BINS, (*SIZE_BINS[1:], None), strict=True):
        if short_side >= low:
            label = f"{low}-{high}" if high else f">={low}"
    return label


@dataclass
class _Tally:
    """One candidate's counts over one clip or over all clips."""

    faces: int = 0
    missed_raw: int = 0
    missed: int = 0
    main_faces: int = 0
    main_missed: int = 0
    frames_found_none: int = 0
    extra_faces: int = 0
    iou_raw: list[float] = field(default_factory=list)
    iou_adjusted: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    by_size: dict[str, list[int]] = field(default_factory=dict)  # bin -> [faces, missed]

    def report(self) -> dict[str, object]:
        return {
            "faces": self.faces,
            "missed_own_boxes": self.missed_raw,
            "miss_rate_own_boxes": _rate(self.missed_raw, self.faces),
            "missed": self.missed,
            "miss_rate": _rate(self.missed, self.faces),
            "main_faces": self.main_faces,
            "main_missed": self.main_missed,
            "main_miss_rate": _rate(self.main_missed, self.main_faces),
            "frames_found_none": self.frames_found_none,
            "frame_miss_rate": _rate(self.frames_found_none, self.main_faces),
            "extra_faces": self.extra_faces,
            "iou_own_boxes": _iou_stats(self.iou_raw),
            "iou_adjusted": _iou_stats(self.iou_adjusted),
            "misses_by_res10_face_size": {
                size: {"faces": n, "missed": m} for size, (n, m) in sorted(self.by_size.items())
            },
            "ms_median": _median_ms(self.ms),
            "ms_mean": round(statistics.fmean(self.ms), 2) if self.ms else None,
        }

    def add_frame(
        self,
        faces: Sequence[Box],
        every_res10: Sequence[Box],
        own: Sequence[Box],
        adjusted: Sequence[Box],
        ms: float,
    ) -> None:
        self.ms.append(ms)
        self.extra_faces += sum(1 for b in adjusted if best_iou(b, every_res10)[0] < MATCH_IOU)
        found_any = False
        for rank, face in enumerate(faces):
            own_iou, _ = best_iou(face, own)
            adjusted_iou, _ = best_iou(face, adjusted)
            missed = adjusted_iou < MATCH_IOU
            found_any = found_any or not missed
            self.faces += 1
            self.missed_raw += int(own_iou < MATCH_IOU)
            self.missed += int(missed)
            if rank == 0:
                self.main_faces += 1
                self.main_missed += int(missed)
            if own_iou >= PAIR_IOU:  # the same face: how well do the boxes agree?
                self.iou_raw.append(own_iou)
                self.iou_adjusted.append(adjusted_iou)
            bucket = self.by_size.setdefault(_size_bin(_short_side(face)), [0, 0])
            bucket[0] += 1
            bucket[1] += int(missed)
        if faces and not found_any:
            self.frames_found_none += 1


@dataclass
class _Group:
    """Counts of one clip or of all clips."""

    frames: int = 0
    res10_ms: list[float] = field(default_factory=list)
    tallies: dict[str, _Tally] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "res10_ms_median": _median_ms(self.res10_ms),
            "detectors": {name: tally.report() for name, tally in self.tallies.items()},
        }


def summarise(
    clips: Sequence[ClipRecords],
    adjust: BoxAdjust,
    min_face_px: int = DEFAULT_MIN_FACE_PX,
) -> dict[str, object]:
    """Per clip and in total, for each candidate: faces, misses, IoU, extras, speed."""
    total = _Group()
    per_clip: dict[str, dict[str, object]] = {}
    for clip in clips:
        group = _Group()
        for record in clip.frames:
            faces = reference_faces(record, min_face_px)
            every_res10 = [d.box for d in record.res10]
            for target in (group, total):
                target.frames += 1
                target.res10_ms.append(record.res10_ms)
            for name, detections in record.found.items():
                own = [d.box for d in detections]
                # As in the daemon: adjusted boxes, then the size filter in full-frame pixels.
                own_adjust = adjust if name in CANDIDATES else IDENTITY_ADJUST
                adjusted = [
                    box
                    for box in adjusted_boxes(detections, own_adjust, clip.width, clip.height)
                    if _short_side(box) >= min_face_px
                ]
                for target in (group, total):
                    tally = target.tallies.setdefault(name, _Tally())
                    tally.add_frame(faces, every_res10, own, adjusted, record.ms[name])
        per_clip[clip.clip] = {"frame_size": f"{clip.width}x{clip.height}", **group.report()}
    return {
        "min_face_px": min_face_px,
        "match_iou": MATCH_IOU,
        "reference_score": REFERENCE_SCORE,
        "adjust": _adjust_dict(adjust),
        "clips": per_clip,
        "total": total.report(),
    }


def _adjust_dict(adjust: BoxAdjust) -> dict[str, float]:
    return {"dx": adjust.dx, "dy": adjust.dy, "sw": adjust.sw, "sh": adjust.sh}


def leave_one_clip_out(
    clips: Sequence[ClipRecords], min_face_px: int = DEFAULT_MIN_FACE_PX
) -> dict[str, dict[str, object]]:
    """For each clip: the adjustment fitted on the other clips and the IoU it gives on this one,
    so the reported gain is not only the fit remembering its own data."""
    out: dict[str, dict[str, object]] = {}
    for held_out in clips:
        pairs = matched_pairs([c for c in clips if c is not held_out], min_face_px)
        if not pairs:
            continue
        adjust = fit_box_adjustment(pairs)
        total = summarise([held_out], adjust, min_face_px)["total"]
        blaze = total["detectors"]["blazeface"]  # type: ignore[index]
        out[held_out.clip] = {
            "adjust": _adjust_dict(adjust),
            "iou_own_boxes": blaze["iou_own_boxes"],
            "iou_adjusted": blaze["iou_adjusted"],
        }
    return out


def compare(
    videos_dir: Path = DEFAULT_VIDEOS,
    assets_dir: Path | None = None,
    detect_width: int = 0,
    min_face_px: int = DEFAULT_MIN_FACE_PX,
    max_frames: int | None = None,
    step: int = 1,
    fit: bool = False,
    adjust: BoxAdjust = RES10_MATCH_ADJUST,
    min_visible: float = 0.0,
    regions: DetectorConfig | None = None,
) -> dict[str, object]:
    """The whole measurement as a dict (see the module docstring). With ``fit``, the adjustment
    is fitted on these clips and used, and leave-one-clip-out figures are added. ``regions``:
    also measure res10 searching regions with these settings."""
    clips = collect(videos_dir, assets_dir, detect_width, max_frames, step, min_visible, regions)
    if fit:
        adjust = fit_box_adjustment(matched_pairs(clips, min_face_px))
    result = summarise(clips, adjust, min_face_px)
    result.update(
        detect_width=detect_width,
        threads=1,
        videos=str(videos_dir),
        fitted=fit,
        min_visible=min_visible,
    )
    if regions is not None:
        result["regions"] = {
            "every_n_frames": regions.every_n_frames,
            "region_input_px": regions.region_input_px,
            "region_scale": regions.region_scale,
        }
    if fit:
        result["leave_one_clip_out"] = leave_one_clip_out(clips, min_face_px)
    return result


def format_table(result: dict[str, object]) -> str:
    """One line per clip and detector."""
    rows = dict(result["clips"])  # type: ignore[call-overload]
    rows["TOTAL"] = result["total"]
    lines = [
        f"{'clip':<16} {'size':>8} {'detector':<15} {'faces':>5} {'miss':>6} {'main':>6}"
        f" {'frame':>6} {'extra':>5} {'IoU own':>7} {'IoU adj':>7} {'ms':>6} {'res10 ms':>8}"
    ]
    for name, row in rows.items():
        for detector, stats in row["detectors"].items():
            lines.append(
                f"{name:<16} {row.get('frame_size', ''):>8} {detector:<15} {stats['faces']:>5}"
                f" {stats['miss_rate']!s:>6} {stats['main_miss_rate']!s:>6}"
                f" {stats['frame_miss_rate']!s:>6} {stats['extra_faces']:>5}"
                f" {stats['iou_own_boxes'].get('mean', '-')!s:>7}"
                f" {stats['iou_adjusted'].get('mean', '-')!s:>7} {stats['ms_median']!s:>6}"
                f" {row['res10_ms_median']!s:>8}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.detector_compare",
        description="Compare BlazeFace with res10 on every frame of the sample clips.",
    )
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="folder of clips")
    parser.add_argument("--assets", type=Path, default=None, help="model files folder")
    parser.add_argument(
        "--detect-width", type=int, default=0, help="downscale to this width first (0: no)"
    )
    parser.add_argument("--min-face-px", type=int, default=DEFAULT_MIN_FACE_PX)
    parser.add_argument("--max-frames", type=int, default=None, help="frames per clip at most")
    parser.add_argument(
        "--min-visible",
        type=float,
        default=DetectorConfig.model_fields["min_visible"].default,
        help="res10 faces need this share of their box in the frame (detector.min_visible)",
    )
    parser.add_argument(
        "--every-n-frames",
        type=int,
        default=DetectorConfig.model_fields["every_n_frames"].default,
        help="res10+regions: whole frame every Nth frame (1: leave that candidate out)",
    )
    parser.add_argument(
        "--region-input-px",
        type=int,
        default=DetectorConfig.model_fields["region_input_px"].default,
        help="res10+regions: res10's input size on the regions",
    )
    parser.add_argument("--fit", action="store_true", help="fit the box adjustment on the clips")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = compare(
            args.videos,
            args.assets,
            detect_width=args.detect_width,
            min_face_px=args.min_face_px,
            max_frames=args.max_frames,
            fit=args.fit,
            min_visible=args.min_visible,
            regions=DetectorConfig(
                every_n_frames=args.every_n_frames,
                region_input_px=args.region_input_px,
                min_face_px=args.min_face_px,
            ),
        )
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(json.dumps(result["total"], indent=2))
    print("box adjustment:", json.dumps(result["adjust"]))
    if "leave_one_clip_out" in result:
        print("leave one clip out:", json.dumps(result["leave_one_clip_out"], indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
