"""``python -m edge``: the command line. CLI, logging, signals and exit codes; nothing else."""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from edge.config import Config, load_config, load_relay_config
from edge.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REFUSED,
    ConfigError,
    LiveGateError,
    RelayError,
)

DEFAULT_CONFIG = Path("config.yaml")


def _setup_logging(level: str) -> None:
    # stderr: journald reads it under systemd; stdout stays free for printed events.
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load(path: Path) -> Config:
    return load_config(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if not args.no_files:
        from edge.preflight import require_ready

        for note in require_ready(config):
            print(f"note: {note}")
    print(
        f"{args.config}: OK (detector {config.detector.kind}, access {config.access.policy},"
        f" relay pin {config.relay.pin}, pulse {config.relay.pulse_s} s)"
    )
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from edge.calibration import calibrate, live_face_scores, save
    from edge.liveness import LivenessModel
    from edge.preflight import require_ready

    source = args.source if args.source is not None else config.camera.source
    # The calibration file this run replaces may be old or broken: not a reason to refuse.
    unchecked = config.liveness.model_copy(update={"camera_calibration": False})
    require_ready(config.model_copy(update={"liveness": unchecked}), source)
    _setup_logging(config.logging.level)
    model = LivenessModel.load(config.liveness.model, config.sidecar_path)
    from edge.camera import redact_source

    shown = redact_source(source)  # stdout ends up in the journal under systemd
    print(f"scoring up to {args.faces} faces from {shown}: one live person, face to the camera")
    scores = live_face_scores(model, config, source, args.faces, args.seconds)
    calibration = calibrate(scores, model, source, args.quantile, args.max_threshold)
    print(
        f"{calibration.n_faces} faces: {calibration.live_share:.0%} live at the model's threshold"
        f" {calibration.model_threshold:.4f}; {calibration.quantile:.0%} of them score below"
        f" {calibration.live_quantile:.4f}"
    )
    if calibration.threshold > calibration.model_threshold:
        print(f"threshold for this camera: {calibration.threshold:.4f} (raised)")
    else:
        print(
            "threshold for this camera: the model's own (this camera's live faces score low;"
            " a calibration never lowers it)"
        )
    if args.dry_run:
        return EXIT_OK
    path = config.calibration_path
    save(calibration, path)
    print(f"wrote {path}; restart the service to use it")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from edge.preflight import require_ready

    # Refuse (exit 2) before any event, relay or camera: a missing file must not be a traceback.
    events_out = None if args.events_out in (None, "-") else Path(args.events_out)
    require_ready(config, args.source, events_out)
    if args.source is not None:
        config = config.model_copy(
            update={"camera": config.camera.model_copy(update={"source": args.source})}
        )
    _setup_logging(config.logging.level)
    from edge.daemon import Daemon, RunOptions

    options = RunOptions(
        source=args.source,
        relay_mock=args.relay == "mock",
        events_out=events_out,
        print_events=sys.stdout if args.events_out == "-" else None,
    )
    daemon = Daemon(config, options)

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logging.getLogger("edge").info("signal %s: stopping", name)
        options.stop_reason = f"signal {name}"
        options.stop_event.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        if daemon.pipeline is not None:
            daemon.pipeline.reload_requested.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    return daemon.run()


def cmd_lock(args: argparse.Namespace) -> int:
    from edge.relay import drive_locked, mock_pin_factory

    # The relay section only: locking is safe whatever else the file says (the daemon refuses a
    # bad config at start; the door must still be locked after it), while a bad pin or locked
    # level is refused, since it would be a guess.
    relay, ignored = load_relay_config(args.config)
    for problem in ignored:
        print(f"{problem} (not needed to lock; the daemon refuses it)", file=sys.stderr)
    try:
        drive_locked(relay, mock_pin_factory() if args.relay == "mock" or relay.mock else None)
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE  # not locked by this hook: a failure, unlike a refused config
    print(f"relay pin {relay.pin} driven to its locked level")
    return EXIT_OK


def cmd_verify_audit(args: argparse.Namespace) -> int:
    from edge.audit import verify_audit_main

    path = args.path if args.path is not None else _load(args.config).audit_path
    return verify_audit_main(["--path", str(path)])


def cmd_unregister(args: argparse.Namespace) -> int:
    """Remove the device from Home Assistant and the broker: an empty retained message on the
    discovery config, every retained state (the fleet's enrolment report too) and availability."""
    config = _load(args.config)
    _setup_logging(config.logging.level)
    from edge.homeassistant import HomeAssistantBridge
    from edge.mqtt import MqttLink

    # No availability: this short connection must not leave an "offline" behind for the device.
    link = MqttLink(
        config.mqtt,
        client_id=f"livegate-{config.mqtt.device_id}-unregister",
        availability=False,
    )
    bridge = HomeAssistantBridge(
        link,
        config,
        emit=lambda _e: None,
        request_unlock=lambda _s: False,
        request_lock=lambda: None,
    )
    link.start()
    try:
        if not link.wait_connected(10.0):
            print(
                f"error: cannot reach the MQTT broker at {config.mqtt.host}:{config.mqtt.port}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if not bridge.unregister():
            print(
                "error: the broker did not confirm every cleared topic; run unregister again",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    finally:
        link.stop()
    print(
        "device removed from Home Assistant (discovery config, retained states and availability"
        " cleared)"
    )
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config.logging.level)
    from edge.enroll import run_enroll

    return run_enroll(args, config)


def cmd_fleet(args: argparse.Namespace) -> int:
    try:
        from edge.fleet import run_fleet
    except ImportError as exc:  # cryptography (or paho) present but broken
        print(f"error: fleet sync is unavailable: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    def load(path: Path) -> Config:
        config = _load(path)
        _setup_logging(config.logging.level)
        return config

    return run_fleet(args, load)


def cmd_bench(options: list[str]) -> int:
    """``python -m edge bench``: an alias of ``python -m bench`` for one release. The bench is a
    separate package (not installed on a Pi by default), so it runs as its own process: the
    daemon's package imports nothing from it."""
    if importlib.util.find_spec("bench") is None:
        print(
            "error: the bench is not installed here (scripts/install.sh ships the daemon only);"
            " run `python -m bench` from a LiveGate clone",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return subprocess.call([sys.executable, "-m", "bench", *options])


def _checked(
    cast: Callable[[str], float], ok: Callable[[float], bool], what: str
) -> Callable[[str], float]:
    """An argparse type: refused at once (exit 2, usage), not after a minute at the camera."""

    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}")
        return value

    return parse


def _add_calibrate(sub: argparse._SubParsersAction, with_config: Callable) -> None:
    from edge.calibration import DEFAULT_FACES, DEFAULT_MAX_THRESHOLD, DEFAULT_QUANTILE, MIN_FACES

    calibrate = with_config(
        sub.add_parser(
            "calibrate",
            help="score a live person on this door's camera and raise the liveness threshold"
            " to it (never lowers it); stop the service first",
        )
    )
    calibrate.add_argument(
        "--source",
        help="camera index, video file, RTSP URL or 'picamera2' (default: camera.source)",
    )
    calibrate.add_argument(
        "--faces",
        type=_checked(int, lambda v: v >= MIN_FACES, f"a whole number, at least {MIN_FACES}"),
        default=DEFAULT_FACES,
        help=f"live faces to score (>= {MIN_FACES})",
    )
    calibrate.add_argument(
        "--seconds",
        type=_checked(float, lambda v: v > 0, "a number of seconds above 0"),
        default=60.0,
        help="give up after this long",
    )
    calibrate.add_argument(
        "--quantile",
        type=_checked(float, lambda v: 0 < v < 0.5, "a value between 0 and 0.5"),
        default=DEFAULT_QUANTILE,
        help="share of live faces allowed below it",
    )
    calibrate.add_argument(
        "--max-threshold",
        type=_checked(float, lambda v: 0 < v <= 1, "a value in (0, 1]"),
        default=DEFAULT_MAX_THRESHOLD,
        help="never raise the threshold above this (the model's own, if higher, stays)",
    )
    calibrate.add_argument("--dry-run", action="store_true", help="print it, write nothing")
    calibrate.set_defaults(func=cmd_calibrate)


def _add_fleet(sub: argparse._SubParsersAction, with_config: Callable) -> None:
    # Defined here, not in edge.fleet: building the command line must not import edge.fleet and
    # cryptography, which every other command (the daemon first) would then carry for nothing.
    fleet = sub.add_parser(
        "fleet", help="signed, encrypted enrolment sync between doors (docs/fleet.md)"
    )
    actions = fleet.add_subparsers(dest="fleet_command", required=True)
    gen = actions.add_parser("keygen", help="make a fleet key pair and content key")
    gen.add_argument("--out", type=Path, required=True, help="folder for the three key files")
    pub = with_config(actions.add_parser("publish", help="publish a person to the doors"))
    pub.add_argument("name")
    pub.add_argument("--doors", help="device ids, comma separated (default: every door)")
    rev = with_config(actions.add_parser("revoke", help="remove a person from every door"))
    rev.add_argument("name")
    status = with_config(actions.add_parser("status", help="what each door holds"))
    status.add_argument("--wait", type=float, default=2.0, help="seconds to collect reports")
    fleet.set_defaults(func=cmd_fleet)


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (YAML)")
    return p


def _add_lock(sub: argparse._SubParsersAction) -> None:
    lock = _with_config(
        sub.add_parser("lock", help="drive the relay pin locked and exit (stop hook)")
    )
    lock.add_argument("--relay", choices=("gpio", "mock"), default="gpio")
    lock.set_defaults(func=cmd_lock)


def _new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="python -m edge", description="LiveGate door daemon")
    return parser, parser.add_subparsers(dest="command", required=True)


def build_lock_parser() -> argparse.ArgumentParser:
    """The command line of ``lock`` alone, the service's stop hook. ``build_parser`` imports
    edge.enroll and edge.calibration for their options, and with them OpenCV and numpy: a broken
    or slow install of those must never keep the door from being locked."""
    parser, sub = _new_parser()
    _add_lock(sub)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser, sub = _new_parser()

    run = _with_config(sub.add_parser("run", help="run the door daemon until SIGTERM/SIGINT"))
    run.add_argument("--source", help="camera index, video file, RTSP URL or 'picamera2'")
    run.add_argument(
        "--relay",
        choices=("gpio", "mock"),
        default="gpio",
        help="'mock': gpiozero MockFactory, no hardware",
    )
    run.add_argument(
        "--events-out", help="also write every event as a JSON line here ('-': stdout)"
    )
    run.set_defaults(func=cmd_run)

    check = _with_config(
        sub.add_parser("check-config", help="validate a config file; exit 2 if bad")
    )
    check.add_argument(
        "--no-files",
        action="store_true",
        help="check keys and values only, not the files the config names (the installer's check"
        " before the new files are in place)",
    )
    check.set_defaults(func=cmd_check_config)

    _add_lock(sub)

    audit = _with_config(
        sub.add_parser("verify-audit", help="check the hash chain of the audit log")
    )
    audit.add_argument("--path", type=Path, help="audit log (default: from the config)")
    audit.set_defaults(func=cmd_verify_audit)

    unregister = _with_config(
        sub.add_parser("unregister", help="remove the device from Home Assistant")
    )
    unregister.set_defaults(func=cmd_unregister)

    _add_calibrate(sub, _with_config)

    try:
        from edge.enroll import add_enroll_parser
    except ImportError:  # face recognition not installed: enrol is unavailable, the rest works
        pass
    else:
        add_enroll_parser(sub)
        enroll = sub.choices["enroll"]
        if not any(a.dest == "config" for a in enroll._actions):
            _with_config(enroll)
        enroll.set_defaults(func=cmd_enroll)

    # Without cryptography fleet sync is unavailable; the rest works.
    if importlib.util.find_spec("cryptography") is not None:
        _add_fleet(sub, _with_config)

    # Listed for --help only: main() hands "bench ..." to `python -m bench` before parsing.
    sub.add_parser("bench", add_help=False, help="alias of `python -m bench` (measurements)")
    return parser


def _quiet_native_libraries() -> None:
    # Before OpenCV loads FFmpeg: its decoders report every damaged packet on stderr ("[h264 @
    # 0x…] error while decoding MB …"); a camera that fails is reported by LiveGate itself
    # (camera_lost). 8 = AV_LOG_FATAL. A user who wants the chatter sets the variables.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def main(argv: list[str] | None = None) -> int:
    # A daemon killed by the watchdog leaves a Python traceback of every thread in the journal.
    faulthandler.enable()
    _quiet_native_libraries()
    options = list(sys.argv[1:] if argv is None else argv)
    if options[:1] == ["bench"]:
        return cmd_bench(options[1:])
    parser = build_lock_parser() if options[:1] == ["lock"] else build_parser()
    args = parser.parse_args(options)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error in {getattr(args, 'config', '?')}:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return EXIT_REFUSED
    except LiveGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
