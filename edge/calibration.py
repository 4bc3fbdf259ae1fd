"""Camera calibration of the liveness threshold: this door's camera, a live person in front of it.

What fails most is one threshold for every camera (models/MODEL_CARD.md): on a camera whose live
faces score high, replays and prints score high too. ``python -m edge calibrate`` scores a live
person on the door's own camera and keeps the ``quantile`` of those scores; the daemon then uses
``max(model threshold, min(that quantile, max_threshold))``. It only ever raises the threshold:
a calibration made with a replay, or on a camera the model likes little, changes nothing, so it
cannot open the door wider. The file is bound to the model's sha256: after a model update it is
ignored (with a warning) until calibrated again.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.config import Config
from edge.errors import ConfigError, InputError
from edge.files import write_private
from edge.liveness import LivenessModel

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT = "livegate-camera-calibration/1"
DEFAULT_QUANTILE = 0.05
# A ceiling, chosen, not measured: int8 scores near 1 are 1/256 apart, and a camera whose live
# faces all score 0.99 today must not lock its owner out on a darker day.
DEFAULT_MAX_THRESHOLD = 0.9
DEFAULT_FACES = 60
MIN_FACES = 30  # fewer live faces say too little about a camera's 5th percentile
# Where the daemon's liveness threshold came from: the model's sidecar, liveness.threshold in the
# config, or this module's calibration file. Named as in the `started` event's threshold_from.
ThresholdFrom = Literal["model", "config", "camera_calibration"]


def raised_threshold(model_threshold: float, live_quantile: float, max_threshold: float) -> float:
    """The rule, in one place: the live faces' quantile, capped, never below the model's own."""
    return max(model_threshold, min(live_quantile, max_threshold))


@dataclass(frozen=True)
class CameraCalibration:
    model_sha256: str
    model_threshold: float
    quantile: float
    live_quantile: float  # the ``quantile`` of the live faces' P(real)
    max_threshold: float
    n_faces: int
    live_share: float  # share of those faces live at the model's own threshold
    source: str
    created_utc: str

    @property
    def threshold(self) -> float:
        """The threshold the door uses: never below the model's own, nor (unless the model's
        own is higher) above ``max_threshold``."""
        return raised_threshold(self.model_threshold, self.live_quantile, self.max_threshold)

    def to_json(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, **asdict(self), "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: object, path: Path) -> CameraCalibration:
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"{path}: not a LiveGate camera calibration ({CALIBRATION_FORMAT})")
        try:
            calibration = cls(
                model_sha256=str(data["model_sha256"]),
                model_threshold=float(data["model_threshold"]),
                quantile=float(data["quantile"]),
                live_quantile=float(data["live_quantile"]),
                max_threshold=float(data["max_threshold"]),
                n_faces=int(data["n_faces"]),
                live_share=float(data["live_share"]),
                source=str(data["source"]),
                created_utc=str(data["created_utc"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: lacks or garbles a field: {exc!r}") from exc
        values = (
            calibration.model_threshold,
            calibration.live_quantile,
            calibration.quantile,
            calibration.max_threshold,
        )
        if not all(0.0 <= v <= 1.0 for v in values) or calibration.n_faces < MIN_FACES:
            raise ConfigError(f"{path}: values out of range ({calibration})")
        return calibration


def calibrate(
    scores: Iterable[float],
    model: LivenessModel,
    source: str,
    quantile: float = DEFAULT_QUANTILE,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
) -> CameraCalibration:
    """The calibration of ``scores`` (P(real) of a live person's faces on this camera)."""
    from edge.camera import redact_source

    # The file is kept and may be shared in a bug report: an RTSP password must not be in it.
    shown = redact_source(source)
    values = np.asarray(list(scores), dtype=np.float64)
    if values.size < MIN_FACES:
        raise InputError(
            f"only {values.size} faces seen in {shown} (need {MIN_FACES}): stand in front of the"
            " camera, one person, face visible, and run calibrate again"
        )
    if not 0.0 < quantile < 0.5:
        raise InputError(f"--quantile {quantile}: give a value between 0 and 0.5")
    if not 0.0 < max_threshold <= 1.0:
        raise InputError(f"--max-threshold {max_threshold}: give a value in (0, 1]")
    return CameraCalibration(
        model_sha256=model.sha256,
        model_threshold=float(model.threshold),
        quantile=float(quantile),
        live_quantile=float(np.quantile(values, quantile)),
        max_threshold=float(max_threshold),
        n_faces=int(values.size),
        live_share=float(np.mean(values >= model.threshold)),
        source=shown,
        created_utc=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def save(calibration: CameraCalibration, path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Run as root (sudo python -m edge calibrate), a root-owned 0600 file would be unreadable to
    # the daemon, which then refuses to start: the file goes to the state folder's owner.
    write_private(
        path,
        (json.dumps(calibration.to_json(), indent=2) + "\n").encode(),
        hand_to_folder_owner=True,
    )


def load(path: Path) -> CameraCalibration | None:
    """The calibration at ``path``; None when there is none. A garbled file is a ConfigError
    (the door refuses to start rather than guess which threshold was meant)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: unreadable camera calibration ({exc}); run `python -m edge calibrate`"
            " again or delete the file"
        ) from exc
    return CameraCalibration.from_json(data, path)


def apply_calibration(model: LivenessModel, config: Config) -> CameraCalibration | None:
    """Raise ``model.threshold`` to this camera's calibration when one applies; returns it."""
    path = config.calibration_path
    calibration = load(path) if config.liveness.camera_calibration else None
    if calibration is None:
        return None
    if config.liveness.threshold is not None:
        logger.warning(
            "liveness.threshold %.4f is set in the config: the camera calibration %s is not used",
            config.liveness.threshold,
            path,
        )
        return None
    if calibration.model_sha256 != model.sha256:
        logger.warning(
            "camera calibration %s was made for another liveness model (sha256 %s…, this one"
            " %s…): not used; run `python -m edge calibrate` again",
            path,
            calibration.model_sha256[:12],
            model.sha256[:12],
        )
        return None
    # The rule again from the model's threshold now, not the one the file recorded: a sidecar
    # re-exported with a higher threshold (same model file) or an edited file never lowers it.
    own = model.threshold
    model.threshold = raised_threshold(own, calibration.live_quantile, calibration.max_threshold)
    logger.info(
        "liveness threshold %.4f from the camera calibration %s (model's own %.4f)",
        model.threshold,
        path,
        own,
    )
    return calibration


def live_face_scores(
    model: LivenessModel, config: Config, source: str, faces: int, seconds: float
) -> list[float]:
    """P(real) of the one face in each frame of ``source`` (frames with no face or several are
    skipped: whose face would it be?), until ``faces`` scores, ``seconds`` or the file's end."""
    from edge.camera import make_source
    from edge.detectors.registry import detector_from_config

    detector = detector_from_config(config.detector)
    frames = make_source(source, config.camera)
    scores: list[float] = []
    deadline = time.monotonic() + seconds
    frames.open()
    try:
        while len(scores) < faces and time.monotonic() < deadline:
            try:
                got = frames.read()
            except EOFError:
                break
            if got is None:
                continue
            image, detect_image = got if isinstance(got, tuple) else (got, None)
            found = detector.detect_frame(image, detect_image)
            if len(found) == 1:
                scores.append(model.score_face(image, found[0].context_box))
    finally:
        frames.close()
    return scores
