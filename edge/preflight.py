"""Checks of what a valid config names on disk, before anything runs: model files, the detector's
fetched files, secret files, the state folder, a ``--source`` file. ``check-config`` and ``run``
both refuse (exit 2) on them, naming the key and the path, so a missing file never surfaces as a
traceback at the door.

Messages name keys and paths only, never the content of a secret file.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from edge.config import Config
from edge.errors import ConfigError, ModelError

# systemd hands secrets to the service alone (LoadCredential=): outside the service these paths
# do not exist, so check-config run by hand cannot see them.
CREDENTIALS_PREFIX = "/run/credentials/"


def _file_problem(key: str, path: Path) -> str | None:
    if path.is_file():
        return None
    if path.exists():
        return f"{key}: {path} is not a file"
    return f"{key}: {path} does not exist"


def _is_service_credential(path: Path) -> bool:
    # Inside the service systemd sets CREDENTIALS_DIRECTORY; then the file must be there.
    return str(path).startswith(CREDENTIALS_PREFIX) and "CREDENTIALS_DIRECTORY" not in os.environ


def _state_dir_problem(path: Path) -> str | None:
    if path.exists():
        if not path.is_dir():
            return f"state_dir: {path} exists but is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"state_dir: {path} is not writable by this user"
        return None
    return _creatable_problem("state_dir", path)


def _creatable_problem(key: str, path: Path) -> str | None:
    """Why ``path``, which is not there, cannot be created with its missing folders."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{key}: {path} cannot be created: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{key}: {path} cannot be created: {parent} is not writable by this user"
    return None


def events_out_problem(path: Path | None) -> str | None:
    """An ``--events-out`` file that cannot be appended to: refused before the audit log's start
    entry, not a traceback after it."""
    if path is None:
        return None
    if path.is_dir():
        return f"--events-out: {path} is a folder; give a file ('-': stdout)"
    if path.exists():
        if os.access(path, os.W_OK):
            return None
        return f"--events-out: {path} is not writable by this user"
    return _creatable_problem("--events-out", path)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def reach_problem(path: Path) -> str | None:
    """Why this user cannot read ``path``, which is there; None when it can or when nothing is
    there. ``sudo livegate`` runs as the service user, to whom a home folder (0700 on Debian 12)
    is closed: ``Path.exists`` then raised PermissionError, a traceback instead of a reason."""
    try:
        path.stat()
    except PermissionError:
        return (
            f"{path}: user {_user()} cannot reach it (a folder on the way is closed to it);"
            " copy it to a folder that user can read, e.g. /tmp"
        )
    except OSError:
        return None  # not there: the caller says so in its own words
    if not os.access(path, os.R_OK):
        return f"{path}: user {_user()} cannot read it; chmod it, or copy it to /tmp"
    return None


def source_problem(source: str | None) -> str | None:
    """A ``--source`` that names a file which is not there or that this user cannot read
    (indexes, URLs, picamera2 pass)."""
    if source is None or source.isdigit() or source == "picamera2" or "://" in source:
        return None
    unreadable = reach_problem(Path(source))
    if unreadable is not None:
        return f"--source: {unreadable}"
    if Path(source).exists():
        return None
    return f"--source: {source} does not exist (a camera index, video file, URL or picamera2)"


def _detector_problem(config: Config) -> str | None:
    """detector.kind against the sidecar's ``box_detectors`` (the boxes the liveness model's
    crops were validated on; ``LivenessModel.refuse_other_detector`` at start says the same)."""
    try:
        sidecar = json.loads(config.sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a missing or broken sidecar is reported by its own check / at load
    allowed = sidecar.get("box_detectors") if isinstance(sidecar, dict) else None
    if isinstance(allowed, list) and allowed and config.detector.kind not in allowed:
        return (
            f"detector.kind = {config.detector.kind!r}: the liveness model was validated only on"
            f" boxes of {allowed} ({config.sidecar_path}: box_detectors); use {allowed[0]!r}"
        )
    return None


def _asset_problems(config: Config) -> list[str]:
    """The fetched files the detector kind (and a required blink) load, present and unaltered:
    otherwise check-config said OK and ``run`` refused only after loading the liveness model."""
    from edge.assets import DEFAULT_ASSETS_DIR, FACE_MESH, checked_asset
    from edge.detectors.registry import detector_kind

    needed = list(detector_kind(config.detector.kind).assets)
    if config.liveness.blink == "required":
        needed.append(FACE_MESH)
    key = "detector.assets_dir" if config.detector.assets_dir else "detector files"
    problems = []
    for asset in needed:
        try:
            checked_asset(asset, config.detector.assets_dir or DEFAULT_ASSETS_DIR)
        except ModelError as exc:
            problems.append(f"{key}: {exc}")
    return problems


def preflight(
    config: Config, source: str | None = None, events_out: Path | None = None
) -> tuple[list[str], list[str]]:
    """(problems, notes): problems refuse the start; notes say what could not be checked here."""
    problems: list[str] = []
    notes: list[str] = []

    def need_file(key: str, path: Path | None) -> None:
        if path is None:
            return
        if _is_service_credential(path):
            notes.append(f"{key}: {path} exists only inside the service; not checked here")
            return
        problem = _file_problem(key, path)
        if problem is not None:
            problems.append(problem)

    need_file("liveness.model", config.liveness.model)
    need_file(
        "liveness.sidecar" if config.liveness.sidecar else "liveness.model (its .json sidecar)",
        config.sidecar_path,
    )
    if config.mqtt.enabled:
        need_file("mqtt.password_file", config.mqtt.password_file)
        tls = config.mqtt.tls
        if tls.enabled:
            need_file("mqtt.tls.ca_certs", tls.ca_certs)
            need_file("mqtt.tls.certfile", tls.certfile)
            need_file("mqtt.tls.keyfile", tls.keyfile)
        ha = config.homeassistant
        if ha.remote_unlock:
            need_file("homeassistant.unlock_code_file", ha.unlock_code_file)
    if config.liveness.camera_calibration:
        from edge.calibration import load

        try:
            calibration = load(config.calibration_path)
        except ConfigError as exc:
            problems.append(f"liveness.camera_calibration: {exc}")
        else:
            if calibration is not None:
                notes.append(
                    f"camera calibration {config.calibration_path}: threshold"
                    f" {calibration.threshold:.4f} for model sha256"
                    f" {calibration.model_sha256[:12]}… ({calibration.n_faces} live faces,"
                    f" {calibration.created_utc})"
                )
    problems.extend(_asset_problems(config))
    detector = _detector_problem(config)
    if detector is not None:
        problems.append(detector)
    state = _state_dir_problem(config.state_dir)
    if state is not None:
        problems.append(state)
    for problem in (source_problem(source), events_out_problem(events_out)):
        if problem is not None:
            problems.append(problem)
    return problems, notes


def require_ready(
    config: Config, source: str | None = None, events_out: Path | None = None
) -> list[str]:
    """Raise ConfigError listing every problem; return the notes."""
    problems, notes = preflight(config, source, events_out)
    if problems:
        raise ConfigError("\n".join(problems))
    return notes
