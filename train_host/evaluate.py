"""Evaluate an exported model through the daemon's own inference class
(``edge.liveness.LivenessModel`` on ai-edge-litert). No TensorFlow needed.

The data is either a folder of whole frames with face boxes (``frames.json`` at its root, boxes in
its ``manifest.csv``, as ``../shared/data/frames``): the model's own crops are cut from each frame
with the daemon's ``face_input``; or a folder of tight crops (``.../real/``, ``.../fake/``), which
only a tight-crop ("margin") model can be scored on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import InputError
from edge.liveness import LivenessModel
from edge.preprocess import preprocess_crop
from train_host import metrics
from train_host.dataset import find_images, read_bgr
from train_host.frames import is_frames_dir, read_manifest, row_box

logger = logging.getLogger(__name__)


def score_frames(model: LivenessModel, data_dir: Path, progress: bool = False) -> dict[str, Any]:
    """P(real) of the face of every frame in a frames folder, cut as the daemon cuts it."""
    rows = read_manifest(data_dir)
    iterator: Any = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="scoring", unit="frame")
    scores = np.array(
        [model.score_face(read_bgr(data_dir / r["file"]), row_box(r)) for r in iterator],
        dtype=np.float64,
    )
    return {
        "scores": scores,
        "is_real": np.array([r["label"] == "real" for r in rows]),
        "sources": np.array([r["source"] for r in rows]),
        "attack": np.array([r.get("attack", "") or "" for r in rows]),
        "capture": np.array([r.get("capture", "") or "" for r in rows]),
    }


def score_folder(model: LivenessModel, data_dir: Path, progress: bool = False) -> dict[str, Any]:
    """P(real) of every input of ``data_dir``: a frames folder (``score_frames``), or crops
    under ``data_dir``/**/{real,fake}/ (cut already; tight-crop models only)."""
    if is_frames_dir(data_dir):
        return score_frames(model, data_dir, progress)
    if model.spec.geometry != "margin":
        raise InputError(
            f"{data_dir} holds cut crops (no frames.json), but this model cuts"
            f" {model.spec.geometry} crops {list(model.spec.context_scales)}x the face box from"
            " whole frames: give a folder of whole frames with a manifest.csv of face boxes"
            " (the format of ../shared/data/frames)"
        )
    items = find_images(data_dir)
    iterator: Any = items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(items, desc="scoring", unit="crop")
    scores = np.array(
        [model.score(preprocess_crop(read_bgr(it.path), model.spec)) for it in iterator],
        dtype=np.float64,
    )
    return {
        "scores": scores,
        "is_real": np.array([it.label == "real" for it in items]),
        "sources": np.array([it.source for it in items]),
    }


def evaluate(
    model_path: Path,
    data_dir: Path,
    threshold: float | None = None,
    per_source: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics of ``model_path`` on ``data_dir`` at the sidecar's (or the given) threshold."""
    model = LivenessModel.load(Path(model_path), threshold=threshold)
    scored = score_folder(model, Path(data_dir), progress=progress)
    scores, is_real = scored["scores"], scored["is_real"]
    result: dict[str, Any] = metrics.summary(scores, is_real, model.threshold, scored.get("attack"))
    result["model_sha256"] = model.sha256
    result["score_quantiles"] = {
        label: (
            np.quantile(scores[mask], [0.05, 0.25, 0.5, 0.75, 0.95]).round(4).tolist()
            if mask.any()
            else None
        )
        for label, mask in (("real", is_real), ("fake", ~is_real))
    }
    if per_source:
        for column, key in (
            ("sources", "per_source"),
            ("attack", "per_attack"),
            ("capture", "per_capture"),
        ):
            if column not in scored:
                continue
            result[key] = {
                value: metrics.summary(scores[m], is_real[m], model.threshold)
                for value in sorted(set(scored[column].tolist()))
                for m in [scored[column] == value]
            }
    return result


def longest_live_run(live: list[bool], window: int = 5, needed: int = 4) -> int:
    """How many sliding windows of ``window`` frames hold at least ``needed`` live frames."""
    hits = 0
    for start in range(0, max(0, len(live) - window + 1)):
        if sum(live[start : start + window]) >= needed:
            hits += 1
    return hits


def score_clips(
    model: LivenessModel,
    clips: list[Path],
    confidence: float = 0.5,
    min_face_px: int = 60,
    window: int = 5,
    needed: int = 4,
) -> dict[str, Any]:
    """Score the largest res10 face of every frame of each clip, as the daemon would see it.

    A check of the shipped model on whole clips (never used to train or tune): per clip the
    quantiles of P(real), the share of frames live at the model's threshold, and how many
    ``needed``-of-``window`` frame windows would vote live.
    """
    import cv2

    from edge.detectors.res10 import Res10Detector

    detector = Res10Detector(confidence=confidence, min_face_px=min_face_px)
    out: dict[str, Any] = {}
    for clip in clips:
        capture = cv2.VideoCapture(str(clip))
        if not capture.isOpened():
            raise InputError(f"cannot open video {clip}")
        scores: list[float] = []
        frames = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                frames += 1
                found = detector.detect(frame)
                if found:
                    # The daemon's crop: around the detector's unclipped box (a clipped box
                    # moves the context window of a face at the frame's edge).
                    face = max(found, key=lambda d: d.area)
                    scores.append(model.score_face(frame, face.context_box))
        finally:
            capture.release()
        live = [model.is_live(s) for s in scores]
        arr = np.array(scores) if scores else np.zeros(0)
        out[clip.name] = {
            "frames": frames,
            "faces": len(scores),
            "live_share": float(np.mean(live)) if live else None,
            "quantiles_5_25_50_75_95": (
                np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95]).round(3).tolist()
                if scores
                else None
            ),
            f"windows_{needed}_of_{window}_live": longest_live_run(live, window, needed),
            "windows": max(0, len(live) - window + 1),
        }
    return out
