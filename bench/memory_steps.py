"""The child process of ``python -m bench.memory``: repeats the daemon's start-up, in the daemon's
order, up to one step, then prints its memory from ``/proc/self/status`` as one JSON line.

``python -m bench.memory_steps SPEC``: SPEC is JSON with ``steps`` (the step keys to run, in
order), ``config`` (a dumped config: camera.source is the clip) and ``frames`` (how many frames
the ``detect`` step sends through the face detector). Every import of LiveGate or a library sits
inside its step, so the first row, ``python``, is the interpreter with this module alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

STATUS_FIELDS = {"VmRSS": "rss_mb", "VmHWM": "peak_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}


def memory_status() -> dict[str, float]:
    """RSS, peak RSS (VmHWM), anonymous and file-backed RSS in MB, and the thread count."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[STATUS_FIELDS[key]] = round(int(value.split()[0]) / 1024.0, 1)
            elif key == "Threads":
                out["threads"] = int(value)
    return out


# -- the steps: each adds what the daemon adds at that point ---------------------------------------
def _python(ctx: dict[str, Any]) -> None:
    pass


def _numpy(ctx: dict[str, Any]) -> None:
    import numpy  # noqa: F401


def _cv2(ctx: dict[str, Any]) -> None:
    import cv2  # noqa: F401


def _pydantic(ctx: dict[str, Any]) -> None:
    import pydantic  # noqa: F401
    import yaml  # noqa: F401


def _config(ctx: dict[str, Any]) -> None:
    from edge.config import parse_config

    ctx["config"] = parse_config(ctx["spec"]["config"], Path("/"))


def _cli(ctx: dict[str, Any]) -> None:
    # `python -m edge run` builds its whole command line (every subcommand) before it runs.
    from edge.__main__ import build_parser

    build_parser()


def _gpiozero(ctx: dict[str, Any]) -> None:
    import gpiozero  # noqa: F401


def _paho(ctx: dict[str, Any]) -> None:
    import paho.mqtt.client  # noqa: F401


def _daemon(ctx: dict[str, Any]) -> None:
    # edge.daemon and what Daemon.run imports on the way (journal, event delivery, audit log,
    # systemd, MQTT + HA).
    import edge.audit  # noqa: F401
    import edge.daemon  # noqa: F401
    import edge.delivery  # noqa: F401
    import edge.journal  # noqa: F401
    import edge.nativelog  # noqa: F401
    import edge.preflight  # noqa: F401
    import edge.sdnotify  # noqa: F401

    config = ctx["config"]
    if config.mqtt.enabled and config.homeassistant.discovery:
        import edge.homeassistant  # noqa: F401


def _litert(ctx: dict[str, Any]) -> None:
    from edge.liveness import interpreter_class

    interpreter_class()


def _liveness(ctx: dict[str, Any]) -> None:
    from edge.liveness import LivenessModel

    cfg = ctx["config"]
    ctx["liveness"] = LivenessModel.load(
        cfg.liveness.model, cfg.sidecar_path, cfg.liveness.threshold
    )


def _detector(ctx: dict[str, Any]) -> None:
    from edge.daemon import load_detector

    ctx["detector"] = load_detector(ctx["config"])


def _guard(ctx: dict[str, Any]) -> None:
    from edge.device_guard import load_device_guard

    ctx["guard"] = load_device_guard(ctx["config"].device_guard)


def _dlib(ctx: dict[str, Any]) -> None:
    import dlib  # noqa: F401


def _identity(ctx: dict[str, Any]) -> None:
    from edge.daemon import IdentityService

    ctx["identity"] = IdentityService(ctx["config"])


def _blink(ctx: dict[str, Any]) -> None:
    from edge.daemon import BlinkService

    ctx["blink"] = BlinkService(ctx["config"])


def _fleet(ctx: dict[str, Any]) -> None:
    import edge.fleet  # noqa: F401


def _camera(ctx: dict[str, Any]) -> None:
    from edge.camera import make_source

    cfg = ctx["config"]
    source = make_source(cfg.camera.source, cfg.camera)
    source.open()
    ctx["source"] = source
    ctx["first_frame"] = source.read()


def _detect(ctx: dict[str, Any]) -> None:
    """The first frames through the face detector (whole frames, and regions around the faces
    it knows in between); the last frame with faces is kept for the next step."""
    source, detector = ctx["source"], ctx["detector"]
    frame = ctx.pop("first_frame")
    for index in range(int(ctx["spec"]["frames"])):
        if index:
            try:
                frame = source.read()
            except EOFError:
                break
        faces = detector.detect_frame(frame)
        if faces:
            ctx["sample"] = (frame, faces)


def _parts(ctx: dict[str, Any]) -> None:
    """Liveness, device guard, identity and blink on the faces of that frame."""
    frame, faces = ctx.pop("sample", (None, []))
    for face in faces:
        ctx["liveness"].score_face(frame, face.context_box)
        if ctx.get("guard") is not None:
            ctx["guard"].check(frame, [face.box])
        if ctx.get("identity") is not None:
            ctx["identity"].identify(frame, face.box)
        if ctx.get("blink") is not None:
            ctx["blink"].update(1, frame, face.box, 0.0)


STEPS = {
    "python": _python,
    "numpy": _numpy,
    "cv2": _cv2,
    "pydantic": _pydantic,
    "config": _config,
    "cli": _cli,
    "gpiozero": _gpiozero,
    "paho": _paho,
    "daemon": _daemon,
    "litert": _litert,
    "liveness": _liveness,
    "detector": _detector,
    "guard": _guard,
    "dlib": _dlib,
    "identity": _identity,
    "blink": _blink,
    "fleet": _fleet,
    "camera": _camera,
    "detect": _detect,
    "parts": _parts,
}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    ctx: dict[str, Any] = {"spec": spec}
    for key in spec["steps"]:
        STEPS[key](ctx)
    print(json.dumps(memory_status()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
