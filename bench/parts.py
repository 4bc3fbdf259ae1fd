"""The daemon's parts as the bench builds them: config, detector per path, liveness, a mock door."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from bench.common import (
    REGIONS_SUFFIX,
)
from edge.assets import REPO_ROOT
from edge.config import Config, load_config, parse_config, with_overrides
from edge.detectors.base import FaceDetector
from edge.detectors.registry import DETECTORS, detector_from_config
from edge.events import EventBus
from edge.liveness import LivenessModel
from edge.relay import DoorRelay, mock_pin_factory

DETECTOR_KINDS = tuple(DETECTORS)  # every detector the daemon can run, res10 first


# -- building the pipeline as the daemon does ---------------------------------------------------
def bench_config(args: argparse.Namespace) -> Config:
    """The config the bench measures: --config (default: the repo's config.yaml) with --model."""
    path = args.config
    if path is None and (REPO_ROOT / "config.yaml").is_file():
        path = REPO_ROOT / "config.yaml"
    config = load_config(path) if path is not None else parse_config({}, REPO_ROOT)
    if args.model is not None:
        model = Path(args.model).resolve()
        config = with_overrides(config, liveness={"model": model, "sidecar": None})
    return config


def set_threads(threads: int) -> None:
    cv2.setNumThreads(threads)


def path_label(kind: str, every_n_frames: int) -> str:
    return f"{kind}{REGIONS_SUFFIX}" if every_n_frames > 1 else kind


def detector_paths(config: Config) -> list[str]:
    """The configured path first, then every detector kind searched whole on every frame."""
    default = path_label(config.detector.kind, config.detector.every_n_frames)
    return [default] + [kind for kind in DETECTOR_KINDS if kind != default]


def path_config(config: Config, path: str) -> Config:
    """``config`` with the detector section of detection path ``path``."""
    kind = path.removesuffix(REGIONS_SUFFIX)
    every = config.detector.every_n_frames if path.endswith(REGIONS_SUFFIX) else 1
    return with_overrides(config, detector={"kind": kind, "every_n_frames": every})


def build_detector(config: Config, path: str, threads: int) -> FaceDetector:
    """The detector of detection path ``path`` as the daemon builds it (``threads`` 0: the
    library's default)."""
    return detector_from_config(path_config(config, path).detector, num_threads=threads or None)


def load_liveness(config: Config, threads: int) -> LivenessModel:
    return LivenessModel.load(
        config.liveness.model, config.sidecar_path, config.liveness.threshold, num_threads=threads
    )


@dataclass
class PulseClock:
    """Relay listener: when (monotonic) and on which frame the relay first pulsed."""

    frame_index: int = -1
    pulse_at: float | None = None
    pulse_frame: int | None = None

    def __call__(self, unlocked: bool) -> None:
        if unlocked and self.pulse_at is None:
            self.pulse_at = time.monotonic()
            self.pulse_frame = self.frame_index


class Door:
    """A relay on gpiozero's MockFactory, a journal and an audit log in ``state_dir``."""

    def __init__(self, config: Config) -> None:
        from edge.audit import AuditLog
        from edge.journal import EventJournal

        self.factory = mock_pin_factory()
        self.relay = DoorRelay(config.relay, pin_factory=self.factory)
        self.pulses = PulseClock()
        self.relay.add_listener(self.pulses)
        self.journal = EventJournal(
            config.journal_path, config.events.max_rows, config.events.max_age_days
        )
        self.audit = AuditLog(config.audit_path)
        # As the daemon wires it: the relay audits its own relay_on / relay_off.
        self.relay.add_listener(
            lambda unlocked: self.audit.append("relay_on" if unlocked else "relay_off")
        )
        self.bus = EventBus(self.journal)

    def close(self) -> None:
        self.relay.close()
        self.journal.close()
        self.audit.close()
        self.factory.close()
