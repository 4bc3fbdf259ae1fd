"""``python -m bench``: per-stage latency, FPS, memory and decision latency, side by side.

Everything is measured in one run on the sample clips (``../shared/videos``), every frame resized
to 640 pixels wide with its aspect ratio kept (the clips are 544x960 portrait and 960x540
landscape; squeezing them into 640x480 would distort the faces, padding them would put black bars
into the peer's wider crop). What a 640x480 camera would cost differs only in the decode/resize
stage: both detectors resize to their own fixed input, liveness works on the face crop.

Measured:
1. per stage, median and p95: decode (clip frame -> 640 wide), detection (res10 and BlazeFace),
   crop + preprocessing, liveness inference, decision; FPS of ``Pipeline.process`` with one
   thread (``cv2.setNumThreads(1)``, LiteRT ``num_threads=1``) and with all cores, per detector;
   and, for the ``enrolled`` policy, recognition (dlib) and face mesh ms per face;
2. decision latency on the real clips: first frame with a face -> relay pulse (gpiozero
   MockFactory), in processing ms and frames, and in camera time at 30 FPS (frames / 30);
3. peak RSS of a daemon-like process (a subprocess building the daemon's parts and running
   ``Pipeline.run`` on a clip; VmHWM) and the model file sizes;
4. the seed's way (Keras ``model.predict`` per face, float) vs LiveGate's int8 model in
   ai-edge-litert on the same crops (latency ratio, agreement of decisions at the threshold), and
   the peer ``../shared/peers/facenox`` (onnxruntime, its own 1.5x crop) vs LiveGate on the same
   faces: latency, and share of real frames accepted / fake frames rejected, each at its own
   threshold (labels from the clip file names);
5. stale frames dropped by the one-slot handoff when a 30 FPS camera feeds the real pipeline.

``--soak N`` runs only a soak: N frames through the daemon's frame loop (journal and audit log
on disk), RSS at start and end. Nothing here asserts a speed; the machine is shared and noisy.
TensorFlow is imported only inside the Keras comparison, which is skipped with a note when it is
not installed (as on a Pi).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.clips import (
    BENCH_WIDTH,
    CAMERA_FPS,
    Clip,
    ClipSource,
    clip_frames,
    find_clips,
    one_per_label,
)
from bench.common import (
    GOAL_FPS_1T,
    GOAL_KERAS_RATIO,
    GOAL_LATENCY_MS,
    GOAL_RSS_MB,
    GOAL_SOAK_GROWTH_MB,
)
from bench.device_guard_check import MARKDOWN_HEADING as GUARD_CHECK_HEADING
from bench.memory import MARKDOWN_HEADING as MEMORY_HEADING
from bench.parts import (
    Door,
    PulseClock,
    bench_config,
    build_detector,
    detector_paths,
    load_liveness,
    path_config,
    path_label,
    set_threads,
)
from bench.report import (
    format_guard,
    format_markdown,
    format_soak,
    format_table,
    read_section,
    write_section,
)
from bench.resources import measure_rss, model_sizes, proc_status_kb
from edge.assets import REPO_ROOT
from edge.camera import Frame
from edge.config import Config, with_overrides
from edge.detectors.base import Detection, FaceDetector
from edge.detectors.registry import detector_from_config, make_detector
from edge.device_guard import DeviceGuard, load_device_guard
from edge.errors import EXIT_REFUSED, LiveGateError, ModelError
from edge.liveness import LivenessModel, is_live
from edge.pipeline import IdentityCheck, Pipeline, PipelineStats, StageTimes
from edge.preprocess import Box, FloatBox, crop_with_margin, face_input, margin_box

logger = logging.getLogger(__name__)

BENCH_FORMAT = "livegate-bench/1"
DEFAULT_VIDEOS = REPO_ROOT.parent / "shared" / "videos"
DEFAULT_PEER = REPO_ROOT.parent / "shared" / "peers" / "facenox"
# The tight-crop LivenessNet shipped before v2, kept for the side-by-side comparison.
DEFAULT_OLD_MODEL = REPO_ROOT / "models" / "v1" / "liveness.tflite"
# The peer's published operating point (README): real when logit(real) - logit(spoof) >= 0.
PEER_CROP_SCALE = 1.5
PEER_INPUT = 128
PEER_LOGIT_THRESHOLD = 0.0
# Context kept around a face for the identity / face-mesh timing samples (both look wider).
SAMPLE_CONTEXT = 2.6
WARMUP_FRAMES = 3
# The section ``bench --guard`` writes (kept when the full bench rewrites the file).
GUARD_SPEED_HEADING = "## Device guard speed (focused run)"


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    frames_per_clip: int | None  # None: every frame
    stale_seconds: float
    keras_predict_faces: int
    face_samples: int  # identity and face-mesh timing
    enrol_frames: int
    rss_frames: int | None
    # "default:<policy>", "whole:<policy>" (the default kind without regions) or
    # "other:<policy>" (the lightest detector)
    rss_runs: tuple[str, ...]
    crops_kept: int
    one_clip_per_label: bool  # only the first real and the first fake clip
    compare_frames: int | None  # detector comparison: frames per clip (None: every frame)

    @classmethod
    def full(cls, frames: int | None) -> Plan:
        return cls(
            frames,
            10.0,
            60,
            24,
            5,
            None,
            ("default:any_live", "default:enrolled", "whole:any_live", "other:any_live"),
            800,
            False,
            frames,
        )

    @classmethod
    def tiny(cls) -> Plan:
        return cls(6, 1.0, 3, 2, 2, 8, ("default:any_live",), 24, True, 3)


# -- statistics ---------------------------------------------------------------------------------
def ms_stats(seconds: Sequence[float]) -> dict[str, float | int] | None:
    """Median, mean and p95 in milliseconds (None when nothing was measured). The mean matters
    where frames differ in kind (region frames are cheap, whole-frame passes are not)."""
    if not seconds:
        return None
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "median_ms": round(float(np.median(values)), 3),
        "mean_ms": round(float(values.mean()), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "n": int(values.size),
    }


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


# -- timing wrappers (the pipeline's own stages, timed from outside) -----------------------------
class TimedDetector(FaceDetector):
    """A FaceDetector that records its time per call and the faces it found last."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds: list[float] = []
        self.last: list[Detection] = []

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        start = time.perf_counter()
        self.last = self.inner.detect(frame_bgr)
        self.seconds.append(time.perf_counter() - start)
        return self.last

    def reset(self) -> None:
        """A new clip is a new scene: a region detector forgets the faces it knew."""
        self.inner.reset()


@dataclass
class FaceScore:
    box: FloatBox  # the box the pipeline scored: the detector's unclipped one where it has it
    p_real: float


class TimedLiveness:
    """The pipeline's LivenessScorer with crop + preprocessing and inference timed apart."""

    def __init__(self, model: LivenessModel) -> None:
        self.model = model
        self.threshold = model.threshold
        self.sha256 = model.sha256
        self.crop_seconds: list[float] = []
        self.infer_seconds: list[float] = []
        self.frame_faces: list[FaceScore] = []  # faces scored since the last ``new_frame``
        self.keep_crops = 0  # keep up to this many preprocessed inputs (Keras comparison)
        self.crops: list[np.ndarray] = []
        self.crop_labels: list[str] = []
        self.label = ""

    def new_frame(self) -> None:
        self.frame_faces = []

    def score_face(self, frame_bgr: np.ndarray, box: FloatBox) -> float:
        start = time.perf_counter()
        face = face_input(frame_bgr, box, self.model.spec)
        mid = time.perf_counter()
        p_real = self.model.score(face)
        end = time.perf_counter()
        self.crop_seconds.append(mid - start)
        self.infer_seconds.append(end - mid)
        self.frame_faces.append(FaceScore(box, p_real))
        if len(self.crops) < self.keep_crops:
            self.crops.append(face)
            self.crop_labels.append(self.label)
        return p_real


class TimedIdentity:
    """An IdentityCheck recording seconds per face."""

    def __init__(self, inner: IdentityCheck) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def identify(self, frame_bgr: np.ndarray, box: Box) -> Any:  # the inner check's result
        start = time.perf_counter()
        result = self.inner.identify(frame_bgr, box)
        self.seconds.append(time.perf_counter() - start)
        return result

    def reload_if_changed(self) -> bool:
        return self.inner.reload_if_changed()


@dataclass(frozen=True)
class FaceSample:
    """A face with some context around it, for per-face timings (identity, face mesh)."""

    image: np.ndarray
    box: Box
    label: str


def face_sample(frame: np.ndarray, scored: FloatBox, label: str) -> FaceSample:
    height, width = frame.shape[:2]
    # The pipeline scores liveness on the detector's unclipped float box; dlib takes whole
    # pixels inside the frame.
    box: Box = (
        max(0, round(scored[0])),
        max(0, round(scored[1])),
        min(width, round(scored[2])),
        min(height, round(scored[3])),
    )
    x1, y1, x2, y2 = margin_box(box, SAMPLE_CONTEXT)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    region = frame[y1:y2, x1:x2].copy()
    return FaceSample(region, (box[0] - x1, box[1] - y1, box[2] - x1, box[3] - y1), label)


class OldLiveness:
    """A former LiveGate liveness model (``models/v1``) scored like a peer, on the same faces:
    ``logit_diff`` > = 0 exactly when its P(real) reaches its own sidecar threshold."""

    def __init__(self, path: Path) -> None:
        self.model = LivenessModel.load(path, num_threads=1)
        self.path = path
        self.crop_seconds: list[float] = []
        self.infer_seconds: list[float] = []

    def logit_diff(self, frame_bgr: np.ndarray, box: FloatBox) -> float:
        start = time.perf_counter()
        face = face_input(frame_bgr, box, self.model.spec)
        mid = time.perf_counter()
        p_real = self.model.score(face)
        self.crop_seconds.append(mid - start)
        self.infer_seconds.append(time.perf_counter() - mid)
        return p_real - self.model.threshold


# -- the peer (facenox, MiniFASNetV2-SE in onnxruntime) -----------------------------------------
def peer_input(frame_bgr: np.ndarray, box: Box) -> np.ndarray:
    """The peer's own preprocessing (its README): a square of 1.5 x the box's longer side centred
    on the box, reflected where it leaves the frame, letterboxed to 128 (INTER_AREA when
    shrinking, border by reflection), RGB, [0, 1], 1 x 3 x 128 x 128."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half = PEER_CROP_SCALE * max(x2 - x1, y2 - y1) / 2.0
    square = (
        int(round(cx - half)),
        int(round(cy - half)),
        int(round(cx + half)),
        int(round(cy + half)),
    )
    crop = crop_with_margin(frame_bgr, square, 1.0)
    height, width = crop.shape[:2]
    scale = PEER_INPUT / max(height, width)
    new_w = min(PEER_INPUT, max(1, int(round(width * scale))))
    new_h = min(PEER_INPUT, max(1, int(round(height * scale))))
    shrinking = new_w < width or new_h < height
    resized = cv2.resize(
        crop, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    pad_x, pad_y = PEER_INPUT - new_w, PEER_INPUT - new_h
    if pad_x or pad_y:
        resized = cv2.copyMakeBorder(
            resized,
            pad_y // 2,
            pad_y - pad_y // 2,
            pad_x // 2,
            pad_x - pad_x // 2,
            borderType=cv2.BORDER_REFLECT_101,
        )
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[np.newaxis])


class PeerModel:
    """The peer in onnxruntime on one thread; ``logit_diff`` = logit(real) - logit(spoof)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort  # bench-only dependency (requirements-dev.txt)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for bad files
            raise ModelError(f"onnxruntime cannot load the peer model {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        self.crop_seconds: list[float] = []
        self.infer_seconds: list[float] = []

    def logit_diff(self, frame_bgr: np.ndarray, box: Box) -> float:
        start = time.perf_counter()
        x = peer_input(frame_bgr, box)
        mid = time.perf_counter()
        logits = np.asarray(self.session.run(None, {self.input_name: x})[0]).reshape(-1)
        self.crop_seconds.append(mid - start)
        self.infer_seconds.append(time.perf_counter() - mid)
        return float(logits[0] - logits[1])


# -- one timing pass: every frame of every clip through Pipeline.process ------------------------
@dataclass
class ClipOutcome:
    clip: str
    label: str
    frames: int
    first_face_frame: int | None
    pulse_frame: int | None
    latency_ms: float | None  # first face frame captured -> relay pulse, processing time
    first_verdict: str | None
    first_verdict_frame: int | None
    first_verdict_ms: float | None
    verdicts: dict[str, int]
    frame_scores: list[tuple[float, bool]]  # (P(real) of the largest face, live) per face frame
    reasons: dict[str, int] = field(default_factory=dict)  # spoof verdicts by reason
    guard_runs: int = 0  # frames the device guard ran on (only while a face was undecided)
    guard_flagged: int = 0  # ...of which a device was around a face

    def to_json(self) -> dict[str, Any]:
        frames_to_pulse = (
            None
            if self.pulse_frame is None or self.first_face_frame is None
            else self.pulse_frame - self.first_face_frame + 1
        )
        verdict_frames = (
            None
            if self.first_verdict_frame is None or self.first_face_frame is None
            else self.first_verdict_frame - self.first_face_frame + 1
        )
        return {
            "label": self.label,
            "frames": self.frames,
            "face_frames": len(self.frame_scores),
            "first_face_frame": self.first_face_frame,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "latency_frames": frames_to_pulse,
            "latency_camera_ms": (
                None if frames_to_pulse is None else round(frames_to_pulse / CAMERA_FPS * 1e3, 1)
            ),
            "first_verdict": self.first_verdict,
            "first_verdict_frames": verdict_frames,
            "first_verdict_ms": (
                None if self.first_verdict_ms is None else round(self.first_verdict_ms, 1)
            ),
            "verdicts": self.verdicts,
            "spoof_reasons": self.reasons,
            "guard_runs": self.guard_runs,
            "guard_flagged": self.guard_flagged,
            "live_frame_rate": _rate(
                sum(live for _, live in self.frame_scores), len(self.frame_scores)
            ),
        }


@dataclass
class PassResult:
    detector: str
    threads: int
    policy: str
    process_seconds: list[float] = field(default_factory=list)
    process_cpu_seconds: list[float] = field(default_factory=list)  # thread CPU time
    decode_seconds: list[float] = field(default_factory=list)
    detect_seconds: list[float] = field(default_factory=list)
    crop_seconds: list[float] = field(default_factory=list)
    infer_seconds: list[float] = field(default_factory=list)
    liveness_frame_seconds: list[float] = field(default_factory=list)
    decide_seconds: list[float] = field(default_factory=list)
    identity_frame_seconds: list[float] = field(default_factory=list)
    identity_face_seconds: list[float] = field(default_factory=list)
    guard_seconds: list[float] = field(default_factory=list)  # per device-guard run
    guard: bool = False  # the device guard was on in this pass
    clips: list[ClipOutcome] = field(default_factory=list)
    cv2_threads: int = 0  # cv2.getNumThreads() during the pass

    @property
    def fps(self) -> float:
        total = sum(self.process_seconds)
        return len(self.process_seconds) / total if total > 0 else 0.0

    @property
    def fps_cpu(self) -> float:
        """Frames per CPU second of the frame loop's thread: what one core gives when no other
        process competes for it (the wall-clock fps falls with the machine's load)."""
        total = sum(self.process_cpu_seconds)
        return len(self.process_cpu_seconds) / total if total > 0 else 0.0

    @property
    def guard_ms_per_frame(self) -> float | None:
        """Device guard milliseconds per processed frame, on average over the pass."""
        if not self.guard or not self.process_seconds:
            return None
        return round(sum(self.guard_seconds) / len(self.process_seconds) * 1e3, 3)

    @property
    def fps_with_decode(self) -> float:
        total = sum(self.process_seconds) + sum(self.decode_seconds)
        return len(self.process_seconds) / total if total > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "threads": self.threads,
            "cv2_threads": self.cv2_threads,
            "policy": self.policy,
            "frames": len(self.process_seconds),
            "fps": round(self.fps, 2),
            "fps_with_decode": round(self.fps_with_decode, 2),
            "pipeline": ms_stats(self.process_seconds),
            "stages": {
                "decode": ms_stats(self.decode_seconds),
                "detect": ms_stats(self.detect_seconds),
                "crop_preprocess": ms_stats(self.crop_seconds),
                "liveness_inference": ms_stats(self.infer_seconds),
                "liveness_per_frame": ms_stats(self.liveness_frame_seconds),
                "decide": ms_stats(self.decide_seconds),
                "identity_per_frame": ms_stats(self.identity_frame_seconds),
                "identity_per_face": ms_stats(self.identity_face_seconds),
                "guard_per_run": ms_stats(self.guard_seconds),
            },
            "guard": self.guard,
            "guard_ms_per_frame": self.guard_ms_per_frame,
            "clips": {c.clip: c.to_json() for c in self.clips},
        }


@dataclass
class Extras:
    """What one pass may collect besides its timings."""

    peers: dict[str, PeerModel | OldLiveness] = field(default_factory=dict)
    peer_records: list[dict[str, Any]] = field(default_factory=list)
    samples: list[FaceSample] = field(default_factory=list)
    samples_wanted: int = 0
    crops_wanted: int = 0
    crops: list[np.ndarray] = field(default_factory=list)
    crop_labels: list[str] = field(default_factory=list)


def run_pass(
    config: Config,
    clips: Sequence[Clip],
    kind: str,
    threads: int,
    policy: str,
    plan: Plan,
    state_dir: Path,
    identity: IdentityCheck | None = None,
    extras: Extras | None = None,
) -> PassResult:
    """Every frame of every clip through a fresh daemon-like pipeline per clip."""
    set_threads(threads)
    detector = TimedDetector(build_detector(config, kind, threads))
    liveness = TimedLiveness(load_liveness(config, threads))
    guard = load_device_guard(config.device_guard, num_threads=threads or 1)
    timed_identity = TimedIdentity(identity) if identity is not None else None
    result = PassResult(
        kind, threads, policy, cv2_threads=cv2.getNumThreads(), guard=guard is not None
    )
    cfg = with_overrides(config, access={"policy": policy})
    _warm_up(cfg, clips[0], detector, liveness, state_dir / "warmup", guard)
    if extras is not None:
        liveness.keep_crops = extras.crops_wanted
    for number, clip in enumerate(clips):
        clip_cfg = with_overrides(cfg, state_dir=state_dir / f"{kind}-{threads}-{policy}-{number}")
        result.clips.append(
            _run_clip(
                clip_cfg, clip, detector, liveness, timed_identity, plan, result, extras, guard
            )
        )
    result.detect_seconds = detector.seconds
    result.crop_seconds = liveness.crop_seconds
    result.infer_seconds = liveness.infer_seconds
    if timed_identity is not None:
        result.identity_face_seconds = timed_identity.seconds
    if extras is not None:
        extras.crops, extras.crop_labels = liveness.crops, liveness.crop_labels
    return result


def _warm_up(
    config: Config,
    clip: Clip,
    detector: TimedDetector,
    liveness: TimedLiveness,
    state: Path,
    guard: DeviceGuard | None = None,
) -> None:
    """A few untimed frames first: the first inference calls allocate and are not typical."""
    door = Door(with_overrides(config, state_dir=state))
    try:
        pipeline = Pipeline(
            config, ClipSource([clip.path]), detector, liveness, door.relay, door.bus, guard=guard
        )
        for index, (image, _) in enumerate(clip_frames(clip.path, WARMUP_FRAMES)):
            pipeline.process(Frame(image, time.monotonic(), index))
    finally:
        door.close()
    detector.seconds.clear()
    liveness.crop_seconds.clear()
    liveness.infer_seconds.clear()


def _keep_stage_times(result: PassResult, times: StageTimes, identity: bool) -> None:
    """The pipeline's own per-frame stage times of a clip, added to the pass."""
    result.liveness_frame_seconds.extend(times.liveness)
    result.decide_seconds.extend(times.decide)
    result.guard_seconds.extend(times.guard)
    if identity:
        result.identity_frame_seconds.extend(times.identity)


def _run_clip(
    config: Config,
    clip: Clip,
    detector: TimedDetector,
    liveness: TimedLiveness,
    identity: TimedIdentity | None,
    plan: Plan,
    result: PassResult,
    extras: Extras | None,
    guard: DeviceGuard | None = None,
) -> ClipOutcome:
    door = Door(config)
    detector.reset()
    liveness.label = clip.label
    verdicts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    scores: list[tuple[float, bool]] = []
    first_face: int | None = None
    first_face_at = 0.0
    first_verdict: tuple[str, int, float] | None = None
    frames = 0
    try:
        pipeline = Pipeline(
            config,
            ClipSource([clip.path]),
            detector,
            liveness,
            door.relay,
            door.bus,
            identity=identity,
            audit=door.audit.append,
            guard=guard,
        )
        for index, (image, decode_s) in enumerate(clip_frames(clip.path, plan.frames_per_clip)):
            frames += 1
            door.pulses.frame_index = index
            liveness.new_frame()
            captured_at = time.monotonic()
            start, cpu_start = time.perf_counter(), time.thread_time()
            decisions = pipeline.process(Frame(image, captured_at, index))
            result.process_seconds.append(time.perf_counter() - start)
            result.process_cpu_seconds.append(time.thread_time() - cpu_start)
            result.decode_seconds.append(decode_s)
            if liveness.frame_faces and first_face is None:
                first_face, first_face_at = index, captured_at
            for decision in decisions:
                verdicts[decision.verdict] += 1
                if decision.reason is not None:
                    reasons[decision.reason] += 1
                if first_verdict is None:
                    first_verdict = (decision.verdict, index, time.monotonic())
            if liveness.frame_faces:
                largest = max(liveness.frame_faces, key=lambda f: _area(f.box))
                scores.append((largest.p_real, is_live(largest.p_real, liveness.threshold)))
                if extras is not None:
                    _collect(extras, clip, image, largest, liveness.threshold)
        _keep_stage_times(result, pipeline.stats.times, identity is not None)
    finally:
        door.close()
    return _clip_outcome(
        clip, frames, first_face, first_face_at, first_verdict, door.pulses, pipeline.stats,
        verdicts, reasons, scores,
    )  # fmt: skip


def _clip_outcome(
    clip: Clip,
    frames: int,
    first_face: int | None,
    first_face_at: float,
    first_verdict: tuple[str, int, float] | None,
    pulses: PulseClock,
    stats: PipelineStats,
    verdicts: Counter[str],
    reasons: Counter[str],
    scores: list[tuple[float, bool]],
) -> ClipOutcome:
    """One clip's figures: latencies counted from the first frame with a face."""
    latency = (
        (pulses.pulse_at - first_face_at) * 1000.0
        if pulses.pulse_at is not None and first_face is not None
        else None
    )
    return ClipOutcome(
        clip=clip.name,
        label=clip.label,
        frames=frames,
        first_face_frame=first_face,
        pulse_frame=pulses.pulse_frame,
        latency_ms=latency,
        first_verdict=None if first_verdict is None else first_verdict[0],
        first_verdict_frame=None if first_verdict is None else first_verdict[1],
        first_verdict_ms=(
            None
            if first_verdict is None or first_face is None
            else (first_verdict[2] - first_face_at) * 1000.0
        ),
        verdicts=dict(verdicts),
        frame_scores=scores,
        reasons=dict(reasons),
        guard_runs=stats.guard_runs,
        guard_flagged=stats.guard_flagged,
    )


def _collect(
    extras: Extras, clip: Clip, image: np.ndarray, face: FaceScore, threshold: float
) -> None:
    """Outside the timed call: the peer on the same face, and a few face samples."""
    record: dict[str, Any] = {
        "clip": clip.name,
        "label": clip.label,
        "livegate_live": is_live(face.p_real, threshold),
    }
    for name, peer in extras.peers.items():
        record[name] = peer.logit_diff(image, face.box) >= PEER_LOGIT_THRESHOLD
    extras.peer_records.append(record)
    if len(extras.samples) < extras.samples_wanted and len(extras.peer_records) % 7 == 1:
        extras.samples.append(face_sample(image, face.box, clip.label))


# -- device guard: every frame of every clip, and the frame loop with it on and off -------------
def guard_scan(config: Config, clips: Sequence[Clip], frames: int | None) -> dict[str, Any]:
    """The device guard on EVERY frame of each clip (not only while a face is undecided, as the
    daemon runs it), around the faces res10 finds on the whole frame: on how many frames it
    fires, and its time per run on one thread."""
    set_threads(1)
    detector = make_detector(
        "res10",
        confidence=config.detector.confidence_for("res10"),
        min_face_px=config.detector.min_face_px,
        assets_dir=config.detector.assets_dir,
        min_visible=config.detector.min_visible,
    )
    guard_config = with_overrides(config, device_guard={"enabled": True}).device_guard
    guard = load_device_guard(guard_config, num_threads=1)
    assert guard is not None
    seconds: list[float] = []
    out: dict[str, Any] = {}
    for clip in clips:
        face_frames = flagged = 0
        first: int | None = None
        classes: Counter[str] = Counter()
        total = 0
        for index, (image, _) in enumerate(clip_frames(clip.path, frames)):
            total += 1
            boxes = [d.box for d in detector.detect(image)]
            if not boxes:
                continue
            face_frames += 1
            start = time.perf_counter()
            found = guard.check(image, boxes)
            seconds.append(time.perf_counter() - start)
            devices = [d for d in found if d is not None]
            if devices:
                flagged += 1
                first = index if first is None else first
                classes[max(devices, key=lambda d: d.score).label] += 1
        out[clip.name] = {
            "label": clip.label,
            "frames": total,
            "face_frames": face_frames,
            "flagged_frames": flagged,
            "first_flagged_frame": first,
            "classes": dict(classes),
        }
    return {
        "basis": "res10 faces on every whole frame (640 px wide), device guard with the"
        f" configured classes {list(guard_config.classes)} at score >="
        f" {guard_config.min_score}, face_overlap {guard_config.face_overlap}, 1 thread",
        "ms_per_run": ms_stats(seconds),
        "clips": out,
    }


def guard_summary(
    on: PassResult, off: PassResult, scan: dict[str, Any], config: Config
) -> dict[str, Any]:
    """Device guard figures: time per run and per frame, fps on/off, per clip what it did."""
    off_clips = {c.clip: c for c in off.clips}
    clips: dict[str, Any] = {}
    for clip in on.clips:
        other = off_clips.get(clip.clip)
        clips[clip.clip] = {
            **scan["clips"].get(clip.clip, {"label": clip.label}),
            "pipeline_guard_runs": clip.guard_runs,
            "pipeline_guard_flagged": clip.guard_flagged,
            "verdicts_guard_on": clip.verdicts,
            "spoof_reasons_guard_on": clip.reasons,
            "verdicts_guard_off": None if other is None else other.verdicts,
        }
    return {
        "classes": list(config.device_guard.classes),
        "min_score": config.device_guard.min_score,
        "every_n_frames": config.device_guard.every_n_frames,
        "ms_per_run_pipeline": ms_stats(on.guard_seconds),
        "ms_per_run_every_frame": scan["ms_per_run"],
        "ms_per_frame_avg": on.guard_ms_per_frame,
        "fps_1t_guard_on": round(on.fps, 2),
        "fps_1t_guard_off": round(off.fps, 2),
        "fps_1t_cpu_guard_on": round(on.fps_cpu, 2),
        "fps_1t_cpu_guard_off": round(off.fps_cpu, 2),
        "detector": on.detector,
        "scan_basis": scan["basis"],
        "clips": clips,
    }


def _merged(results: Sequence[PassResult]) -> PassResult:
    """Several passes of one setup as one (timings pooled; clip outcomes of the first)."""
    first = results[0]
    merged = PassResult(
        first.detector,
        first.threads,
        first.policy,
        guard=first.guard,
        cv2_threads=first.cv2_threads,
        clips=first.clips,
    )
    for result in results:
        merged.process_seconds += result.process_seconds
        merged.process_cpu_seconds += result.process_cpu_seconds
        merged.guard_seconds += result.guard_seconds
    return merged


def guard_bench(config: Config, clips: Sequence[Clip], frames: int | None) -> dict[str, Any]:
    """``bench --guard``: the default detection path, 1 thread, every frame of every clip, with
    the guard off and on, alternated twice so that a change in the machine's load hits both; and
    the guard on every frame (``guard_scan``)."""
    machine = machine_info()  # its load average is the one at the start
    default = detector_paths(config)[0]
    plan = Plan.full(frames)
    previous_threads = cv2.getNumThreads()
    runs: dict[bool, list[PassResult]] = {False: [], True: []}
    try:
        with tempfile.TemporaryDirectory(prefix="livegate-bench-guard-") as tmp:
            for round_ in range(2):
                for enabled in (False, True):
                    cfg = with_overrides(config, device_guard={"enabled": enabled})
                    runs[enabled].append(
                        run_pass(
                            cfg,
                            clips,
                            default,
                            1,
                            "any_live",
                            plan,
                            Path(tmp) / f"{round_}-{enabled}",
                        )
                    )
            scan = guard_scan(config, clips, frames)
    finally:
        set_threads(previous_threads)
    on_config = with_overrides(config, device_guard={"enabled": True})
    return {
        "device_guard": guard_summary(_merged(runs[True]), _merged(runs[False]), scan, on_config),
        "machine": machine,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


# -- enrolled policy: a store of the clips' people ----------------------------------------------
def build_store(
    config: Config, clips: Sequence[Clip], frames_each: int, limit: int | None = None
) -> int:
    """Enrol each person of a real clip from a few of its frames (largest res10 face) into
    ``config.store_path``; returns how many people. Timing only: the same clips are then played,
    so recognition here says nothing about accuracy."""
    from edge.identity import EnrolmentStore, FaceEmbedder

    embedder = FaceEmbedder()
    detector = build_detector(config, "res10", 0)
    store = EnrolmentStore(config.store_path, embedder.model_sha256)
    for clip in clips:
        if clip.label != "real":
            continue
        frames = list(clip_frames(clip.path, limit))
        picks = np.linspace(0, len(frames) - 1, num=min(frames_each, len(frames))).astype(int)
        embeddings = []
        for pick in picks:
            image = frames[int(pick)][0]
            found = detector.detect(image)
            if found:
                box = max(found, key=lambda d: d.area).box
                embeddings.append(embedder.embed(image, box))
        del frames
        if embeddings:
            store.add(clip.person, embeddings)
    config.store_path.parent.mkdir(parents=True, exist_ok=True)
    store.save()
    return len(store)


def _per_face_seconds(
    run: Callable[[np.ndarray, Box], Any], samples: Sequence[FaceSample]
) -> list[float]:
    """Seconds of ``run(image, box)`` per face sample, after one warm-up call."""
    run(samples[0].image, samples[0].box)
    seconds = []
    for sample in samples:
        start = time.perf_counter()
        run(sample.image, sample.box)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_faces(samples: Sequence[FaceSample], config: Config) -> dict[str, Any]:
    """dlib recognition and MediaPipe face mesh, ms per face, on the same face samples."""
    out: dict[str, Any] = {"faces": len(samples)}
    if not samples:
        return out
    try:
        from edge.identity import FaceEmbedder

        out["identity"] = ms_stats(_per_face_seconds(FaceEmbedder().embed, samples))
    except (ImportError, ModelError) as exc:
        out["identity_skipped"] = str(exc)
    try:
        from edge.blink import EyeLandmarker

        landmarker = EyeLandmarker(assets_dir=config.detector.assets_dir, threads=1)
        out["face_mesh"] = ms_stats(_per_face_seconds(landmarker.eye_aspect_ratio, samples))
    except (ImportError, ModelError) as exc:
        out["face_mesh_skipped"] = str(exc)
    return out


# -- fresh frames: a 30 FPS camera feeding the real pipeline ------------------------------------
class _AgePipeline(Pipeline):
    """The real pipeline, noting how old each frame is when its processing starts and ends."""

    ages_start: list[float]
    ages_end: list[float]
    first_face_at: float | None

    def process(self, frame: Frame) -> list:  # type: ignore[override]
        self.ages_start.append(time.monotonic() - frame.captured_at)
        decisions = super().process(frame)
        self.ages_end.append(time.monotonic() - frame.captured_at)
        if self.first_face_at is None and self.last_detections:
            self.first_face_at = frame.captured_at
        return decisions


def run_camera_sim(
    config: Config, clip: Clip, kind: str, threads: int, seconds: float, state_dir: Path
) -> dict[str, Any]:
    """A producer at 30 FPS (the pipeline's own capture thread over a paced clip) and the real
    per-frame work as consumer, through the one-slot handoff, for ``seconds``."""
    set_threads(threads)
    cfg = with_overrides(config, access={"policy": "any_live"}, state_dir=state_dir)
    detector = build_detector(cfg, kind, threads)
    liveness = load_liveness(cfg, threads)
    # Looped for as long as the run lasts: a camera does not end.
    source = ClipSource([clip.path], total=int(seconds * CAMERA_FPS * 4) + 10, fps=CAMERA_FPS)
    door = Door(cfg)
    try:
        pipeline = _AgePipeline(
            cfg,
            source,
            detector,
            liveness,
            door.relay,
            door.bus,
            audit=door.audit.append,
            guard=load_device_guard(cfg.device_guard, num_threads=threads),
        )
        pipeline.ages_start, pipeline.ages_end, pipeline.first_face_at = [], [], None
        timer = threading.Timer(seconds, pipeline.stop)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        pipeline.run()
        elapsed = time.monotonic() - started
        timer.cancel()
    finally:
        door.close()
    stats = pipeline.stats
    produced = source.reads
    latency = (
        (door.pulses.pulse_at - pipeline.first_face_at) * 1000.0
        if door.pulses.pulse_at is not None and pipeline.first_face_at is not None
        else None
    )
    return {
        "detector": kind,
        "threads": threads,
        "clip": clip.name,
        "seconds": round(elapsed, 2),
        "camera_fps": CAMERA_FPS,
        "produced": produced,
        "taken": stats.frames_read,
        "processed": stats.frames_processed,
        "dropped": stats.frames_dropped,
        "dropped_share": _rate(stats.frames_dropped, produced),
        "too_old": stats.frames_stale,
        "max_frame_age_s": cfg.camera.max_frame_age_s,
        "consumer_fps": round(stats.frames_processed / elapsed, 2) if elapsed > 0 else 0.0,
        "age_at_start": ms_stats(pipeline.ages_start),
        "age_at_verdict": ms_stats(pipeline.ages_end),
        "face_to_pulse_ms": None if latency is None else round(latency, 1),
    }


# -- the seed's way: Keras model.predict per face ------------------------------------------------
def find_keras(args: argparse.Namespace, config: Config) -> Path | None:
    candidates = [
        args.keras,
        os.environ.get("LIVEGATE_KERAS"),
        config.liveness.model.with_suffix(".keras"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def keras_vs_litert(
    keras_path: Path | None,
    crops: Sequence[np.ndarray],
    model: LivenessModel,
    predict_faces: int,
) -> dict[str, Any]:
    """Latency of ``model.predict`` per face (the seed's way) vs the int8 model in LiteRT on one
    thread, on the same crops; agreement of their decisions at the model's threshold."""
    if keras_path is None:
        return {
            "skipped": "no Keras model: pass --keras RUN_DIR/model.keras (the float model"
            " `python -m train_host train` saved) or set LIVEGATE_KERAS"
        }
    if not crops:
        return {"skipped": "no face crops were collected"}
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras  # lazy: TensorFlow is a host-only dependency, absent on a Pi

        import train_host.minifasnet  # noqa: F401 - registers the v2 model's layers for loading
    except ImportError as exc:
        return {
            "skipped": f"TensorFlow/Keras not installed ({exc}): the seed-way comparison"
            " needs requirements-host.txt"
        }
    try:
        net = keras.models.load_model(keras_path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        return {"skipped": f"cannot load {keras_path}: {exc}"}
    want = (model.spec.input_height, model.spec.input_width, model.spec.channels)
    if tuple(net.input_shape[1:]) != want:
        return {"skipped": f"{keras_path} takes {net.input_shape[1:]}, the int8 model {want}"}
    real = model.labels.index("real")
    x = np.stack(crops).astype(np.float32)
    # Agreement on every crop: batched calls give the same numbers as predict, much faster.
    keras_p = np.concatenate(
        [np.asarray(net(x[i : i + 64], training=False))[:, real] for i in range(0, len(x), 64)]
    )
    litert_p = np.array([model.score(face) for face in crops])
    threshold = model.threshold
    agreement = float(np.mean(is_live(keras_p, threshold) == is_live(litert_p, threshold)))
    # Latency, per face, on the same first crops, after one warm-up call each.
    picks = x[: max(1, predict_faces)]
    net.predict(picks[:1], verbose=0)
    net(picks[:1], training=False)
    predict_s, call_s, litert_s = [], [], []
    for face in picks:
        start = time.perf_counter()
        net.predict(face[np.newaxis], verbose=0)
        predict_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        net(face[np.newaxis], training=False)
        call_s.append(time.perf_counter() - start)
    for face in picks:
        start = time.perf_counter()
        model.score(face)
        litert_s.append(time.perf_counter() - start)
    predict, litert = ms_stats(predict_s), ms_stats(litert_s)
    assert predict is not None and litert is not None
    ratio = predict["median_ms"] / litert["median_ms"] if litert["median_ms"] > 0 else math.inf
    return {
        "keras_model": str(keras_path),
        "faces_timed": len(picks),
        "crops_compared": int(len(x)),
        "keras_predict": predict,
        "keras_call": ms_stats(call_s),
        "litert_int8_1t": litert,
        "ratio": round(ratio, 1),
        "agreement": round(agreement, 4),
        "mean_abs_diff": round(float(np.mean(np.abs(keras_p - litert_p))), 4),
        "threshold": threshold,
        "tf_threads": "TensorFlow default (all cores), as the seed ran it",
    }


def peer_summary(extras: Extras, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    records = extras.peer_records
    real = [r for r in records if r["label"] == "real"]
    fake = [r for r in records if r["label"] == "fake"]
    clips = sorted({r["clip"] for r in records})
    out: dict[str, dict[str, Any]] = {}
    for name in ("livegate_live", *names):
        by_clip = {}
        for clip in clips:
            mine = [r for r in records if r["clip"] == clip]
            live = sum(bool(r[name]) for r in mine)
            # Share of the clip's face frames judged as its label says they are.
            right = live if mine[0]["label"] == "real" else len(mine) - live
            by_clip[clip] = {
                "label": mine[0]["label"],
                "frames": len(mine),
                "correct_rate": _rate(right, len(mine)),
            }
        out[name] = {
            "real_accept_rate": _rate(sum(bool(r[name]) for r in real), len(real)),
            "fake_reject_rate": _rate(sum(not r[name] for r in fake), len(fake)),
            "frames_real": len(real),
            "frames_fake": len(fake),
            "by_clip": by_clip,
        }
    return out


# -- machine ------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    # x86 names the CPU in "model name"; a Raspberry Pi names the board in "Model".
    cpu = (
        fields.get("model name")
        or fields.get("model")
        or fields.get("hardware")
        or platform.processor()
        or platform.machine()
    )
    packages = (
        "numpy",
        "opencv-python-headless",
        "opencv-python",
        "ai-edge-litert",
        "tflite-runtime",
        "onnxruntime",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "dlib-bin",
        "dlib",
        "gpiozero",
        "pydantic",
        "paho-mqtt",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cv2": cv2.__version__,
        "cv2_default_threads": cv2.getNumThreads(),
        "versions": {p: v for p in packages if (v := _version(p)) is not None},
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }


# -- the run ------------------------------------------------------------------------------------
def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m bench``."""
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few frames of everything (for tests; figures are not meaningful)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: the repository's config.yaml)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="liveness .tflite to measure (default: the config's)",
    )
    parser.add_argument(
        "--keras",
        type=Path,
        default=None,
        help="the float Keras model of the same training run (model.keras), for"
        " the seed-way comparison (default: $LIVEGATE_KERAS or"
        " <model>.keras)",
    )
    parser.add_argument(
        "--videos",
        type=Path,
        default=DEFAULT_VIDEOS,
        help="folder of <person>_real.* / <person>_fake.* clips",
    )
    parser.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="peer model folder")
    parser.add_argument(
        "--old-model",
        type=Path,
        default=DEFAULT_OLD_MODEL,
        help="a former liveness model scored on the same faces (livegate_v1)",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="at most this many frames per clip (default: all)"
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=None,
        metavar="N",
        help="only a soak: N frames through the frame loop, RSS start/end",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the results as a report (BENCHMARKS.md)",
    )
    parser.add_argument(
        "--guard",
        action="store_true",
        help="only the device guard: the default pass (1 thread) with the guard"
        " off and on, alternated twice, and the guard on every frame",
    )


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the bench (or the soak) and print the table; write ``--json``. Exit code 0. ``argv``
    are the command's options, as the report quotes them."""
    config = bench_config(args)
    if not config.liveness.model.is_file():
        raise ModelError(
            f"liveness model {config.liveness.model} not found: train/export one or pass --model"
        )
    clips = find_clips(args.videos)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    if args.guard:
        results = guard_bench(config, clips, args.frames)
        results["command"] = command
        text = "\n".join(format_guard(results["device_guard"])).strip("\n")
        print(text)
        if args.markdown is not None:
            m = results["machine"]
            body = (
                f"Command: `{command.strip()}`; {m['cpu']}, {m['cores']} cores, load"
                f" {m['loadavg_start']} at the start, {results['loadavg_end']} at the end\n\n"
                f"```\n{text}\n```\n"
            )
            write_section(args.markdown, GUARD_SPEED_HEADING, body)
            print(f"\nwrote the {GUARD_SPEED_HEADING!r} section of {args.markdown}")
    elif args.soak is not None:
        results = run_soak(config, clips, args.soak)
        results["command"] = command
        print(format_soak(results))
        if args.markdown is not None:
            body = f"Command: `{command.strip()}`\n\n```\n{format_soak(results)}\n```\n"
            write_section(args.markdown, "## Soak", body)
            print(f"\nwrote the soak section of {args.markdown}")
    else:
        plan = Plan.tiny() if args.tiny else Plan.full(args.frames)
        if plan.one_clip_per_label:
            clips = one_per_label(clips)
        results = bench(config, clips, plan, args)
        results["command"] = command
        print(format_table(results))
        if args.markdown is not None:
            soak = read_section(args.markdown, "## Soak")  # a soak run's section is kept
            # ...and python -m bench.device_guard_check's, bench --guard's, bench.memory's.
            kept = {
                heading: read_section(args.markdown, heading)
                for heading in (GUARD_SPEED_HEADING, GUARD_CHECK_HEADING, MEMORY_HEADING)
            }
            args.markdown.write_text(format_markdown(results))
            if soak:
                write_section(args.markdown, "## Soak", soak)
            for heading, body in kept.items():
                if body:
                    write_section(args.markdown, heading, body)
            print(f"\nwrote {args.markdown}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(results), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (null instead)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _finite(value.item())
    return value


class _Sections:
    """Wall seconds spent per part of the bench (where a slow run went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name = ""
        self._start = 0.0

    def __call__(self, name: str) -> _Sections:
        self._name = name
        return self

    def __enter__(self) -> None:
        logger.info("bench: %s", self._name)
        self._start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = round(time.monotonic() - self._start, 1)


def _bench_header(
    config: Config, clips: Sequence[Clip], plan: Plan, tiny: bool, default: str, all_threads: int
) -> dict[str, Any]:
    """The results' opening: format, machine, and what the run measures."""
    return {
        "format": BENCH_FORMAT,
        "tiny": bool(tiny),
        "machine": machine_info(),
        "setup": {
            "frames": f"each clip frame resized to {BENCH_WIDTH} px wide, aspect kept",
            "frames_per_clip": plan.frames_per_clip or "all",
            "clips": [{"name": c.name, "label": c.label} for c in clips],
            "default_detector": default,
            "detect_width": config.detector.detect_width,
            "every_n_frames": config.detector.every_n_frames,
            "liveness_model": str(config.liveness.model),
            "vote": f"{config.decision.min_live_frames} of {config.decision.vote_frames} frames"
            f" or {config.decision.vote_seconds} s",
            "threads": {
                "1t": {"cv2": 1, "litert": 1},
                "all": {"cv2": all_threads, "litert": all_threads},
            },
        },
        "notes": [],
    }


def _memory_runs(
    config: Config, plan: Plan, default: str, real_clip: Clip, state: Path, section: _Sections
) -> list[dict[str, Any]]:
    """Peak RSS of daemon-like processes: the default path, and the plan's other paths."""
    rss_runs = []
    for number, run in enumerate(plan.rss_runs):
        which, policy = run.split(":")
        # whole: what regions cost in memory; other: what the lightest detector saves.
        kind = {"default": default, "whole": config.detector.kind}.get(which, "blazeface")
        if which != "default" and kind == default:
            continue  # measured already
        cfg = with_overrides(
            path_config(config, kind),
            access={"policy": policy, "store": str(_store_path(state))},
            mqtt={"enabled": False},
        )
        with section(f"memory {kind} {policy}"):
            rss_runs.append(measure_rss(cfg, real_clip, plan.rss_frames, state / f"rss-{number}"))
    return rss_runs


def bench(
    config: Config, clips: Sequence[Clip], plan: Plan, args: argparse.Namespace
) -> dict[str, Any]:
    started = time.monotonic()
    all_threads = os.cpu_count() or 1
    kinds = detector_paths(config)
    default = kinds[0]
    keras_path = find_keras(args, config)
    out = _bench_header(config, clips, plan, args.tiny, default, all_threads)
    notes: list[str] = out["notes"]
    section = _Sections()
    previous_threads = cv2.getNumThreads()
    peers = _load_peers(args.peer, notes, args.old_model)
    extras = Extras(peers=peers, samples_wanted=plan.face_samples, crops_wanted=plan.crops_kept)
    real_clip = _first(clips, "real")
    with tempfile.TemporaryDirectory(prefix="livegate-bench-") as tmp:
        state = Path(tmp)
        passes: dict[tuple[str, int, str], PassResult] = {}
        try:
            for kind in kinds:
                for threads in (1, all_threads):
                    with section(f"pass {kind} {threads}t any_live"):
                        passes[(kind, threads, "any_live")] = run_pass(
                            config, clips, kind, threads, "any_live", plan, state / "p",
                            extras=extras if (kind, threads) == (default, 1) else None,
                        )  # fmt: skip
            # The same default pass with the device guard switched the other way (on: off).
            flipped = with_overrides(
                config, device_guard={"enabled": not config.device_guard.enabled}
            )
            with section(f"pass {default} 1t any_live, device guard flipped"):
                other_guard = run_pass(flipped, clips, default, 1, "any_live", plan, state / "g")
            with section("device guard on every frame"):
                scan = guard_scan(config, clips, plan.frames_per_clip)
            with section(f"pass {default} 1t enrolled"):
                enrolled = _enrolled_pass(config, clips, default, plan, state, notes)
            if enrolled is not None:
                passes[(default, 1, "enrolled")] = enrolled
            with section("identity and face mesh per face"):
                faces = time_faces(extras.samples, config)
            stale = {}
            for kind in kinds:
                with section(f"camera simulation {kind}"):
                    stale[kind] = run_camera_sim(
                        config, real_clip, kind, 1, plan.stale_seconds, state / f"stale-{kind}"
                    )
            rss_runs = _memory_runs(config, plan, default, real_clip, state, section)
        finally:
            set_threads(previous_threads)
        with section("keras vs litert"):
            keras = keras_vs_litert(
                keras_path, extras.crops, load_liveness(config, 1), plan.keras_predict_faces
            )
        with section("detector comparison"):
            out["detector_comparison"] = detector_comparison(
                config, args.videos, plan.compare_frames
            )
    assembled = _assemble(
        passes, kinds, all_threads, extras, peers, faces, stale, rss_runs, keras, config,
        keras_path, args.peer,
    )  # fmt: skip
    out.update(assembled)
    one = passes[(default, 1, "any_live")]
    guard_on, guard_off = (one, other_guard) if one.guard else (other_guard, one)
    out["device_guard"] = guard_summary(guard_on, guard_off, scan, config)
    out["goals"]["fps_1t>=30 with the device guard"] = out["device_guard"]["fps_1t_guard_on"] >= (
        GOAL_FPS_1T
    )
    out["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out["sections_s"] = section.seconds
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def _store_path(state: Path) -> Path:
    """Where the bench's enrolment store lives under its temporary state folder."""
    return state / "store" / "enrolled.json"


def _load_peers(
    peer_dir: Path, notes: list[str], old_model: Path | None = None
) -> dict[str, PeerModel | OldLiveness]:
    peers: dict[str, PeerModel | OldLiveness] = {}
    if old_model is not None:
        if old_model.is_file():
            peers["livegate_v1"] = OldLiveness(old_model)
        else:
            notes.append(f"former model {old_model} not found: livegate_v1 skipped")
    for name, file in (("peer", "best_model.onnx"), ("peer_int8", "best_model_quantized.onnx")):
        path = peer_dir / file
        if not path.is_file():
            notes.append(f"peer model {path} not found: {name} skipped")
            continue
        try:
            peers[name] = PeerModel(path, threads=1)
        except (ImportError, ModelError) as exc:
            notes.append(f"{name} skipped: {exc}")
    return peers


def _first(clips: Sequence[Clip], label: str) -> Clip:
    return next((c for c in clips if c.label == label), clips[0])


def _enrolled_pass(
    config: Config, clips: Sequence[Clip], kind: str, plan: Plan, state: Path, notes: list[str]
) -> PassResult | None:
    store_cfg = with_overrides(
        config, access={"store": str(_store_path(state)), "policy": "enrolled"}
    )
    try:
        from edge.daemon import IdentityService

        people = build_store(store_cfg, clips, plan.enrol_frames, plan.frames_per_clip)
        identity = IdentityService(store_cfg)
    except (ImportError, ModelError) as exc:
        notes.append(f"enrolled policy skipped: {exc}")
        return None
    notes.append(
        f"enrolled policy: {people} people enrolled from their own real clips (timing"
        " only; recognition accuracy is not measured here)"
    )
    return run_pass(store_cfg, clips, kind, 1, "enrolled", plan, state / "e", identity=identity)


def _latency(result: PassResult | None) -> dict[str, Any]:
    """Worst real clip: face -> pulse (processing ms, frames, camera ms at 30 FPS)."""
    if result is None:
        return {}
    real = [c.to_json() for c in result.clips if c.label == "real"]
    timed = [c for c in real if c["latency_ms"] is not None]
    worst = max(timed, key=lambda c: c["latency_ms"]) if timed else None
    return {
        "worst_ms": None if worst is None else worst["latency_ms"],
        "worst_frames": None if worst is None else worst["latency_frames"],
        "worst_camera_ms": None if worst is None else worst["latency_camera_ms"],
        "real_clips_granted": f"{len(timed)}/{len(real)}",
    }


def _stage_table(
    passes: dict[tuple[str, int, str], PassResult], kinds: Sequence[str], threads: int
) -> dict[str, Any]:
    """ms per stage of the default path's pass at ``threads`` (detection: every kind's)."""
    base = passes[(kinds[0], threads, "any_live")]
    table: dict[str, Any] = {"decode": ms_stats(base.decode_seconds)}
    for kind in kinds:
        table[f"detect_{kind}"] = ms_stats(passes[(kind, threads, "any_live")].detect_seconds)
    table["crop_preprocess"] = ms_stats(base.crop_seconds)
    table["liveness_inference"] = ms_stats(base.infer_seconds)
    table["decide"] = ms_stats(base.decide_seconds)
    table["pipeline"] = ms_stats(base.process_seconds)
    return {k: v for k, v in table.items() if v is not None}


def _peer_figures(peer: PeerModel | OldLiveness, summary: dict[str, Any]) -> dict[str, Any]:
    """A peer's (or the former model's) latency and its operating point, with its accuracy."""
    return {
        "model": str(peer.path),
        "latency_ms": (ms_stats(peer.infer_seconds) or {}).get("median_ms"),
        "latency": ms_stats(peer.infer_seconds),
        "crop": ms_stats(peer.crop_seconds),
        "threshold": (
            f"p_real >= {peer.model.threshold:.4f} (its sidecar)"
            if isinstance(peer, OldLiveness)
            else f"logit(real) - logit(spoof) >= {PEER_LOGIT_THRESHOLD}"
        ),
        "threads": 1,
        **summary,
    }


def _assemble(
    passes: dict[tuple[str, int, str], PassResult],
    kinds: Sequence[str],
    all_threads: int,
    extras: Extras,
    peers: dict[str, PeerModel | OldLiveness],
    faces: dict[str, Any],
    stale: dict[str, dict[str, Any]],
    rss_runs: list[dict[str, Any]],
    keras: dict[str, Any],
    config: Config,
    keras_path: Path | None,
    peer_dir: Path,
) -> dict[str, Any]:
    default = kinds[0]
    one = passes[(default, 1, "any_live")]
    many = passes[(default, all_threads, "any_live")]
    stages = _stage_table(passes, kinds, 1)
    for name in ("identity", "face_mesh"):
        if faces.get(name):
            stages[name] = faces[name]
    summary = peer_summary(extras, list(peers))
    peer_out = {name: _peer_figures(peer, summary[name]) for name, peer in peers.items()}
    livegate = {
        "latency_ms": (ms_stats(one.infer_seconds) or {}).get("median_ms"),
        "latency": ms_stats(one.infer_seconds),
        "crop": ms_stats(one.crop_seconds),
        "threshold": one_threshold(config),
        "threads": 1,
        **summary["livegate_live"],
    }
    enrolled = passes.get((default, 1, "enrolled"))
    latency = _latency(one)
    rss_ok = [r for r in rss_runs if "peak_rss_mb" in r]
    fps_by = {
        kind: {
            "fps_1t": round(passes[(kind, 1, "any_live")].fps, 2),
            "fps_all": round(passes[(kind, all_threads, "any_live")].fps, 2),
            "fps_1t_with_decode": round(passes[(kind, 1, "any_live")].fps_with_decode, 2),
        }
        for kind in kinds
    }
    result: dict[str, Any] = {
        "stages": stages,
        "stages_all_threads": _stage_table(passes, kinds, all_threads),
        "fps_1t": round(one.fps, 2),
        "fps_all": round(many.fps, 2),
        "fps_by_detector": fps_by,
        "fps_by_policy": {
            "any_live": round(one.fps, 2),
            **({"enrolled": round(enrolled.fps, 2)} if enrolled is not None else {}),
        },
        "decision_latency_ms": latency.get("worst_ms"),
        "decision_latency_frames": latency.get("worst_frames"),
        "decision_latency_camera_ms": latency.get("worst_camera_ms"),
        "decision_latency_basis": f"worst real clip, {default}, 1 thread, any_live; processing"
        " time from the first frame with a face to the relay pulse",
        "decision_latency": {
            f"{k}/{t}t/{p}": {**_latency(r), "clips": r.summary()["clips"]}
            for (k, t, p), r in passes.items()
        },
        "rss_mb": max((r["peak_rss_mb"] for r in rss_ok), default=None),
        "rss": rss_runs,
        "model_sizes": model_sizes(config, keras_path, peer_dir),
        "keras_vs_litert_ratio": keras.get("ratio"),
        "keras_litert_agreement": keras.get("agreement"),
        "keras": keras,
        "livegate": livegate,
        **peer_out,
        "stale_dropped": stale[default]["dropped"],
        "stale": stale,
        "faces_timed": faces,
        "passes": {f"{k}/{t}t/{p}": r.summary() for (k, t, p), r in passes.items()},
    }
    if enrolled is not None:
        result["decision_latency_enrolled_ms"] = _latency(enrolled).get("worst_ms")
    result["goals"] = _goals(result)
    return result


def _goal(value: float | None, ok: Callable[[float], bool]) -> bool | None:
    return None if value is None else ok(value)


def _goals(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each goal met or not; None: not measured in this run (e.g. no grant on a real clip, no
    Keras model)."""
    return {
        "fps_1t>=30": _goal(result["fps_1t"], lambda v: v >= GOAL_FPS_1T),
        "decision_latency_ms<=300": _goal(
            result["decision_latency_ms"], lambda v: v <= GOAL_LATENCY_MS
        ),
        "rss_mb<=150": _goal(result["rss_mb"], lambda v: v <= GOAL_RSS_MB),
        "keras_vs_litert_ratio>=20": _goal(
            result["keras_vs_litert_ratio"], lambda v: v >= GOAL_KERAS_RATIO
        ),
    }


# Detector choice rule of the daemon issue: the faster detector may be the default only if it
# misses at most this share of res10's faces (main face per frame) on the sample clips.
MAX_MAIN_MISS = 0.01


def detector_comparison(config: Config, videos: Path, max_frames: int | None) -> dict[str, Any]:
    """``edge.detector_compare`` on the clips (res10's faces as the reference, the daemon's size
    and in-frame rules), reduced to what the choice of the default detector needs."""
    from bench.detector_compare import compare

    det = config.detector
    full = compare(
        videos,
        det.assets_dir,
        detect_width=det.detect_width,
        min_face_px=det.min_face_px,
        max_frames=max_frames,
        min_visible=det.min_visible,
        regions=det,
    )
    total: dict[str, Any] = full["total"]  # type: ignore[assignment]
    candidates: dict[str, Any] = {}
    for name, stats in total["detectors"].items():
        candidates[name] = {
            key: stats[key]
            for key in (
                "faces",
                "miss_rate",
                "main_miss_rate",
                "frame_miss_rate",
                "extra_faces",
                "ms_median",
                "ms_mean",
            )
        }
        candidates[name]["qualifies"] = (
            stats["main_miss_rate"] is not None and stats["main_miss_rate"] <= MAX_MAIN_MISS
        )
    return {
        "rule": f"default may be a faster detector only if it misses <= {MAX_MAIN_MISS:.0%} of"
        " res10's main faces (IoU >= 0.5)",
        "frames_per_clip": max_frames or "all",
        "res10_ms_median": total.get("res10_ms_median"),
        "regions": full.get("regions", {}),
        "candidates": candidates,
        "clips": {
            clip: {name: s["main_miss_rate"] for name, s in row["detectors"].items()}
            for clip, row in full["clips"].items()  # type: ignore[union-attr]
        },
    }


def one_threshold(config: Config) -> float:
    return load_liveness(config, 1).threshold


# -- soak ---------------------------------------------------------------------------------------
def run_soak(config: Config, clips: Sequence[Clip], frames: int) -> dict[str, Any]:
    """``frames`` frames through ``Pipeline.run`` (file mode, one thread) looping the clips of
    the first real clip's size, with the journal and audit log on disk; RSS sampled as it goes.
    Growth = RSS at the end - RSS after the warm-up frames."""
    set_threads(1)
    started = time.monotonic()
    samples: list[tuple[int, float]] = []
    warmup = min(200, max(1, frames // 10))
    with tempfile.TemporaryDirectory(prefix="livegate-soak-") as tmp:
        cfg = with_overrides(
            config, state_dir=tmp, access={"policy": "any_live"}, mqtt={"enabled": False}
        )
        detector = TimedDetector(detector_from_config(cfg.detector, num_threads=1))
        liveness = load_liveness(cfg, 1)
        door = Door(cfg)
        # One stream has one frame size: loop the clips shaped like the first real one (the
        # pipeline refuses a frame whose size differs from the stream's, as from a camera).
        same = _same_size(clips, _first(clips, "real"))
        source = ClipSource([c.path for c in same], total=frames)
        every = max(1, frames // 50)

        def sample(_: np.ndarray) -> None:
            count = len(detector.seconds)
            if count == warmup or count % every == 0:
                samples.append((count, (proc_status_kb("VmRSS") or 0) / 1024.0))

        try:
            probe = _SampledDetector(detector, sample)
            pipeline = Pipeline(
                cfg, source, probe, liveness, door.relay, door.bus, audit=door.audit.append
            )
            pipeline.run()
            samples.append((len(detector.seconds), (proc_status_kb("VmRSS") or 0) / 1024.0))
            rows = door.journal.count()
        finally:
            door.close()
        journal_bytes = sum(
            p.stat().st_size
            for p in Path(tmp).iterdir()
            if p.name.startswith(cfg.journal_path.name)
        )
        audit_bytes = cfg.audit_path.stat().st_size if cfg.audit_path.exists() else 0
    after_warmup = [rss for count, rss in samples if count >= warmup]
    start_mb = after_warmup[0] if after_warmup else None
    end_mb = samples[-1][1] if samples else None
    elapsed = time.monotonic() - started
    return {
        "format": BENCH_FORMAT,
        "machine": machine_info(),
        "soak": {
            "frames": pipeline.stats.frames_processed,
            "detector": path_label(cfg.detector.kind, cfg.detector.every_n_frames),
            "threads": 1,
            "clips": [c.name for c in same],
            "seconds": round(elapsed, 1),
            "fps": round(pipeline.stats.frames_processed / elapsed, 2) if elapsed else 0.0,
            "warmup_frames": warmup,
            "rss_start_mb": None if start_mb is None else round(start_mb, 1),
            "rss_end_mb": None if end_mb is None else round(end_mb, 1),
            "rss_growth_mb": (
                None if start_mb is None or end_mb is None else round(end_mb - start_mb, 2)
            ),
            "rss_peak_mb": round((proc_status_kb("VmHWM") or 0) / 1024.0, 1),
            "growth_goal_mb": GOAL_SOAK_GROWTH_MB,
            "rss_samples": [[c, round(r, 1)] for c, r in samples],
            "grants": pipeline.stats.grants,
            "decisions": pipeline.stats.decisions_total,
            "journal_rows": rows,
            "journal_bytes": journal_bytes,
            "audit_bytes": audit_bytes,
        },
    }


def _frame_size(clip: Clip) -> tuple[int, int]:
    capture = cv2.VideoCapture(str(clip.path))
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        return width, int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()


def _same_size(clips: Sequence[Clip], like: Clip) -> list[Clip]:
    size = _frame_size(like)
    return [c for c in clips if _frame_size(c) == size]


class _SampledDetector(FaceDetector):
    """Calls ``hook`` before each detection (the soak's RSS probe), then detects."""

    def __init__(self, inner: TimedDetector, hook: Callable[[np.ndarray], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.hook = hook

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        self.hook(frame_bgr)
        return self.inner.detect(frame_bgr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench [options]``: exit 0, or 2 with one line on stderr for a LiveGate error."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="measure per-stage latency, fps and memory"
    )
    add_bench_arguments(parser)
    options = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(options)
    try:
        return run_bench(args, options)
    except LiveGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
